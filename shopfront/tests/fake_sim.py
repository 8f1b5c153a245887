"""A SIM provider fake over a real socket: counts activations; can be slow, fail, hang, refuse.

It deduplicates on ``Idempotency-Key`` like a real provider's activation API,
and counts both calls and distinct activations, so a test can tell "called
twice, activated once" from "activated twice".
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["FakeSimProvider", "running_fake_sim"]


@dataclass
class FakeSimProvider:
    """State and fault switches of the fake; mutate them between requests."""

    delay: float = 0.0
    fail_next: int = 0
    hang: bool = False
    refuse: bool = False
    calls: int = 0
    activations: dict[str, dict[str, str]] = field(default_factory=dict)
    by_iccid: dict[str, int] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event | None = None
    """When set, each call waits for it before answering (holds a request in flight)."""
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.arrived.set()
        body = await request.json()
        key = request.headers.get("idempotency-key", "")
        if self.hang:
            await asyncio.sleep(3600)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse:
            return web.json_response({"error": "unknown iccid"}, status=404)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": "internal"}, status=500)
        if not key:
            return web.json_response({"error": "idempotency-key required"}, status=400)
        if key not in self.activations:
            iccid = str(body["iccid"])
            self.activations[key] = {"id": "act_" + secrets.token_hex(6), "iccid": iccid}
            self.by_iccid[iccid] = self.by_iccid.get(iccid, 0) + 1
        return web.json_response(self.activations[key], status=201)


@contextlib.asynccontextmanager
async def running_fake_sim() -> AsyncIterator[FakeSimProvider]:
    """Serve the fake on 127.0.0.1 (a free port) for the duration of the block."""
    fake = FakeSimProvider()
    app = web.Application()
    app.router.add_post("/activations", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
