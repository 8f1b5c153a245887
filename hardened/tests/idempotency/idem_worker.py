"""A worker process for the idempotency storm: one guarded POST that is slow and counts its runs.

Run as a script (``--port``, ``--backend-url``, ``--namespace``, ``--runs-file``):
several processes share nothing but the backend, so "the handler ran once" holds
across processes, not just across tasks. Each real execution of the handler
appends one line to ``--runs-file`` (``O_APPEND``, one small write: atomic
between processes), so the test counts executions without trusting the
component under test.

Adding a backend (PostgreSQL) is one branch in `backend_for`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import uuid
from typing import TYPE_CHECKING

import uvicorn
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hardened.idempotency import (
    HttpIdempotencyConfig,
    IdempotencyMiddleware,
    IdempotentRoute,
    SqlBackend,
    StoreBackend,
    idempotency_table,
)
from hardened.stores import RedisStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

    from hardened.idempotency import IdempotencyBackend

SECRET = b"storm-secret-0123456789abcdef012"
HANDLER_SECONDS = 0.05


def backend_for(
    url: str, namespace: str
) -> tuple[IdempotencyBackend, Callable[[], Awaitable[None]]]:
    """The backend a URL names, and how to close it.

    ``namespace`` is the Redis key prefix, or the SQL table (created by the test).
    """
    if url.startswith(("redis://", "rediss://")):
        store = RedisStore.from_url(url, max_connections=200, timeout=5.0, prefix=namespace)
        return StoreBackend(store), store.aclose
    if url.startswith("postgresql"):
        # Two workers x 30 connections stay well under PostgreSQL's default 100.
        engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_timeout=30)
        table = idempotency_table(MetaData(), namespace)
        return SqlBackend(engine, table), engine.dispose
    msg = f"no idempotency backend for {url.split(':', 1)[0]!r}"
    raise ValueError(msg)


def build_app(
    backend: IdempotencyBackend, runs_file: str, close: Callable[[], Awaitable[None]]
) -> IdempotencyMiddleware:
    """``POST /charge`` (409 while in flight) and ``POST /charge-wait`` (waits for the result)."""

    async def charge(request: Request) -> Response:
        await request.body()
        await asyncio.sleep(HANDLER_SECONDS)
        fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return JSONResponse({"charge": uuid.uuid4().hex, "pid": os.getpid()}, status_code=201)

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await close()

    app = Starlette(
        lifespan=lifespan,
        routes=[
            Route("/charge", charge, methods=["POST"]),
            Route("/charge-wait", charge, methods=["POST"]),
            Route("/ready", ready),
        ],
    )
    rules = (IdempotentRoute("/charge-wait$", wait=20.0), IdempotentRoute("/charge$"))
    return IdempotencyMiddleware(
        app, backend=backend, secret=SECRET, rules=rules, config=HttpIdempotencyConfig()
    )


def main() -> None:
    """Serve one worker on 127.0.0.1:<port> until terminated."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--runs-file", required=True)
    args = parser.parse_args()
    backend, close = backend_for(args.backend_url, args.namespace)
    app = build_app(backend, args.runs_file, close)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
