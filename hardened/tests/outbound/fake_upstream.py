"""An upstream with sessions over a real socket: it issues tokens, and refuses stale ones.

``POST /token`` issues ``token-<n>`` (counted in ``issued``; every request
that arrives is counted in ``token_requests`` and sets ``token_requested``),
after ``token_delay`` seconds, or only once ``token_gate`` is set, or never
while ``token_hang``. ``GET /data`` answers 200 when the bearer token is the
current one, else 401 (``reject_all`` refuses every token); `expire` ends
the current session as an upstream that restarted or timed it out would.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["FakeUpstream", "running_upstream"]


@dataclass
class FakeUpstream:
    """State and fault switches of the fake; mutate them between requests."""

    token_delay: float = 0.0
    token_hang: bool = False
    token_gate: asyncio.Event | None = None
    reject_all: bool = False
    expires_in: float | None = 720.0
    issued: int = 0
    token_requests: int = 0
    current: str | None = None
    data_requests: int = 0
    rejected: int = 0
    token_requested: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server stops, so hanging handlers end."""
    url: str = ""

    def expire(self) -> None:
        """End the current session: its token is refused from now on."""
        self.current = None

    async def issue_token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        self.token_requested.set()
        await request.read()
        if self.token_hang:
            await self.release.wait()
        if self.token_gate is not None:
            await self.token_gate.wait()
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        self.issued += 1
        self.current = f"token-{self.issued}"
        body: dict[str, object] = {"access_token": self.current, "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)

    async def data(self, request: web.Request) -> web.Response:
        self.data_requests += 1
        sent = request.headers.get("authorization", "")
        if self.reject_all or self.current is None or sent != f"Bearer {self.current}":
            self.rejected += 1
            return web.json_response({"error": "session expired"}, status=401)
        return web.json_response({"ok": True})


@contextlib.asynccontextmanager
async def running_upstream(**settings: object) -> AsyncIterator[FakeUpstream]:
    """Serve a `FakeUpstream` on a free 127.0.0.1 port until the block ends."""
    fake = FakeUpstream(**settings)  # type: ignore[arg-type]
    app = web.Application()
    app.router.add_post("/token", fake.issue_token)
    app.router.add_get("/data", fake.data)
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
        fake.release.set()
        if fake.token_gate is not None:
            fake.token_gate.set()
        await runner.cleanup()
