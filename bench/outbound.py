"""Governed outbound calls: `GovernedTransport` against a bare httpx client, same run.

Run: ``uv run python bench/outbound.py`` (about 1 min; ``--quick``: two short rounds, a
smoke test; ``--profile``: also prints a cProfile of governed and capped calls to
stderr). Redis at ``BENCH_REDIS_URL``, default ``redis://127.0.0.1:6379/13``; every key
is under ``bench:outbound:<run>:`` and deleted at exit. Prints one JSON line; exits 1
when the run is not valid (``valid`` false, reasons in ``problems``). Goals (``goals``)
are reported, never a reason to fail.

The upstream is a fake HTTP/1.1 server in its own process (this file with
``--server``: a bare asyncio protocol on uvloop that answers every request at once
with a 2-byte body, keep-alive), so its CPU is not the client's event loop. Per
call, sequential ``await client.get("/x")`` on one asyncio loop, in microseconds:

* ``bare``: a plain ``httpx.AsyncClient`` (default pooled transport, keep-alive);
* ``governed``: ``AsyncClient(transport=GovernedTransport(Governor(
  GovernorConfig("bench", cap=None))))``, every other setting the default;
* ``governed_capped``: the same with the shared interval cap on a `RedisStore`
  (``CapConfig(calls=10_000_000, period=60)``: a 6 µs interval, so a sequential
  caller never waits), one cap script per call;
* ``redis_rtt``: one ``EVALSHA`` of ``return redis.call('INCR', KEYS[1])`` through
  ``RedisStore.run`` on the same store: the floor of one round trip on this client;
* ``cap_reserve``: the capped governor's own ``IntervalCap.reserve`` (the cap script
  alone, through the same store): what the cap adds before any governor Python runs;
* ``bare_then_rtt``: a bare ``get`` followed by the ``redis_rtt`` call, no governor:
  one HTTP exchange and one round trip in sequence, as a capped call makes them. A
  round trip right after an HTTP exchange (Redis idle since the last one, three
  processes on two cores) can cost more than one of a tight ``redis_rtt`` loop;
  ``capped_ratio_vs_sequential`` divides by this instead (diagnostic, not a goal).

Each round warms every scenario, then runs ``blocks`` interleaved blocks of each
(order rotated per block and round), so the noise bursts of this 2-core machine hit
all scenarios alike; a scenario reports the median of its per-round p50s (and p99s),
and ratios divide those medians (``*_paired``: median of the per-round ratios).
``ratio`` = governed / bare; ``capped_ratio_vs_floor`` = governed_capped /
(bare + redis_rtt). ``round_trips_per_call``: the commands clients sent to the
store's database during ``rt_calls`` capped calls (seen with ``MONITOR``, the
counting's own ``INFO``/``ECHO`` left out), divided by the calls.
``commands_executed_per_call`` is the ``INFO commandstats`` delta over the same calls:
it also counts the commands the cap script runs inside Redis (``TIME``, ``GET``,
``SET``: no round trips, MONITOR tags them ``lua``), so it is the script's work, not
its trips. Redis is shared with other work, which can only add commands, so the least
of ``rt_trials`` trials is reported (all of them under ``*_trials``). Every response
must be a 200, the breaker closed and the cap never failed open (a store timeout would
let a call through uncapped and look fast).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.util
import io
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from redis.asyncio import Redis

from hardened.outbound import CapConfig, GovernedTransport, Governor, GovernorConfig
from hardened.stores import RedisStore, Script

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from hardened.stores import MemoryState

SELF = str(Path(__file__).resolve())
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
FLOOR_SOURCE = "return redis.call('INCR', KEYS[1])"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
GOALS = {"ratio": 1.2, "capped_ratio_vs_floor": 1.2, "round_trips_per_call": 1.0}


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes: each round runs ``blocks`` blocks of ``block_calls`` calls of every scenario."""

    rounds: int
    blocks: int
    block_calls: int
    warmup: int
    rt_calls: int
    rt_trials: int


FULL = Settings(rounds=5, blocks=8, block_calls=250, warmup=300, rt_calls=1000, rt_trials=3)
QUICK = Settings(rounds=2, blocks=4, block_calls=100, warmup=100, rt_calls=300, rt_trials=2)


# -- the fake upstream ----------------------------------------------------------------


class _Answer(asyncio.Protocol):
    """Answers each bodyless request (one per blank line) with `RESPONSE`, at once."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        requests = buffer.count(b"\r\n\r\n")
        if requests and self.transport is not None:
            self.transport.write(RESPONSE * requests)
            buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4 :]
        self.buffer = buffer


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def server_main() -> None:
    """The fake upstream's process: prints its port, then serves until terminated."""
    try:
        import uvloop

        uvloop.run(_serve())
    except ImportError:  # pragma: no cover - uvloop is in the dev environment
        asyncio.run(_serve())


async def start_server() -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SELF, "--server", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line.strip():
        proc.kill()
        raise RuntimeError("the fake upstream did not start")
    return proc, int(line)


# -- the client side --------------------------------------------------------------------


def _no_twin(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    raise NotImplementedError("the bench runs its floor script on Redis only")


FLOOR = Script("bench_outbound_floor", FLOOR_SOURCE, _no_twin)


class Rig:
    """The clients, governors and store of one run, every Redis key under its prefix."""

    def __init__(self, run: str, port: int) -> None:
        self.prefix = f"bench:outbound:{run}:"
        self.store = RedisStore.from_url(URL, prefix=self.prefix)
        self.governor = Governor(GovernorConfig("bench", cap=None))
        self.capped = Governor(
            GovernorConfig("bench_capped", cap=CapConfig(calls=10_000_000, period=60)),
            store=self.store,
        )
        base = f"http://127.0.0.1:{port}"
        # trust_env off: no proxy from the environment may sit in one client's path only.
        self.bare = httpx.AsyncClient(base_url=base, trust_env=False)
        self.governed = httpx.AsyncClient(
            base_url=base, trust_env=False, transport=GovernedTransport(self.governor)
        )
        self.governed_capped = httpx.AsyncClient(
            base_url=base, trust_env=False, transport=GovernedTransport(self.capped)
        )
        self.statuses: dict[int, int] = {}

    async def aclose(self) -> None:
        for client in (self.bare, self.governed, self.governed_capped):
            await client.aclose()
        await self.store.aclose()

    def scenarios(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        statuses = self.statuses
        store, cap = self.store, self.capped.cap
        assert cap is not None  # noqa: S101 - configured above
        reserve = cap.reserve

        def http(client: httpx.AsyncClient) -> Callable[[], Awaitable[Any]]:
            get = client.get

            async def call() -> Any:
                response = await get("/x")
                status = response.status_code
                statuses[status] = statuses.get(status, 0) + 1
                return response

            return call

        async def redis_rtt() -> Any:
            return await store.run(FLOOR, ("floor",), ())

        async def cap_reserve() -> Any:
            return await reserve(10.0)

        bare = http(self.bare)

        async def bare_then_rtt() -> Any:
            await bare()
            return await store.run(FLOOR, ("floor",), ())

        return {
            "bare": bare,
            "governed": http(self.governed),
            "governed_capped": http(self.governed_capped),
            "redis_rtt": redis_rtt,
            "cap_reserve": cap_reserve,
            "bare_then_rtt": bare_then_rtt,
        }


async def sequential(call: Callable[[], Awaitable[Any]], n: int, lat: list[float]) -> None:
    """``n`` sequential calls, their latencies (s) appended to ``lat``."""
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await call()
        lat.append(clock() - t0)


def _pct(lat: list[float], q: float) -> float:
    return lat[min(len(lat) - 1, int(len(lat) * q))] * 1e6


async def one_round(
    scenarios: dict[str, Callable[[], Awaitable[Any]]], s: Settings, rnd: int
) -> dict[str, dict[str, float]]:
    """Every scenario warmed, then measured in ``blocks`` interleaved blocks (order rotated)."""
    names = list(scenarios)
    lat: dict[str, list[float]] = {name: [] for name in names}
    for call in scenarios.values():
        await sequential(call, s.warmup, [])
    gc.collect()
    for block in range(s.blocks):
        for i in range(len(names)):
            name = names[(i + rnd + block) % len(names)]
            await sequential(scenarios[name], s.block_calls, lat[name])
    out = {}
    for name, values in lat.items():
        values.sort()
        out[name] = {"p50_us": _pct(values, 0.5), "p99_us": _pct(values, 0.99)}
    return out


_NOT_COUNTED = frozenset({"info", "echo", "monitor"})  # the counting's own commands


async def _command_calls(info: Redis) -> dict[str, int]:
    stats = await info.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name.removeprefix("cmdstat_") not in _NOT_COUNTED
    }


async def _watch(monitor: Any, db: int, sentinel: str, seen: dict[str, int]) -> None:
    """Count the commands clients send on ``db`` (not those run inside Lua) until ``sentinel``."""
    async for entry in monitor.listen():
        command = entry["command"]
        if command == f"ECHO {sentinel}":
            return
        name = command.split(" ", 1)[0].lower()
        if entry["db"] == db and entry["client_type"] != "lua" and name not in _NOT_COUNTED:
            seen[name] = seen.get(name, 0) + 1


async def round_trips(call: Callable[[], Awaitable[Any]], s: Settings, run: str) -> dict[str, Any]:
    """Redis round trips per capped call (MONITOR) and commands executed (commandstats).

    ``INFO commandstats`` also counts the commands a script runs inside Redis
    (the cap script's ``TIME``, ``GET``, ``SET``), which cost no round trip;
    MONITOR tags those ``lua`` and they are left out of ``round_trips_per_call``.
    Other clients of the server can only add commands, so the least trial counts.
    """
    info = Redis.from_url(URL)
    db = int(info.connection_pool.connection_kwargs.get("db", 0))
    trips: list[float] = []
    executed: list[float] = []
    mixes: dict[str, dict[str, int]] = {}
    try:
        await sequential(call, 50, [])
        for trial in range(s.rt_trials):
            sentinel = f"bench:outbound:{run}:done:{trial}"
            seen: dict[str, int] = {}
            async with info.monitor() as monitor:
                watcher = asyncio.create_task(_watch(monitor, db, sentinel, seen))
                before = await _command_calls(info)
                for _ in range(s.rt_calls):
                    await call()
                after = await _command_calls(info)
                await info.echo(sentinel)
                await asyncio.wait_for(watcher, 60)
            delta = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
            per_call = round(sum(seen.values()) / s.rt_calls, 4)
            if not trips or per_call < min(trips):
                mixes["sent"] = seen
            trips.append(per_call)
            done = round(sum(delta.values()) / s.rt_calls, 4)
            if not executed or done < min(executed):
                mixes["executed"] = delta
            executed.append(done)
    finally:
        await info.aclose()
    return {
        "round_trips_per_call": min(trips),
        "round_trips_trials": trips,
        "commands_executed_per_call": min(executed),
        "commands_executed_trials": executed,
        "round_trips_commands": mixes,
        "round_trips_calls": s.rt_calls,
    }


async def profile(rig: Rig, calls: int) -> str:
    """A cProfile of ``calls`` sequential bare, governed and capped calls (by own time).

    For the governed ones also the rows of ``hardened`` alone, and by cumulative time.
    """
    scenarios = rig.scenarios()
    text = io.StringIO()
    for name in ("bare", "governed", "governed_capped"):
        call = scenarios[name]
        await sequential(call, 200, [])
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.enable()
        for _ in range(calls):
            await call()
        prof.disable()
        per_call = (time.perf_counter() - started) / calls * 1e6
        text.write(f"==== {name}: {calls} calls, {per_call:.0f} us/call profiled ====\n")
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(20)
        if name != "bare":
            text.write(f"==== {name}: hardened only, by own time ====\n")
            stats.sort_stats("tottime").print_stats("hardened/", 25)
            text.write(f"==== {name}: by cumulative time ====\n")
            stats.sort_stats("cumulative").print_stats(35)
    return text.getvalue()


async def cleanup(prefix: str) -> None:
    client = Redis.from_url(URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


def _env() -> dict[str, Any]:
    """Versions that move the numbers; without sniffio httpcore retries a failing import per lock.

    (httpcore 1.0's ``current_async_library`` runs ``import sniffio`` each time it makes a
    lock or a cancellation shield: a sys.path search when sniffio is absent, in bare and
    governed calls alike.)
    """
    versions: dict[str, Any] = {"python": sys.version.split()[0]}
    for name in ("httpx", "httpcore", "redis", "anyio"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["sniffio"] = importlib.util.find_spec("sniffio") is not None
    return versions


def _load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _summarise(rounds: dict[str, list[dict[str, float]]], s: Settings, out: dict[str, Any]) -> None:
    med: dict[str, float | None] = {}
    for name, rs in rounds.items():
        for field in ("p50_us", "p99_us"):
            values = [r[field] for r in rs]
            value = round(statistics.median(values), 1) if len(values) == s.rounds else None
            med[f"{name}_{field}"] = value
            out[f"{name}_{field}"] = value

    bare, governed = med["bare_p50_us"], med["governed_p50_us"]
    capped, rtt = med["governed_capped_p50_us"], med["redis_rtt_p50_us"]
    out["ratio"] = round(governed / bare, 3) if governed and bare else None
    floor = bare + rtt if bare and rtt else None
    out["capped_ratio_vs_floor"] = round(capped / floor, 3) if capped and floor else None
    sequential_floor = med["bare_then_rtt_p50_us"]
    out["capped_ratio_vs_sequential"] = (
        round(capped / sequential_floor, 3) if capped and sequential_floor else None
    )
    out["governed_overhead_us"] = round(governed - bare, 1) if governed and bare else None
    out["capped_over_governed_us"] = round(capped - governed, 1) if capped and governed else None

    def paired(pairs: list[float]) -> float | None:
        return round(statistics.median(pairs), 3) if len(pairs) == s.rounds else None

    b, g, c, r = (rounds[k] for k in ("bare", "governed", "governed_capped", "redis_rtt"))
    out["ratio_paired"] = paired([y["p50_us"] / x["p50_us"] for x, y in zip(b, g, strict=False)])
    out["capped_ratio_vs_floor_paired"] = paired(
        [z["p50_us"] / (x["p50_us"] + w["p50_us"]) for x, z, w in zip(b, c, r, strict=False)]
    )
    out["per_round_p50_us"] = {
        name: [round(x["p50_us"], 1) for x in rs] for name, rs in rounds.items()
    }


async def main(s: Settings, *, quick: bool, with_profile: bool) -> dict[str, Any]:
    started = time.monotonic()
    run = uuid.uuid4().hex[:12]
    out: dict[str, Any] = {
        "bench": "outbound",
        "quick": quick,
        "rounds": s.rounds,
        "calls_per_round": s.blocks * s.block_calls,
        "load1_at_start": _load1(),
        "env": _env(),
    }
    problems: list[str] = []
    proc, port = await start_server()
    rig = Rig(run, port)
    rounds: dict[str, list[dict[str, float]]] = {}
    try:
        await rig.store.ping()
        scenarios = rig.scenarios()
        rounds = {name: [] for name in scenarios}
        for rnd in range(s.rounds):
            try:
                for name, stats in (await one_round(scenarios, s, rnd)).items():
                    rounds[name].append(stats)
            except Exception as exc:
                problems.append(f"round {rnd}: {type(exc).__name__}: {exc}")
        try:
            out.update(await round_trips(scenarios["governed_capped"], s, run))
        except Exception as exc:
            problems.append(f"round trips: {type(exc).__name__}: {exc}")
        if with_profile:
            print(await profile(rig, 3000), file=sys.stderr)
    finally:
        await rig.aclose()
        await cleanup(rig.prefix)
        proc.terminate()
        await proc.wait()

    _summarise(rounds, s, out)
    if set(rig.statuses) != {200}:
        problems.append(f"responses other than 200: {rig.statuses}")
    problems.extend(
        f"{g.name}: breaker {g.breaker.state}"
        for g in (rig.governor, rig.capped)
        if g.breaker.state != "closed"
    )
    if rig.capped.cap is not None and rig.capped.cap.failed_open:
        problems.append(f"the cap failed open {rig.capped.cap.failed_open} times")

    def within(key: str) -> bool:
        value = out.get(key)
        return value is not None and value <= GOALS[key]

    out["goals"] = {f"{key}<={limit:g}": within(key) for key, limit in GOALS.items()}
    out["load1_at_end"] = _load1()
    out["seconds"] = round(time.monotonic() - started, 1)
    out["problems"] = problems
    out["valid"] = not problems
    return out


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="two short rounds (smoke test)")
    parser.add_argument("--profile", action="store_true", help="cProfile governed calls to stderr")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        server_main()
        return 0
    out = asyncio.run(
        main(QUICK if args.quick else FULL, quick=args.quick, with_profile=args.profile)
    )
    print(json.dumps(out))
    return 0 if out["valid"] else 1


if __name__ == "__main__":
    sys.exit(cli())
