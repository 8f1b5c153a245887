"""In-process cost of `RateLimitMiddleware`: the ASGI apps of ``http_overhead.sh`` called directly.

Run: ``uv run python bench/ratelimit_asgi.py`` (Redis at ``BENCH_REDIS_URL``,
default ``redis://127.0.0.1:6379/14``). Prints one JSON line.

Why: ``http_overhead.sh`` measures through uvicorn and wrk, which share the
machine's cores with Redis and whatever else runs; here the apps get a fake
scope, ``receive`` and ``send`` on one uvloop loop, so the figures are the
Python each request costs, with far less noise. Scenarios:

* ``bare``: ``make_bare()``, the FastAPI POST route alone;
* ``redis`` / ``memory``: ``hardened_app()`` (the route behind the middleware,
  one GCRA policy keyed by IP) on ``RedisStore.from_url`` / `MemoryStore`;
* ``mw_redis`` / ``mw_memory`` against ``mw_floor``: the middleware around a
  trivial ASGI app that answers 200 at once, against that app alone; the
  difference is what the middleware itself adds per request.

Each scenario runs ``N`` requests sequentially (``*_seq_us``: latency, a Redis
round trip included) and as ``C`` concurrent request loops (``*_c32_us``: wall
time per request with the loop saturated, as one uvicorn worker under
``wrk -c32``). ``*_cpu_us`` is this process's CPU time (user + system, socket
calls included, Redis's own CPU not) per request in the same run: the figure
other work on the machine disturbs least. Scenarios alternate over ``ROUNDS``
rounds; the median round is reported. Ratios are bare's time / the scenario's
time, the share of bare's throughput kept (``http_overhead.sh``'s
``hardened_ratio`` is the wrk counterpart of ``redis_c32_ratio``);
``mw_*_added_us`` are the middleware's own microseconds per request.

``--profile SCENARIO`` runs that scenario once, concurrently, under cProfile and
prints the top functions (by own time) to stderr before the JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from hardened.ratelimit import RateLimiter, RateLimitMiddleware
from hardened.stores import MemoryStore, RedisStore

if TYPE_CHECKING:
    from hardened.types import Receive, Scope, Send
from http_apps import hardened_app, hardened_rule, make_bare  # bench/ is sys.path[0]

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
N = int(os.environ.get("N", "20000"))
C = 32
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WARMUP = 500
BODY = b'{"sku":"SKU-12345","quantity":3,"note":"leave at the door"}'
PREFIX = f"bench:asgi:{uuid.uuid4().hex[:12]}:"

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"wrk"),
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(BODY)),
]
REQUEST = {"type": "http.request", "body": BODY, "more_body": False}


def _scope() -> dict[str, Any]:
    # A fresh dict per request, as a server makes: Starlette writes routing results into it.
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 51234),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "headers": HEADERS,
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return REQUEST


async def _discard(message: dict[str, Any]) -> None:
    return None


async def _floor(scope: Scope, receive: Receive, send: Send) -> None:
    """The smallest app: 200 with an empty body, no routing."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _verify(name: str, app: App) -> None:
    """One request: a 200, and the RateLimit fields when the middleware is in front."""
    seen: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        seen.append(message)

    await app(_scope(), _receive, send)
    start = seen[0]
    names = {bytes(k).lower() for k, _ in start.get("headers", ())}
    if start["status"] != 200:
        raise SystemExit(f"{name}: status {start['status']}")
    if name not in ("bare", "mw_floor") and not {b"ratelimit", b"ratelimit-policy"} <= names:
        raise SystemExit(f"{name}: no RateLimit fields, the middleware did not run")


async def _sequential(app: App, n: int) -> tuple[float, float]:
    """Wall and CPU (user + system) microseconds per request, one request at a time."""
    scope, receive, send = _scope, _receive, _discard
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await app(scope(), receive, send)
    return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


async def _concurrent(app: App, n: int) -> tuple[float, float]:
    """Wall and CPU microseconds per request, ``C`` request loops at once."""
    scope, receive, send = _scope, _receive, _discard

    async def loop(count: int) -> None:
        for _ in range(count):
            await app(scope(), receive, send)

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(n // C) for _ in range(C)))
    done = n // C * C
    return (time.perf_counter() - t0) / done * 1e6, (time.process_time() - c0) / done * 1e6


def _load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def main(profile: str | None) -> dict[str, Any]:
    redis_store = RedisStore.from_url(URL, prefix=PREFIX)
    apps: dict[str, App] = {
        "bare": make_bare(),
        "redis": hardened_app(redis_store),
        "memory": hardened_app(MemoryStore()),
        "mw_floor": _floor,
        "mw_redis": RateLimitMiddleware(
            _floor, limiter=RateLimiter(redis_store, namespace="mw"), rules=[hardened_rule()]
        ),
        "mw_memory": RateLimitMiddleware(
            _floor, limiter=RateLimiter(MemoryStore()), rules=[hardened_rule()]
        ),
    }
    try:
        for name, app in apps.items():
            await _verify(name, app)
            await _sequential(app, WARMUP)
        if profile is not None:
            profiler = cProfile.Profile()
            profiler.enable()
            await _concurrent(apps[profile], N)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        runs: dict[str, list[float]] = {}
        names = list(apps)
        for rnd in range(ROUNDS):
            for i in range(len(names)):
                name = names[(i + rnd) % len(names)]  # rotate the order every round
                for mode, measure in (("seq", _sequential), ("c32", _concurrent)):
                    wall, cpu = await measure(apps[name], N)
                    runs.setdefault(f"{name}_{mode}_us", []).append(wall)
                    runs.setdefault(f"{name}_{mode}_cpu_us", []).append(cpu)
    finally:
        keys = [k async for k in redis_store.client.scan_iter(match=f"{PREFIX}*")]
        if keys:
            await redis_store.client.delete(*keys)
        await redis_store.aclose()

    out: dict[str, Any] = {"bench": "ratelimit_asgi", "n": N, "concurrency": C, "rounds": ROUNDS}
    med = {key: statistics.median(values) for key, values in runs.items()}
    out.update({key: round(value, 1) for key, value in med.items()})
    for mode in ("seq", "c32", "c32_cpu"):
        for name in ("redis", "memory"):
            ratio = med[f"bare_{mode}_us"] / med[f"{name}_{mode}_us"]
            out[f"{name}_{mode}_ratio"] = round(ratio, 3)
            added = med[f"mw_{name}_{mode}_us"] - med[f"mw_floor_{mode}_us"]
            out[f"mw_{name}_{mode}_added_us"] = round(added, 1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["bare", "redis", "memory", "mw_redis", "mw_memory"])
    args = parser.parse_args()
    load_at_start = _load1()
    result = uvloop.run(main(args.profile))
    # Other work on the machine skews wall times most: report the load around the run.
    print(json.dumps({**result, "load1_at_start": load_at_start, "load1_at_end": _load1()}))
