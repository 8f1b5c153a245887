"""Apps for ``bench/http_overhead.sh``: one small POST endpoint, bare and behind two limiters.

Each ``make_*`` is a uvicorn factory (``uvicorn --factory bench.http_apps:make_bare``)
so a server builds only the scenario it runs. The route is the same in all three:
``POST /orders`` with a small pydantic body, echoed back.

* ``make_bare``: the route alone, the baseline;
* ``make_hardened``: ``RateLimitMiddleware`` with one ``Rule`` on the route, one
  GCRA policy keyed ``by_ip`` on ``RedisStore.from_url`` (``fail_mode="closed"``, so a
  Redis failure shows up as 503s in wrk's non-2xx count instead of passing silently);
* ``make_slowapi``: slowapi's documented FastAPI setup (``Limiter`` keyed by
  ``get_remote_address`` on the same Redis, ``@limiter.limit`` on the route,
  ``app.state.limiter`` and the 429 handler);
* ``make_hardened_memory`` (diagnostic, run only when named in the script's
  ``SCENARIOS``): the hardened app on `MemoryStore`, the middleware without its
  Redis round trip.

Limits are 1,000,000 per minute, so nothing is refused. Redis is ``BENCH_REDIS_URL``
(default db 14) and every key carries ``BENCH_PREFIX`` so the script can count and
delete exactly this run's keys.

``python bench/http_apps.py summary FILE`` turns the script's per-run lines
(``scenario round {wrk done() JSON}``) into the final JSON line.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from hardened.ratelimit import Rule
    from hardened.stores import Store

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PREFIX = os.environ.get("BENCH_PREFIX", "bench:http:")
LIMIT = 1_000_000
SCENARIOS = ("bare", "hardened", "slowapi")


class Order(BaseModel):
    sku: str
    quantity: int
    note: str | None = None


class Accepted(BaseModel):
    sku: str
    quantity: int
    accepted: bool = True


def frozen(factory: Callable[..., FastAPI]) -> Callable[..., FastAPI]:
    """Freeze the start-up heap, as shopfront does, in every scenario alike (fair GC cost)."""

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> FastAPI:
        app = factory(*args, **kwargs)
        gc.collect()
        gc.freeze()
        return app

    return build


def _accept(order: Order) -> Accepted:
    return Accepted(sku=order.sku, quantity=order.quantity)


@frozen
def make_bare() -> FastAPI:
    app = FastAPI()

    @app.post("/orders")
    async def create_order(order: Order) -> Accepted:
        return _accept(order)

    return app


@frozen
def make_hardened() -> FastAPI:
    from hardened.stores import RedisStore

    return hardened_app(RedisStore.from_url(URL, prefix=f"{PREFIX}hardened:"))


@frozen
def make_hardened_memory() -> FastAPI:
    """Diagnostic, not in the script's rounds: the hardened app on `MemoryStore` (no round trip)."""
    from hardened.stores import MemoryStore

    return hardened_app(MemoryStore())


def hardened_rule() -> Rule:
    """The hardened scenario's rule: one GCRA policy on ``POST /orders``, keyed by IP."""
    from hardened.ratelimit import Policy, Rule, by_ip

    policy = Policy("ip", limit=LIMIT, period=60.0, fail_mode="closed")
    return Rule("/orders$", ((policy, by_ip),), methods=frozenset({"POST"}))


def hardened_app(store: Store) -> FastAPI:
    """The hardened scenario on any store (``bench/ratelimit_asgi.py`` also runs MemoryStore)."""
    from hardened.ratelimit import RateLimiter, RateLimitMiddleware

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await store.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(RateLimitMiddleware, limiter=RateLimiter(store), rules=[hardened_rule()])

    @app.post("/orders")
    async def create_order(order: Order) -> Accepted:
        return _accept(order)

    return app


@frozen
def make_slowapi() -> FastAPI:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    limiter = Limiter(key_func=get_remote_address, storage_uri=URL, key_prefix=f"{PREFIX}slowapi")
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.post("/orders")
    @limiter.limit(f"{LIMIT}/minute")
    async def create_order(request: Request, order: Order) -> Accepted:
        return _accept(order)

    return app


def summary(path: Path) -> dict[str, Any]:
    """The final JSON line: per scenario the median round, and ratios to bare."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    meta: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        scenario, rnd, payload = line.split(" ", 2)
        if scenario == "meta":
            meta[rnd] = json.loads(payload)
            continue
        run = json.loads(payload)
        run["round"] = int(rnd)
        run["rps"] = run["requests"] / (run["duration_us"] / 1e6)
        runs.setdefault(scenario, []).append(run)

    out: dict[str, Any] = {
        "bench": "http_overhead",
        "rounds": max((len(r) for r in runs.values()), default=0),
        **meta,
    }
    by_round: dict[str, dict[int, float]] = {}
    for name, rs in runs.items():
        by_round[name] = {r["round"]: r["rps"] for r in rs}
        out[f"{name}_rps"] = round(statistics.median(r["rps"] for r in rs), 1) if rs else None
        for field in ("p50_us", "p99_us"):
            values = [r[field] for r in rs]
            out[f"{name}_{field}"] = round(statistics.median(values)) if values else None
        out[f"{name}_rps_rounds"] = [round(r["rps"], 1) for r in rs]
        out[f"{name}_non2xx"] = sum(r["non2xx"] for r in rs)
        out[f"{name}_socket_errors"] = sum(r["socket_errors"] for r in rs)
    bare = out["bare_rps"]
    for name in runs:
        if name == "bare":
            continue
        rps = out[f"{name}_rps"]
        out[f"{name}_ratio"] = round(rps / bare, 3) if rps is not None and bare else None
        paired = [
            by_round[name][i] / by_round["bare"][i]
            for i in by_round[name]
            if by_round["bare"].get(i)
        ]
        out[f"{name}_ratio_paired"] = round(statistics.median(paired), 3) if paired else None
    h, s = out["hardened_rps"], out["slowapi_rps"]
    out["hardened_vs_slowapi"] = round(h / s, 3) if h is not None and s else None
    out["rejected"] = sum(out[f"{n}_non2xx"] + out[f"{n}_socket_errors"] for n in runs)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "summary":
        sys.exit("usage: http_apps.py summary FILE")
    print(json.dumps(summary(Path(sys.argv[2]))))
