"""Apps for ``bench/idempotency.py``: one small POST, bare, guarded, and its store work alone.

Each ``make_*`` is a uvicorn factory (``uvicorn --factory bench.idem_apps:make_bare``)
so a server builds only the scenario it runs. The route is the same everywhere:
``POST /orders`` with a small pydantic body, answered with a 200 JSON body.

* ``make_bare``: the route alone, the baseline;
* ``make_hardened``: `IdempotencyMiddleware` with one `IdempotentRoute` requiring
  the key on ``POST /orders``, over ``StoreBackend(RedisStore.from_url(...))``
  (the default config: 30 s lease, 24 h retention; a Redis failure is a 503,
  which wrk counts as non-2xx);
* ``make_peer``: fastapi-idempotency's README setup, ``app.add_middleware(
  IdempotencyMiddleware)``, whose default store is its in-process ``MemoryStore``;
* ``make_floor``: the bare app whose handler makes the middleware's two backend
  calls of a first request itself (``claim``, then ``complete`` with a stored
  response of the same encoding) on the same ``StoreBackend(RedisStore)``: the
  store's cost with none of the middleware's own work;
* ``make_sql`` / ``make_sql_floor``: the same two on `SqlBackend` over PostgreSQL
  (``BENCH_SQL_URL``, table ``BENCH_SQL_TABLE``, created by the bench), on an
  engine built as shopfront builds its records engine (``IDEMPOTENCY_POOL_SIZE``
  2, ``BENCH_SQL_POOL`` to change it; no overflow; pre-ping). Its pool timeout is
  30 s, not shopfront's 2 s: 32 connections queue on 2 pooled ones, and on a busy
  host that queue would turn into 503s instead of showing up as latency.

The floors key each request with 32 random bytes in hex, like a scoped key (64
hex digits, spread over the key space as SHA-256 digests are: sequential keys
would all insert at one edge of PostgreSQL's primary-key index, cheaper than the
middleware's), with a fixed 32-byte fingerprint: the same key and argument sizes
as the middleware's, without parsing a header or hashing. A claim that is not
`Claimed`, or a complete that is refused, is a 500 (wrk's non-2xx count).

``GET /runs`` says how many times the handler really ran, so the bench can tell
"every request executed once" (unique keys) from "every response replayed"
(one key: one run). Redis is ``BENCH_REDIS_URL`` (default db 14) and every key
carries ``BENCH_PREFIX``, so the bench can count and delete exactly this run's keys.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from bench.http_apps import Accepted, Order, frozen
from fastapi import FastAPI, HTTPException

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from hardened.idempotency import IdempotencyBackend
    from hardened.stores import Store

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PREFIX = os.environ.get("BENCH_PREFIX", "bench:idem:")
SQL_URL = os.environ.get("BENCH_SQL_URL", "")
SQL_TABLE = os.environ.get("BENCH_SQL_TABLE", "idempotency_keys")
SQL_POOL = int(os.environ.get("BENCH_SQL_POOL", "2"))  # shopfront's IDEMPOTENCY_POOL_SIZE
SECRET = b"bench-idempotency-secret-0123456789"
FINGERPRINT = bytes(range(32))  # an HMAC-SHA256's size


def _routes(app: FastAPI, around: Callable[[Order], Awaitable[Accepted]] | None = None) -> FastAPI:
    runs = [0]

    @app.post("/orders")
    async def create_order(order: Order) -> Accepted:
        runs[0] += 1
        if around is not None:
            return await around(order)
        return Accepted(sku=order.sku, quantity=order.quantity)

    @app.get("/runs")
    async def handler_runs() -> dict[str, int]:
        return {"runs": runs[0]}

    return app


@frozen
def make_bare() -> FastAPI:
    return _routes(FastAPI())


@frozen
def make_hardened(url: str = URL, prefix: str = PREFIX) -> FastAPI:
    return _redis_app(url, prefix, guarded)


def guarded(app: FastAPI, backend: IdempotencyBackend) -> FastAPI:
    from hardened.idempotency import IdempotencyMiddleware, IdempotentRoute

    rule = IdempotentRoute("/orders$", methods=frozenset({"POST"}), required=True)
    app.add_middleware(IdempotencyMiddleware, backend=backend, secret=SECRET, rules=[rule])
    return _routes(app)


def floor(app: FastAPI, backend: IdempotencyBackend) -> FastAPI:
    """The route making a first request's claim and complete itself, as the middleware would."""
    from hardened.idempotency import Claimed, HttpIdempotencyConfig, encode_response

    config = HttpIdempotencyConfig()  # the middleware's default lease and retention
    lease, retention = config.lease, config.retention
    # What the middleware stores for this route's answer: status, content-type, body.
    body = Accepted(sku="SKU-12345", quantity=3).model_dump_json().encode()
    result = encode_response(200, [(b"content-type", b"application/json")], body)

    async def claimed_and_completed(order: Order) -> Accepted:
        key = os.urandom(32).hex()
        claim = await backend.claim(key, FINGERPRINT, lease=lease, retention=retention)
        if not isinstance(claim, Claimed):
            raise HTTPException(500, f"claim answered {claim!r}")
        accepted = Accepted(sku=order.sku, quantity=order.quantity)
        if not await backend.complete(key, claim.token, result, retention=retention):
            raise HTTPException(500, "complete refused")
        return accepted

    return _routes(app, claimed_and_completed)


def _redis_app(url: str, prefix: str, build: Callable[[FastAPI, Any], FastAPI]) -> FastAPI:
    from hardened.stores import RedisStore

    return store_app(RedisStore.from_url(url, prefix=prefix), build)


def store_app(store: Store, build: Callable[[FastAPI, Any], FastAPI]) -> FastAPI:
    """``guarded`` or ``floor`` on ``StoreBackend(store)`` (MemoryStore in ``idem_profile.py``)."""
    from hardened.idempotency import StoreBackend

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await store.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.store = store  # for in-process use without lifespan (round-trip counting)
    return build(app, StoreBackend(store))


def _sql_app(url: str, table: str, build: Callable[[FastAPI, Any], FastAPI]) -> FastAPI:
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import create_async_engine

    from hardened.idempotency import SqlBackend, idempotency_table

    engine = create_async_engine(
        url, pool_size=SQL_POOL, max_overflow=0, pool_timeout=30.0, pool_pre_ping=True
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    return build(app, SqlBackend(engine, idempotency_table(MetaData(), table)))


@frozen
def make_floor(url: str = URL, prefix: str = PREFIX) -> FastAPI:
    return _redis_app(url, prefix, floor)


@frozen
def make_sql(url: str = SQL_URL, table: str = SQL_TABLE) -> FastAPI:
    return _sql_app(url, table, guarded)


@frozen
def make_sql_floor(url: str = SQL_URL, table: str = SQL_TABLE) -> FastAPI:
    return _sql_app(url, table, floor)


@frozen
def make_peer() -> FastAPI:
    from fastapi_idempotency import IdempotencyMiddleware

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware)  # README default: in-memory MemoryStore
    return _routes(app)
