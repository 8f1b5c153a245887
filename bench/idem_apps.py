"""Apps for ``bench/idempotency.py``: one small POST, bare and behind two idempotency guards.

Each ``make_*`` is a uvicorn factory (``uvicorn --factory bench.idem_apps:make_bare``)
so a server builds only the scenario it runs. The route is the same everywhere:
``POST /orders`` with a small pydantic body, answered with a 200 JSON body.

* ``make_bare``: the route alone, the baseline;
* ``make_hardened``: `IdempotencyMiddleware` with one `IdempotentRoute` requiring
  the key on ``POST /orders``, over ``StoreBackend(RedisStore.from_url(...))``
  (the default config: 30 s lease, 24 h retention; a Redis failure is a 503,
  which wrk counts as non-2xx);
* ``make_peer``: fastapi-idempotency's README setup, ``app.add_middleware(
  IdempotencyMiddleware)``, whose default store is its in-process ``MemoryStore``.

``GET /runs`` says how many times the handler really ran, so the bench can tell
"every request executed once" (unique keys) from "every response replayed"
(one key: one run). Redis is ``BENCH_REDIS_URL`` (default db 14) and every key
carries ``BENCH_PREFIX``, so the bench can count and delete exactly this run's keys.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from bench.http_apps import Accepted, Order, frozen
from fastapi import FastAPI

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PREFIX = os.environ.get("BENCH_PREFIX", "bench:idem:")
SECRET = b"bench-idempotency-secret-0123456789"


def _routes(app: FastAPI) -> FastAPI:
    runs = [0]

    @app.post("/orders")
    async def create_order(order: Order) -> Accepted:
        runs[0] += 1
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
    from hardened.idempotency import IdempotencyMiddleware, IdempotentRoute, StoreBackend
    from hardened.stores import RedisStore

    store = RedisStore.from_url(url, prefix=prefix)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await store.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.store = store  # for in-process use without lifespan (round-trip counting)
    rule = IdempotentRoute("/orders$", methods=frozenset({"POST"}), required=True)
    app.add_middleware(
        IdempotencyMiddleware, backend=StoreBackend(store), secret=SECRET, rules=[rule]
    )
    return _routes(app)


@frozen
def make_peer() -> FastAPI:
    from fastapi_idempotency import IdempotencyMiddleware

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware)  # README default: in-memory MemoryStore
    return _routes(app)
