"""Run an ASGI app under a real uvicorn server inside the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hardened.types import ASGIApp

__all__ = ["serve_app"]

_START_TIMEOUT = 30.0  # generous: a busy machine may take seconds to schedule the server


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp, *, http: str = "auto") -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 (a free port, yielded) with uvicorn's ``http`` protocol.

    Real sockets, real HTTP parsing, real keep-alive and disconnects: what the
    in-process test client cannot show. The server stops when the block ends.
    """
    import uvicorn  # noqa: PLC0415 - a test dependency, not the library's

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, loop="asyncio", lifespan="off", http=http, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while not (server.started or task.done()) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if not server.started:
            msg = "uvicorn did not start"
            raise RuntimeError(msg)
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()
