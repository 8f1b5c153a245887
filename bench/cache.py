"""Warm hits and stampedes: `hardened.cache` against a raw ``GET`` and cashews, same Redis.

Run: ``uv run python bench/cache.py`` (about 1 min; ``--quick``: one short round, a
smoke test; ``--profile``: also prints a cProfile of hardened hits to stderr). Redis at
``BENCH_REDIS_URL``, default ``redis://127.0.0.1:6379/9``; every key is under
``bench:cache:<run>:`` (cashews' lock keys under ``lock:bench:cache:<run>:``) and
deleted at exit. Prints one JSON line; exits 1 when the run is not valid (``valid``
false, reasons in ``problems``). Goals (``goals``) are reported, never a reason to fail.

The value is a realistic catalog list (10 plans, about 1 KB of JSON). Latency, in
microseconds per call, on one asyncio loop:

* ``raw``: redis-py asyncio ``GET`` on a plain pool plus ``pydantic_core.from_json``,
  the floor; ``raw_typed``: the same with ``TypeAdapter(list[Plan]).validate_json``;
* ``hit``: a warm `Namespace.get_or_load` (``RedisStore.from_url(url, timeout=0.1)``,
  tenant-scoped namespace, the tenant passed in, one tag), untyped, so its decoding
  is the floor's; ``hit_typed``: the same namespace kind with ``type_=list[Plan]``;
* ``store_get``: ``RedisStore.get`` (the cache's own store and client path) plus
  ``from_json``: a ``GET`` without redis-py's per-command machinery, the tightest
  floor this client stack has;
* ``script_raw`` / ``script_store``: the cache's own ``cache_read`` script on the
  same entry, sent by the plain redis-py client / by the cache's `RedisStore`, plus
  decoding: what one ``EVALSHA`` of that script costs before any cache Python runs;
* ``cashews`` / ``cashews_lock``: cashews 7 ``@cache(ttl=...)`` and
  ``@cache(ttl=..., lock=True)`` (its defaults: pickle, in-process thunder protection);
* ``*_conc64``: 64 coroutines gathered, each making sequential calls; per-call latency.

Each round warms every scenario, then runs 8 interleaved blocks of each (250 calls, or
64 x 10 for ``*_conc64``; order rotated per block and round), so the noise bursts of
this 2-core machine spread over all scenarios; a scenario reports its median round
(p50, p99, calls/s) and ratios divide those medians (``*_paired``: median of per-round
ratios). Hardened's lookup counters must show only hits during the latency phases (a
timed-out read would fail open to the loader and look fast). Read ``hit_ratio`` with
``hit_vs_store_get``: the plain-pool floor pays redis-py's per-command machinery, which
`RedisStore` skips, so a hit can beat it. cashews' ``conc64`` shares one in-flight
``GET`` among concurrent callers of one key (its thunder protection), so it does
fewer round trips than calls.

Stampedes (a loader that sleeps 100 ms and counts its calls with ``INCR``):
``loads_one_proc``: 1,000 concurrent cold calls in this process; ``loads_four_procs``:
4 worker processes (this file with ``--worker``) x 250 concurrent cold calls on one
key, each worker set up and connected first, all released by one ``RPUSH`` they
``BLPOP`` on; the same for cashews (default and ``lock=True``). Each storm reports the
loads (the worst round), errors and wrong values (should be 0) and the spread of the
workers' release times (must be far below the 100 ms load for the storm to overlap);
``events_four_procs`` sums hardened's lookup and event counters over the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pydantic_core
from cashews import Cache as CashewsCache
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hardened.cache import Cache
from hardened.observability.metrics import fast_counter
from hardened.stores import RedisStore, Script, key_part, tagged

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from hardened.stores import MemoryState

SELF = str(Path(__file__).resolve())
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
TENANT = uuid.UUID("7b0c5c3e-5a1d-4c6e-9f00-00000000b00c")
NAMESPACE = "bench.plans"
TAG = "catalog"
HIT_KEY = "plans:retail"
LOAD_SECONDS = 0.1
TTL = 300
STORMS = ("hardened", "cashews", "cashews_lock")


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes: each round runs ``blocks`` blocks of every latency scenario, interleaved."""

    rounds: int
    blocks: int
    block_calls: int  # sequential calls per block
    conc_block_calls: int  # sequential calls per concurrent caller per block
    warmup: int
    storm_rounds: int
    conc_callers: int = 64
    one_proc_callers: int = 1000
    procs: int = 4
    per_proc: int = 250


FULL = Settings(
    rounds=5, blocks=8, block_calls=250, conc_block_calls=10, warmup=200, storm_rounds=2
)
QUICK = Settings(rounds=1, blocks=2, block_calls=100, conc_block_calls=3, warmup=30, storm_rounds=1)


class Plan(BaseModel):
    id: str
    name: str
    price: float
    data_gb: int | None
    description: str


PLANS: list[dict[str, Any]] = [
    {
        "id": f"plan-{i:02d}",
        "name": f"5G {('Start', 'Plus', 'Max', 'Family', 'Pro')[i % 5]}",
        "price": round(9.99 + 5 * i, 2),
        "data_gb": None if i % 4 == 3 else 10 * (i + 1),
        "description": "Calls, texts and EU roaming included.",
    }
    for i in range(10)
]
PAYLOAD = pydantic_core.to_json(PLANS)
PLANS_TYPED = TypeAdapter(list[Plan])
EXPECTED_TYPED = PLANS_TYPED.validate_python(PLANS)
# The cache's own counters (asking for a metric again returns the registered one).
_LOOKUPS = fast_counter("cache_lookups_total", "", ["namespace", "result"])
_EVENTS = fast_counter("cache_events_total", "", ["namespace", "event"])
_RESULTS = ("hit", "stale", "miss", "bypass")
_EVENT_NAMES = ("early_refresh", "lease_wait", "load_error", "not_stored", "store_error")


def _no_twin(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    raise NotImplementedError("the bench runs cache_read on Redis only")


# The cache's own read script (package data of hardened.cache), for the script_* floors.
READ = Script.load("cache_read", _no_twin, package="hardened.cache")


def _counts(namespace: str) -> dict[str, int]:
    out = {r: _LOOKUPS.value(namespace, r) for r in _RESULTS}
    out.update({e: _EVENTS.value(namespace, e) for e in _EVENT_NAMES})
    return out


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


class Rig:
    """The clients and cached functions of one process, every key under the run's prefix."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.prefix = prefix = f"bench:cache:{run}:"
        self.raw = raw = Redis.from_url(URL)  # redis-py's default (plain) pool
        self.store = RedisStore.from_url(URL, timeout=0.1, prefix=prefix)
        self.cache = Cache(self.store)
        self.ns = self.cache.namespace(NAMESPACE, tier="catalog")
        self.ns_typed = self.cache.namespace(f"{NAMESPACE}.typed", tier="catalog", type_=list[Plan])
        self.cashews = cashews = CashewsCache()
        cashews.setup(URL)
        self.hit_loads = 0

        @cashews(ttl=TTL, key=prefix + "cashews:{name}")
        async def cashews_get(name: str) -> list[dict[str, Any]]:
            await raw.incr(f"{prefix}loads:{name}")
            await asyncio.sleep(LOAD_SECONDS)
            return PLANS

        @cashews(ttl=TTL, key=prefix + "cashews_lock:{name}", lock=True)
        async def cashews_lock_get(name: str) -> list[dict[str, Any]]:
            await raw.incr(f"{prefix}loads:{name}")
            await asyncio.sleep(LOAD_SECONDS)
            return PLANS

        self.cashews_get = cashews_get
        self.cashews_lock_get = cashews_lock_get

    async def connect(self) -> None:
        await self.raw.ping()
        await self.store.ping()
        await self.cashews.init()
        await self.cashews.ping()

    async def aclose(self) -> None:
        await self.cache.aclose()
        await self.store.aclose()
        await self.cashews.close()
        await self.raw.aclose()

    def loader(self, name: str) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
        counter = f"{self.prefix}loads:{name}"

        async def load() -> list[dict[str, Any]]:
            await self.raw.incr(counter)
            await asyncio.sleep(LOAD_SECONDS)
            return PLANS

        return load

    async def loads(self, name: str) -> int:
        return int(await self.raw.get(f"{self.prefix}loads:{name}") or 0)

    async def storm(self, kind: str, name: str, callers: int) -> dict[str, Any]:
        """``callers`` concurrent cold calls of one key; errors and wrong values counted."""
        load = self.loader(name)

        def call() -> Awaitable[Any]:
            if kind == "hardened":
                return self.ns.get_or_load(name, load, tags=(TAG,), tenant=TENANT)
            if kind == "cashews":
                return self.cashews_get(name)
            return self.cashews_lock_get(name)

        before = _counts(NAMESPACE)
        start = time.perf_counter()
        results = await asyncio.gather(*(call() for _ in range(callers)), return_exceptions=True)
        wall = time.perf_counter() - start
        failures = [r for r in results if isinstance(r, BaseException)]
        wrong = sum(1 for r in results if not isinstance(r, BaseException) and r != PLANS)
        out: dict[str, Any] = {
            "errors": len(failures),
            "wrong": wrong,
            "wall_ms": round(wall * 1000, 1),
        }
        if failures:
            out["error_types"] = sorted({type(e).__name__ for e in failures})
        if kind == "hardened":
            out["events"] = _delta(before, _counts(NAMESPACE))
        return out

    # -- the latency scenarios ------------------------------------------------------

    async def prepare(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """Warm every cached value and return the scenarios' calls (each checked once)."""
        prefix, raw, store = self.prefix, self.raw, self.store
        raw_key = f"{prefix}raw"
        await raw.set(raw_key, PAYLOAD)
        await store.set("store", PAYLOAD)  # under the store's prefix

        async def hit_load() -> list[dict[str, Any]]:
            self.hit_loads += 1
            return PLANS

        async def hit_load_typed() -> list[Plan]:
            self.hit_loads += 1
            return EXPECTED_TYPED

        ns, ns_typed = self.ns, self.ns_typed
        tags = (TAG,)
        await ns.get_or_load(HIT_KEY, hit_load, tags=tags, tenant=TENANT)
        await ns_typed.get_or_load(HIT_KEY, hit_load_typed, tags=tags, tenant=TENANT)
        await self.cashews_get(HIT_KEY)
        await self.cashews_lock_get(HIT_KEY)
        self.hit_loads = 0

        # The entry's keys as hardened.cache's _Scope lays them out; should the layout
        # change, decode() below sees a miss and the run fails rather than mislead.
        base = tagged("cache", "t", str(TENANT))
        part, ns_part = key_part(HIT_KEY), key_part(NAMESPACE)
        script_keys = (
            f"{base}:e:{ns_part}:{part}",
            f"{base}:l:{ns_part}:{part}",
            f"{base}:gen",
            f"{base}:tag:{key_part(TAG)}",
        )
        script_args = (b"1", b"bench", b"10000")
        raw_keys = [prefix + k for k in script_keys]
        await raw.script_load(READ.source)
        from_json = pydantic_core.from_json
        validate = PLANS_TYPED.validate_json

        async def raw_get() -> Any:
            return from_json(cast("bytes", await raw.get(raw_key)))

        async def raw_typed() -> Any:
            return validate(cast("bytes", await raw.get(raw_key)))

        async def store_get() -> Any:
            return from_json(cast("bytes", await store.get("store")))

        async def hit() -> Any:
            return await ns.get_or_load(HIT_KEY, hit_load, tags=tags, tenant=TENANT)

        async def hit_typed() -> Any:
            return await ns_typed.get_or_load(HIT_KEY, hit_load_typed, tags=tags, tenant=TENANT)

        def decode(reply: Any) -> Any:
            if reply[0] != 1 or len(reply) != 4:
                raise RuntimeError(f"cache_read did not find the warm entry: {reply!r}")
            return from_json(reply[1][1:])  # the codec's first byte says JSON

        async def script_raw() -> Any:
            return decode(await raw.evalsha(READ.sha, len(raw_keys), *raw_keys, *script_args))

        async def script_store() -> Any:
            return decode(await store.run(READ, script_keys, script_args))

        async def cashews() -> Any:
            return await self.cashews_get(HIT_KEY)

        async def cashews_lock() -> Any:
            return await self.cashews_lock_get(HIT_KEY)

        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "raw": raw_get,
            "hit": hit,
            "raw_typed": raw_typed,
            "store_get": store_get,
            "hit_typed": hit_typed,
            "script_raw": script_raw,
            "script_store": script_store,
            "cashews": cashews,
            "cashews_lock": cashews_lock,
        }
        for name, call in calls.items():
            value = await call()
            expected = EXPECTED_TYPED if name.endswith("_typed") else PLANS
            if value != expected:
                raise RuntimeError(f"{name} returned a different value")
        return calls


def _stats(lat: list[float], total: float) -> dict[str, float]:
    lat.sort()
    return {
        "per_s": len(lat) / total,
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
    }


async def sequential(call: Callable[[], Awaitable[Any]], n: int, lat: list[float]) -> float:
    """``n`` sequential calls, their latencies appended to ``lat``; the seconds taken."""
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        t0 = clock()
        await call()
        lat.append(clock() - t0)
    return clock() - start


async def concurrent(
    call: Callable[[], Awaitable[Any]], callers: int, n: int, lat: list[float]
) -> float:
    """``callers`` coroutines gathered, each making ``n`` sequential calls; as `sequential`."""
    clock = time.perf_counter

    async def caller() -> None:
        for _ in range(n):
            t0 = clock()
            await call()
            lat.append(clock() - t0)

    start = clock()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return clock() - start


async def one_round(
    scenarios: list[tuple[str, Callable[[], Awaitable[Any]], bool]], s: Settings, rnd: int
) -> dict[str, dict[str, float]]:
    """Every scenario warmed, then measured in ``blocks`` interleaved blocks (order rotated).

    Interleaving small blocks spreads the machine's noise bursts over every
    scenario instead of letting one scenario's block absorb them.
    """
    lat: dict[str, list[float]] = {name: [] for name, _, _ in scenarios}
    took = dict.fromkeys(lat, 0.0)
    for _, call, conc in scenarios:
        if conc:
            await concurrent(call, s.conc_callers, max(1, s.warmup // s.conc_callers), [])
        else:
            await sequential(call, s.warmup, [])
    gc.collect()
    for block in range(s.blocks):
        for i in range(len(scenarios)):
            name, call, conc = scenarios[(i + rnd + block) % len(scenarios)]
            if conc:
                took[name] += await concurrent(call, s.conc_callers, s.conc_block_calls, lat[name])
            else:
                took[name] += await sequential(call, s.block_calls, lat[name])
    return {name: _stats(lat[name], took[name]) for name in lat}


async def latency(rig: Rig, s: Settings, problems: list[str]) -> dict[str, Any]:
    calls = await rig.prepare()
    scenarios: list[tuple[str, Callable[[], Awaitable[Any]], bool]] = [
        (name, call, False) for name, call in calls.items()
    ]
    scenarios += [(f"{name}_conc64", calls[name], True) for name in ("raw", "hit", "cashews")]
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in scenarios}
    before = {ns: _counts(ns) for ns in (rig.ns.name, rig.ns_typed.name)}
    for rnd in range(s.rounds):
        try:
            for name, stats in (await one_round(scenarios, s, rnd)).items():
                rounds[name].append(stats)
        except Exception as exc:
            problems.append(f"latency round {rnd}: {type(exc).__name__}: {exc}")
    for ns, counts in before.items():
        seen = _delta(counts, _counts(ns))
        others = {k: v for k, v in seen.items() if k != "hit"}
        if others:
            problems.append(f"hardened {ns} during the hit phases: {others} (not only hits)")
    if rig.hit_loads:
        problems.append(f"the hit loader ran {rig.hit_loads} times during the hit phases")

    out: dict[str, Any] = {}
    for name, rs in rounds.items():
        for field in ("p50_us", "p99_us", "per_s"):
            values = [r[field] for r in rs]
            out[f"{name}_{field}"] = round(statistics.median(values), 1) if values else None

    def ratio(a: str, b: str, field: str = "p50_us") -> tuple[float | None, float | None]:
        x, y = out[f"{a}_{field}"], out[f"{b}_{field}"]
        med = round(x / y, 3) if x is not None and y else None
        pairs = [p[field] / q[field] for p, q in zip(rounds[a], rounds[b], strict=False)]
        paired = round(statistics.median(pairs), 3) if len(pairs) == s.rounds else None
        return med, paired

    result: dict[str, Any] = {
        "payload_bytes": len(PAYLOAD),
        "raw_get_p50_us": out["raw_p50_us"],
        "raw_get_p99_us": out["raw_p99_us"],
        "hit_p50_us": out["hit_p50_us"],
        "hit_p99_us": out["hit_p99_us"],
    }
    for key, a, b, field in (
        ("hit_ratio", "hit", "raw", "p50_us"),
        ("hit_typed_ratio", "hit_typed", "raw_typed", "p50_us"),
        ("script_raw_ratio", "script_raw", "raw", "p50_us"),
        ("script_store_ratio", "script_store", "raw", "p50_us"),
        ("hit_vs_script_store", "hit", "script_store", "p50_us"),
        ("hit_vs_store_get", "hit", "store_get", "p50_us"),
        ("cashews_hit_ratio", "cashews", "raw", "p50_us"),
        ("cashews_lock_hit_ratio", "cashews_lock", "raw", "p50_us"),
        ("hit_p99_ratio_conc64", "hit_conc64", "raw_conc64", "p99_us"),
        ("hit_p50_ratio_conc64", "hit_conc64", "raw_conc64", "p50_us"),
        ("cashews_p99_ratio_conc64", "cashews_conc64", "raw_conc64", "p99_us"),
    ):
        result[key], result[f"{key}_paired"] = ratio(a, b, field)
    result["latency"] = out
    return result


# -- stampedes ----------------------------------------------------------------------


async def _pop(client: Redis, key: str, seconds: float) -> bytes | None:
    """``BLPOP`` for up to ``seconds``, in 1 s steps (redis-py 8 reads time out after 5 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = await client.blpop([key], timeout=1)
        if got is not None:
            return cast("bytes", got[1])
    return None


def _storm_name(kind: str, rnd: int, where: str) -> str:
    return f"storm:{where}:{kind}:{rnd}"


async def worker(plan: dict[str, Any]) -> None:
    """One storm process: connect, then per storm say ready, wait for go, storm, report."""
    rig = Rig(plan["run"])
    coord = Redis.from_url(URL)
    prefix = rig.prefix
    try:
        await rig.connect()
        await coord.ping()
        for name in plan["storms"]:
            kind = name.split(":")[2]
            await coord.rpush(f"{prefix}ready:{name}", plan["index"])
            if await _pop(coord, f"{prefix}go:{name}", 60) is None:
                raise RuntimeError(f"worker {plan['index']}: no go for {name}")
            released = time.time()
            report = await rig.storm(kind, name, plan["callers"])
            report["released"] = released
            await coord.rpush(f"{prefix}done:{name}", json.dumps(report))
    finally:
        await coord.aclose()
        await rig.aclose()


def _label(kind: str) -> str:
    return "" if kind == "hardened" else f"{kind}_"


async def one_proc_storms(rig: Rig, s: Settings, problems: list[str]) -> dict[str, Any]:
    """``one_proc_callers`` concurrent cold calls in this process, per library and round."""
    out: dict[str, Any] = {}
    for kind in STORMS:
        loads, errors, walls = [], 0, []
        for rnd in range(s.storm_rounds):
            name = _storm_name(kind, rnd, "one")
            report = await rig.storm(kind, name, s.one_proc_callers)
            loads.append(await rig.loads(name))
            errors += report["errors"] + report["wrong"]
            walls.append(report["wall_ms"])
            if report.get("error_types"):
                problems.append(f"{name}: {report['error_types']}")
        label = _label(kind)
        out[f"{label}loads_one_proc"] = max(loads)
        out[f"{label}loads_one_proc_rounds"] = loads
        out[f"{label}errors_one_proc"] = errors
        out[f"{label}wall_ms_one_proc"] = walls
    return out


class _Stalled(RuntimeError):
    """A storm worker did not say ready or report in time."""


async def _storm_round(rig: Rig, s: Settings, name: str) -> list[dict[str, Any]]:
    """Release the workers waiting for storm ``name`` together; their reports."""
    prefix = rig.prefix
    for _ in range(s.procs):
        if await _pop(rig.raw, f"{prefix}ready:{name}", 90) is None:
            raise _Stalled(f"{name}: a worker never became ready")
    await rig.raw.rpush(f"{prefix}go:{name}", *(["go"] * s.procs))
    reports = []
    for _ in range(s.procs):
        got = await _pop(rig.raw, f"{prefix}done:{name}", 60)
        if got is None:
            raise _Stalled(f"{name}: a worker never reported")
        reports.append(json.loads(got))
    return reports


async def four_proc_storms(rig: Rig, s: Settings, problems: list[str]) -> dict[str, Any]:
    """``procs`` workers x ``per_proc`` concurrent cold calls of one key, per library and round.

    The workers start once and run every storm; each storm's loads are counted
    in Redis across them.
    """
    names = [_storm_name(k, r, "four") for r in range(s.storm_rounds) for k in STORMS]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            SELF,
            "--worker",
            json.dumps({"run": rig.run, "index": i, "callers": s.per_proc, "storms": names}),
        )
        for i in range(s.procs)
    ]
    per_kind: dict[str, dict[str, Any]] = {
        k: {"loads": [], "errors": 0, "spread_ms": [], "wall_ms": [], "events": {}} for k in STORMS
    }
    try:
        for name in names:
            reports = await _storm_round(rig, s, name)
            agg = per_kind[name.split(":")[2]]
            agg["loads"].append(await rig.loads(name))
            agg["errors"] += sum(r["errors"] + r["wrong"] for r in reports)
            released = [r["released"] for r in reports]
            agg["spread_ms"].append(round((max(released) - min(released)) * 1000, 1))
            agg["wall_ms"].append(max(r["wall_ms"] for r in reports))
            for r in reports:
                for event, n in r.get("events", {}).items():
                    agg["events"][event] = agg["events"].get(event, 0) + n
                if r.get("error_types"):
                    problems.append(f"{name}: {r['error_types']}")
    except (_Stalled, RedisError) as exc:
        problems.append(f"four-process storms: {type(exc).__name__}: {exc}")
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
    finally:
        await _reap(procs, problems)
    return _summarise(per_kind, s, problems)


async def _reap(procs: list[asyncio.subprocess.Process], problems: list[str]) -> None:
    for i, proc in enumerate(procs):
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        if code:
            problems.append(f"storm worker {i} exited with {code}")


def _summarise(
    per_kind: dict[str, dict[str, Any]], s: Settings, problems: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, agg in per_kind.items():
        label = _label(kind)
        out[f"{label}loads_four_procs"] = max(agg["loads"]) if agg["loads"] else None
        out[f"{label}loads_four_procs_rounds"] = agg["loads"]
        out[f"{label}errors_four_procs"] = agg["errors"]
        out[f"{label}release_spread_ms_four_procs"] = agg["spread_ms"]
        out[f"{label}wall_ms_four_procs"] = agg["wall_ms"]
        if kind == "hardened":
            out["events_four_procs"] = agg["events"]
        if len(agg["loads"]) != s.storm_rounds:
            problems.append(f"{kind}: {len(agg['loads'])} of {s.storm_rounds} four-process storms")
        if any(spread > LOAD_SECONDS * 1000 / 2 for spread in agg["spread_ms"]):
            problems.append(f"{kind}: workers released {agg['spread_ms']} ms apart (not one storm)")
    return out


# -- profile, cleanup, main ---------------------------------------------------------


async def profile(rig: Rig, calls: int) -> str:
    """A cProfile of ``calls`` sequential hardened hits: the top functions by own time."""
    hit = (await rig.prepare())["hit"]
    for _ in range(200):
        await hit()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        await hit()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    return text.getvalue()


async def cleanup(run: str) -> None:
    client = Redis.from_url(URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"*bench:cache:{run}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


def _load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def main(s: Settings, *, quick: bool, with_profile: bool) -> dict[str, Any]:
    started = time.monotonic()
    run = uuid.uuid4().hex[:12]
    out: dict[str, Any] = {
        "bench": "cache",
        "quick": quick,
        "rounds": s.rounds,
        "calls_per_round": s.blocks * s.block_calls,
        "conc_calls_per_round": f"{s.conc_callers}x{s.blocks * s.conc_block_calls}",
        "load1_at_start": _load1(),
    }
    problems: list[str] = []
    rig = Rig(run)
    try:
        await rig.connect()
        out.update(await one_proc_storms(rig, s, problems))
        out.update(await four_proc_storms(rig, s, problems))
        out.update(await latency(rig, s, problems))
        if with_profile:
            print(await profile(rig, 5000), file=sys.stderr)
    finally:
        await rig.aclose()
        await cleanup(run)
    problems.extend(
        f"{label}{key}: {out[label + key]}"
        for key in ("errors_one_proc", "errors_four_procs")
        for label in map(_label, STORMS)
        if out.get(label + key)
    )

    def within(key: str, limit: float) -> bool:
        value = out.get(key)
        return value is not None and value <= limit

    out["goals"] = {
        "hit_ratio<=1.2": within("hit_ratio", 1.2),
        "hit_p99_ratio_conc64<=1.3": within("hit_p99_ratio_conc64", 1.3),
        "loads_four_procs==1": out.get("loads_four_procs") == 1,
    }
    out["load1_at_end"] = _load1()
    out["seconds"] = round(time.monotonic() - started, 1)
    out["problems"] = problems
    out["valid"] = not problems
    return out


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    parser.add_argument("--profile", action="store_true", help="cProfile hardened hits to stderr")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(json.loads(args.worker)))
        return 0
    out = asyncio.run(
        main(QUICK if args.quick else FULL, quick=args.quick, with_profile=args.profile)
    )
    print(json.dumps(out))
    return 0 if out["valid"] else 1


if __name__ == "__main__":
    sys.exit(cli())
