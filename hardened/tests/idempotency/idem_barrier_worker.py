"""``idem_worker``'s app with each storm's claims held at a barrier, then let go together.

A storm fired from a client reaches the claim spread over the time it takes to
send and read a hundred requests, so a claim that is not atomic (read, then
write) is caught only when two requests happen to fall in its window: flaky.
Here the first ``--barrier`` claims of each key wait in front of the backend
until all of them have arrived, then (their backend connections opened first)
all call it in the same event-loop turn: a read-then-write claim sends its
reads before any reply can let a write follow, so several requests get
through, every run, while an atomic claim still lets exactly one through.

The barrier only delays calls to the real backend; it answers nothing
itself. ``GET /barrier`` says how many keys filled their barrier (all their
claims held together) and how many were let go short of it.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import uvicorn
from idem_worker import backend_for, build_app
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from hardened.idempotency import Claim, IdempotencyBackend

# A barrier still short after this long is let go (and reported): a lost request
# must fail the test, not hang it.
HOLD_LIMIT = 60.0


@dataclass
class _Gate:
    arrived: int = 0
    open: asyncio.Event = field(default_factory=asyncio.Event)


class ClaimBarrier:
    """An `IdempotencyBackend` holding the first ``size`` claims of each key, then all at once."""

    def __init__(self, backend: IdempotencyBackend, size: int) -> None:
        self.backend = backend
        self.size = size
        self.filled = 0
        self.short = 0
        self._gates: dict[str, _Gate] = {}

    async def claim(self, key: str, fingerprint: bytes, *, lease: float, retention: float) -> Claim:
        gate = self._gates.setdefault(key, _Gate())
        if gate.arrived < self.size:  # later claims of the key (a waiter's polls) pass
            gate.arrived += 1
            if gate.arrived == self.size:
                await self._connect(self.size)
                self.filled += 1
                gate.open.set()
            try:
                await asyncio.wait_for(gate.open.wait(), HOLD_LIMIT)
            except TimeoutError:
                if not gate.open.is_set():
                    self.short += 1
                    gate.open.set()
        return await self.backend.claim(key, fingerprint, lease=lease, retention=retention)

    async def _connect(self, count: int) -> None:
        """Have ``count`` backend connections open, so no released claim waits to connect.

        ``count`` heartbeats at once on a key nobody holds: each takes its own
        pooled connection, and none writes anything (a heartbeat is fenced).
        """
        await asyncio.gather(
            *(self.backend.heartbeat("barrierwarmup", 0, lease=1.0) for _ in range(count))
        )

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        return await self.backend.heartbeat(key, token, lease=lease)

    async def checkpoint(self, key: str, token: int, phase: str, data: bytes) -> bool:
        return await self.backend.checkpoint(key, token, phase, data)

    async def complete(self, key: str, token: int, result: bytes, *, retention: float) -> bool:
        return await self.backend.complete(key, token, result, retention=retention)

    async def release(self, key: str, token: int) -> bool:
        return await self.backend.release(key, token)


def with_report(app: ASGIApp, barrier: ClaimBarrier) -> ASGIApp:
    """``app`` plus ``GET /barrier``: the keys whose claims were held together, or not."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/barrier":
            report = {"size": barrier.size, "filled": barrier.filled, "short": barrier.short}
            await JSONResponse(report)(scope, receive, send)
            return
        await app(scope, receive, send)

    return serve


def main() -> None:
    """Serve one held worker on 127.0.0.1:<port> until terminated."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--runs-file", required=True)
    parser.add_argument("--barrier", type=int, required=True, help="claims held per key")
    args = parser.parse_args()
    backend, close = backend_for(args.backend_url, args.namespace)
    barrier = ClaimBarrier(backend, args.barrier)
    app = with_report(build_app(barrier, args.runs_file, close), barrier)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
