"""A provider fake over a real socket, with faults a test switches on, counting what arrives.

``GET|POST /call`` answers per ``mode``: ``ok``; ``fail`` (503); ``flaky``
(503 for six of every ten requests, in a fixed pattern); ``status`` (the
``status`` set, with ``retry_after`` as ``Retry-After`` when set); ``hang``
(never answers); ``reset`` (drops the connection without an answer).
Every request's arrival (monotonic) and method are recorded, and the
highest number of requests in progress at once is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["FakeProvider", "running_provider"]


@dataclass
class FakeProvider:
    mode: str = "ok"
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_progress: int = 0
    max_in_progress: int = 0
    url: str = ""

    @property
    def calls(self) -> int:
        return len(self.arrivals)

    def reset_counts(self) -> None:
        self.arrivals.clear()
        self.headers.clear()
        self.max_in_progress = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = len(self.arrivals)
        self.arrivals.append((time.monotonic(), request.method))
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            await request.read()
            if self.delay:
                await asyncio.sleep(self.delay)
            mode = self.mode
            if mode == "hang":
                await asyncio.Event().wait()
            if mode == "reset":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            if mode == "fail" or (mode == "flaky" and n % 10 < 6):
                return web.json_response({"error": "down"}, status=503)
            if mode == "status":
                headers = {"retry-after": self.retry_after} if self.retry_after else {}
                return web.json_response(
                    {"status": self.status}, status=self.status, headers=headers
                )
            return web.json_response({"ok": True, "n": n})
        finally:
            self.in_progress -= 1


@contextlib.asynccontextmanager
async def running_provider(**settings: object) -> AsyncIterator[FakeProvider]:
    """Serve a `FakeProvider` on a free 127.0.0.1 port until the block ends."""
    fake = FakeProvider(**settings)  # type: ignore[arg-type]
    app = web.Application()
    app.router.add_route("*", "/call", fake.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
