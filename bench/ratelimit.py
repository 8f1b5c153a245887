"""Rate-limit decisions: `hardened.ratelimit` against `limits` and throttled-py, same Redis.

Run: ``uv run python bench/ratelimit.py`` (Redis at ``REDIS_URL``, default
``redis://127.0.0.1:6379/15``). Prints one JSON line.

Every variant makes sequential decisions on one asyncio loop against the same
Redis database, under its own fresh key prefix (deleted at exit):

* ``evalsha``: raw redis-py ``EVALSHA`` of ``return redis.call('INCR', KEYS[1])``,
  the floor (one round trip);
* ``one_policy`` / ``three_policy``: `RateLimiter.check` with 1 and 3 GCRA /
  sliding-window policies (one ``EVALSHA`` either way) on ``RedisStore.from_url``
  defaults (a blocking pool with a timeout, so a 200-wide burst waits instead
  of failing, whose uncontended path skips redis-py's per-call machinery; see
  ``hardened.stores.redis``); ``*_plain_pool``: the same on a client passed in
  (redis-py's default pool and full ``execute_command`` path, as the floor and
  the peers use), which isolates what that direct path saves;
* ``limits_moving_window`` / ``limits_sliding_window``: ``limits.aio`` with
  its redis-py async storage; ``limits_three``: ``limits`` checking the same
  three limits one after another (moving window, as slowapi does);
* ``throttled_gcra``: throttled-py's asyncio ``Throttled`` with GCRA on its
  asyncio Redis store;
* ``memory``: `RateLimiter` on `MemoryStore`, one policy, one core.

Variants alternate within each of 3 rounds; per variant the median round is
reported (decisions/s, p50 and p99 in microseconds). A peer that fails to run
reports ``null`` and says why under ``errors``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from hardened.ratelimit import Policy, RateLimiter
from hardened.stores import MemoryStore, RedisStore

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
ROUNDS = 3
CALLS = 3000
WARMUP = 200
MEMORY_CALLS = 100_000
FLOOR = "return redis.call('INCR', KEYS[1])"
RUN = uuid.uuid4().hex[:12]
PREFIX = f"bench:rl:{RUN}:"

Call = Callable[[int], Awaitable[object]]


async def measure(call: Call, calls: int = CALLS) -> dict[str, float]:
    for i in range(WARMUP):
        await call(i)
    lat: list[float] = []
    clock = time.perf_counter
    start = clock()
    for i in range(calls):
        t0 = clock()
        await call(i)
        lat.append(clock() - t0)
    total = clock() - start
    lat.sort()
    return {
        "per_s": calls / total,
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
    }


def _keys(i: int) -> str:
    return f"k{i % 500}"  # 500 keys: generous limits never refuse during the run


async def build(errors: dict[str, str]) -> tuple[dict[str, Call], list[Callable[[], Any]]]:
    calls: dict[str, Call] = {}
    closers: list[Callable[[], Any]] = []

    client = Redis.from_url(URL)  # redis-py's default pool, as the peers use
    closers.append(client.aclose)
    sha = await client.script_load(FLOOR)

    async def evalsha(i: int) -> object:
        return await client.evalsha(sha, 1, f"{PREFIX}floor:{_keys(i)}")

    calls["evalsha"] = evalsha

    store = RedisStore.from_url(URL, prefix=f"{PREFIX}hardened:")
    closers.append(store.aclose)
    limiter = RateLimiter(store)
    big = 1_000_000
    ip = Policy("ip", limit=big, period=60.0)
    user = Policy("user", limit=big, period=60.0, algorithm="sliding_window")
    tenant = Policy("tenant", limit=big, period=60.0)

    async def one(i: int) -> object:
        return await limiter.check([(ip, _keys(i))])

    async def three(i: int) -> object:
        k = _keys(i)
        return await limiter.check([(ip, k), (user, k), (tenant, k)])

    calls["one_policy"], calls["three_policy"] = one, three

    plain = RedisStore(Redis.from_url(URL), prefix=f"{PREFIX}plain:", owns_client=True)
    closers.append(plain.aclose)
    plain_limiter = RateLimiter(plain)

    async def one_plain(i: int) -> object:
        return await plain_limiter.check([(ip, _keys(i))])

    async def three_plain(i: int) -> object:
        k = _keys(i)
        return await plain_limiter.check([(ip, k), (user, k), (tenant, k)])

    calls["one_policy_plain_pool"], calls["three_policy_plain_pool"] = one_plain, three_plain

    await add_peers(calls, errors, big)
    return calls, closers


async def add_peers(calls: dict[str, Call], errors: dict[str, str], big: int) -> None:
    try:
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import (
            MovingWindowRateLimiter,
            SlidingWindowCounterRateLimiter,
        )

        storage = RedisStorage(
            f"async+{URL}", implementation="redispy", key_prefix=f"{PREFIX}limits"
        )
        moving, counter = MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage)
        items = [RateLimitItemPerMinute(big, namespace=n) for n in ("ip", "user", "tenant")]

        async def lim_moving(i: int) -> object:
            return await moving.hit(items[0], _keys(i))

        async def lim_counter(i: int) -> object:
            return await counter.hit(items[0], _keys(i))

        async def lim_three(i: int) -> object:
            k = _keys(i)
            return [await moving.hit(item, k) for item in items]

        await lim_moving(0)
        calls["limits_moving_window"] = lim_moving
        calls["limits_sliding_window"] = lim_counter
        calls["limits_three"] = lim_three
    except Exception as exc:
        errors["limits"] = f"{type(exc).__name__}: {exc}"

    try:
        from throttled.asyncio import RateLimiterType, Throttled, rate_limiter
        from throttled.asyncio import store as tstore

        tstore_obj = tstore.RedisStore(server=URL, options={"MAX_CONNECTIONS": 8})
        throttle = Throttled(
            using=RateLimiterType.GCRA.value,
            quota=rate_limiter.per_min(big),
            store=tstore_obj,
            key_prefix=f"{PREFIX}throttled".replace(":", "-"),
        )

        async def thr(i: int) -> object:
            return await throttle.limit(_keys(i))

        await thr(0)
        calls["throttled_gcra"] = thr
    except Exception as exc:
        errors["throttled"] = f"{type(exc).__name__}: {exc}"


async def memory_rate() -> float:
    limiter = RateLimiter(MemoryStore())
    policy = Policy("ip", limit=1_000_000, period=60.0)
    hits = [[(policy, _keys(i))] for i in range(500)]
    for i in range(WARMUP):
        await limiter.check(hits[i % 500])
    start = time.perf_counter()
    for i in range(MEMORY_CALLS):
        await limiter.check(hits[i % 500])
    return MEMORY_CALLS / (time.perf_counter() - start)


async def cleanup() -> None:
    client = Redis.from_url(URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"*{RUN}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


async def main() -> dict[str, Any]:
    errors: dict[str, str] = {}
    calls, closers = await build(errors)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
    memory: list[float] = []
    try:
        for _ in range(ROUNDS):
            for name, call in calls.items():
                try:
                    rounds[name].append(await measure(call))
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {exc}"
            memory.append(await memory_rate())
    finally:
        for close in closers:
            await close()
        await cleanup()

    def med(name: str, field: str) -> float | None:
        values = [r[field] for r in rounds.get(name, [])]
        return round(statistics.median(values), 1) if len(values) == ROUNDS else None

    out: dict[str, Any] = {"bench": "ratelimit", "rounds": ROUNDS, "calls": CALLS}
    for name in calls:
        out[f"{name}_per_s"] = med(name, "per_s")
        out[f"{name}_p50_us"] = med(name, "p50_us")
        out[f"{name}_p99_us"] = med(name, "p99_us")
    for key in ("limits_moving_window", "limits_sliding_window", "limits_three", "throttled_gcra"):
        out.setdefault(f"{key}_per_s", None)
    out["hardened_per_s"] = out["one_policy_per_s"]
    out["hardened_three_per_s"] = out["three_policy_per_s"]
    floor = out["evalsha_p50_us"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out["one_policy_ratio"] = ratio(out["one_policy_p50_us"], floor)
    out["three_policy_ratio"] = ratio(out["three_policy_p50_us"], floor)
    out["three_vs_limits"] = ratio(out["hardened_three_per_s"], out["limits_three_per_s"])
    out["memory_per_s"] = round(statistics.median(memory))
    if errors:
        out["errors"] = errors
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
