"""HTTP cost of Idempotency-Key guarding: bare vs `hardened` (Redis, PostgreSQL) vs a peer.

Run: ``uv run python bench/idempotency.py`` (about 5 min; needs ``wrk``, Redis at
``BENCH_REDIS_URL``, default ``redis://127.0.0.1:6379/14``, ``redis-server`` on PATH
for the round-trip count, and PostgreSQL at ``BENCH_DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``, where a database
``hardened_bench_idem_<run>`` is created and dropped). The last line printed is one
JSON line; the exit status is 1 when the run is not valid (``"valid": false``,
reasons in ``problems``). Goals (``goals``) are reported, never a reason to fail.

Throughput (method of ``bench/http_overhead.sh``): one uvicorn worker (uvloop,
httptools, ``--no-access-log``), a fresh server per run, a 2 s wrk warm-up, then
``wrk -t1 -c32 -d10s``; the scenarios alternate (order rotated) over 3 rounds and
each reports its median round. Apps are in ``bench/idem_apps.py``. Scenarios:

* ``bare``: the route alone;
* ``hardened``: `IdempotencyMiddleware` over ``StoreBackend(RedisStore)``, the key
  required on the route, a new key on every request;
* ``peer``: fastapi-idempotency (its default in-memory store), a new key every request;
* ``replay``: the hardened server, one key on every request, so every response
  is a replay of the first;
* ``floor``: the bare app whose handler itself makes a first request's two backend
  calls, ``claim`` and ``complete``, on the same ``StoreBackend(RedisStore)``
  (same pool, pipelining and scripts): the store's cost alone, so ``vs_floor``
  (hardened / floor) is what the middleware's own work leaves of it;
* ``sql``: the middleware over `SqlBackend` on PostgreSQL, its engine built as
  shopfront's records engine (pool of 2, no overflow, pre-ping);
* ``sql_floor``: the bare app making the same two calls on that backend.

Every scenario runs the same rounds; the two ``sql`` ones measure for
``SQL_DURATION`` (5 s) instead of ``DURATION`` (10 s), which keeps the whole run
near 5 minutes (their rates are a few percent of the Redis ones: PostgreSQL
commits each statement, through a pool of 2). After wrk stops, the bench waits
until the handler count has not moved for twice wrk's p99 (at least 0.2 s), so
requests still queued on the server are counted before the records are.

Every scenario sends the same request from the same generated wrk Lua script
(a key per request: a per-process random prefix, the thread and a counter), so
the client does the same work in all of them. Each server is checked before and
after it is measured: the hardened one refuses a keyless POST (400), both guards
replay a repeated key with ``Idempotent-Replayed: true`` (the ``sql`` server as
well; the floors answer one plain POST); afterwards ``GET /runs`` (handler
executions) must match wrk's request count with unique keys, be exactly 1 for
``replay``, and ``hardened`` and ``floor`` must have left one Redis record per
execution, ``sql`` and ``sql_floor`` one completed row per execution (each
scenario round gets a fresh table). A floor whose claim is not ``Claimed`` or
whose complete is refused answers 500. Non-2xx and socket errors are counted per
scenario; any makes the run invalid.

Round trips: N sequential first requests, then a replay of each, in process
(httpx's ASGI transport) against a private ``redis-server`` started for this (so
other clients of the shared Redis do not pollute its counters). ``INFO
commandstats`` deltas, summed over all commands (our own INFO/ECHO/MONITOR
excluded), count every command Redis executed, including the ones the Lua
scripts run inside Redis; those inner calls (``MONITOR`` lines tagged ``lua``)
are not round trips and are subtracted. ``redis_calls_*`` keeps the raw sum.

Ratios are to bare in the same run (absolute numbers drift 10-30 % between
runs): ``*_ratio`` divides medians, ``*_ratio_paired`` is the median of per-round
ratios; ``vs_floor`` and ``sql_vs_floor`` divide by the floor the same way (with
``*_paired`` twins). Keys are written under a unique prefix in the bench's Redis
db and deleted after each run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from sqlalchemy import MetaData, create_engine, func, select

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = os.environ.get("DURATION", "10s")
SQL_DURATION = os.environ.get("SQL_DURATION", "5s")  # the sql scenarios: ~50x fewer requests
WARMUP = os.environ.get("WARMUP", "2s")
CONNECTIONS = 32
RT_REQUESTS = int(os.environ.get("RT_REQUESTS", "200"))
RUN = uuid.uuid4().hex[:12]
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SCENARIOS = ("bare", "hardened", "peer", "replay", "floor", "sql", "sql_floor")
SQL_SCENARIOS = frozenset({"sql", "sql_floor"})
GUARDED = frozenset({"hardened", "replay", "sql"})  # refuse a keyless POST, replay a key
FACTORY = {
    "bare": "make_bare",
    "hardened": "make_hardened",
    "peer": "make_peer",
    "replay": "make_hardened",
    "floor": "make_floor",
    "sql": "make_sql",
    "sql_floor": "make_sql_floor",
}
BODY = '{"sku":"SKU-12345","quantity":3,"note":"leave at the door"}'
HEADERS = {"content-type": "application/json"}
REPLAYED = "idempotent-replayed"

# args: a key prefix unique to this wrk process, and optionally one fixed key (replay).
# done() prints the run as one JSON line (latencies in microseconds).
WRK_LUA = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local prefix, fixed, n = "k", nil, 0
function init(args)
  prefix = (args[1] or "k") .. "-" .. tostring(tid or 0) .. "-"
  fixed = args[2]
end

function request()
  n = n + 1
  wrk.headers["Idempotency-Key"] = fixed or (prefix .. n)
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "socket_errors": %%d, '
    .. '"p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class Invalid(Exception):
    """A check failed: the measurement would not mean what it says."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_prefix(redis: Redis, prefix: str) -> int:
    """Delete every key under ``prefix``; the number deleted."""
    deleted, batch = 0, []
    for key in redis.scan_iter(match=prefix + "*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += int(redis.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(redis.unlink(*batch))
    return deleted


def count_prefix(redis: Redis, prefix: str) -> int:
    return sum(1 for _ in redis.scan_iter(match=prefix + "*", count=5000))


class Postgres:
    """A database created for this run; a fresh idempotency table per scenario round."""

    def __init__(self, url: str) -> None:
        import psycopg

        parts = urlsplit(url)
        self.name = f"hardened_bench_idem_{RUN}"
        self._admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlunsplit(parts._replace(scheme="postgresql+psycopg", path=f"/{self.name}"))
        self.engine = create_engine(self.url)

    def create_table(self, name: str) -> None:
        from hardened.idempotency import idempotency_table

        idempotency_table(MetaData(), name).create(self.engine)

    def records(self, name: str) -> tuple[int, int]:
        """(rows, completed rows) in table ``name``."""
        from hardened.idempotency import idempotency_table

        t = idempotency_table(MetaData(), name)
        query = select(func.count(), func.count().filter(t.c.state == "done"))
        with self.engine.connect() as conn:
            rows, done = conn.execute(query).one()
        return int(rows), int(done)

    def drop_table(self, name: str) -> None:
        from hardened.idempotency import idempotency_table

        idempotency_table(MetaData(), name).drop(self.engine, checkfirst=True)

    def close(self) -> None:
        import psycopg

        self.engine.dispose()
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# -- throughput --------------------------------------------------------------------------


class Server:
    """One uvicorn worker running one scenario's app factory."""

    def __init__(
        self, scenario: str, port: int, prefix: str, sql: tuple[str, str] = ("", "")
    ) -> None:
        self.base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "BENCH_REDIS_URL": URL,
            "BENCH_PREFIX": prefix,
            "BENCH_SQL_URL": sql[0],
            "BENCH_SQL_TABLE": sql[1],
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                f"bench.idem_apps:{FACTORY[scenario]}",
                "--app-dir",
                str(ROOT),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        self.client = httpx.Client(base_url=self.base, timeout=5.0)
        for _ in range(200):
            if self.proc.poll() is not None:
                raise Invalid(f"{scenario}: server exited with {self.proc.returncode}")
            try:
                self.client.get("/runs")
            except httpx.TransportError:
                time.sleep(0.05)
            else:
                return
        self.stop()
        raise Invalid(f"{scenario}: server did not come up")

    def post(self, key: str | None) -> httpx.Response:
        headers = dict(HEADERS)
        if key is not None:
            headers["idempotency-key"] = key
        return self.client.post("/orders", content=BODY, headers=headers)

    def runs(self) -> int:
        return int(self.client.get("/runs").json()["runs"])

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def settled_runs(server: Server, quiet: float) -> int:
    """The handler count once it has not moved for ``quiet`` seconds (queued requests done)."""
    runs, deadline = server.runs(), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = server.runs()
        if now == runs:
            break
        runs = now
    return runs


def expect(response: httpx.Response, what: str, *, status: int, replayed: bool | None) -> None:
    if response.status_code != status:
        raise Invalid(f"{what}: status {response.status_code}, expected {status}")
    if replayed is not None and (response.headers.get(REPLAYED) == "true") != replayed:
        raise Invalid(f"{what}: Idempotent-Replayed {response.headers.get(REPLAYED)!r}")


def check_before(scenario: str, server: Server, fixed_key: str) -> int:
    """Prove the guard is active; returns how many times these checks ran the handler."""
    if scenario not in GUARDED:
        expect(server.post(f"check-{RUN}"), f"{scenario} POST", status=200, replayed=False)
        return 1
    if scenario != "replay":
        expect(server.post(None), f"{scenario} POST without a key", status=400, replayed=None)
    key = fixed_key if scenario == "replay" else f"check-{RUN}-{uuid.uuid4().hex}"
    expect(server.post(key), f"{scenario} first POST", status=200, replayed=False)
    expect(server.post(key), f"{scenario} repeated POST", status=200, replayed=True)
    return 1


def wrk(lua: Path, url: str, duration: str, *args: str) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}", "-s", str(lua), url]
    if args:
        command += ["--", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK ")), None)
    if line is None:
        raise Invalid(f"wrk printed no summary: {out[-500:]}")
    result: dict[str, Any] = json.loads(line.removeprefix("WRK "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def measure(
    scenario: str, rnd: int, lua: Path, redis: Redis, pg: Postgres | None
) -> dict[str, Any]:
    prefix = f"bench:idem:{RUN}:{scenario}{rnd}:"
    table = f"idem_{scenario}{rnd}" if scenario in SQL_SCENARIOS else ""
    if table:
        if pg is None:
            raise Invalid(f"{scenario}: no PostgreSQL")
        pg.create_table(table)
    try:
        run = serve_and_load(scenario, rnd, lua, prefix, (pg.url, table) if pg and table else None)
        check_after(scenario, run, redis, prefix, pg=pg if table else None, table=table)
    finally:
        delete_prefix(redis, prefix)
        if pg is not None and table:
            pg.drop_table(table)
    return run


def serve_and_load(
    scenario: str, rnd: int, lua: Path, prefix: str, sql: tuple[str, str] | None
) -> dict[str, Any]:
    """One server: checks before, wrk warm-up and run, handler runs after."""
    fixed_key = f"replay-{RUN}-{rnd}" if scenario == "replay" else ""
    extra = (fixed_key,) if fixed_key else ()
    server = Server(scenario, free_port(), prefix, sql or ("", ""))
    try:
        checks = check_before(scenario, server, fixed_key)
        url = server.base + "/orders"
        warm = wrk(lua, url, WARMUP, f"w{rnd}{uuid.uuid4().hex[:8]}", *extra)
        duration = SQL_DURATION if scenario in SQL_SCENARIOS else DURATION
        run = wrk(lua, url, duration, f"m{rnd}{uuid.uuid4().hex[:8]}", *extra)
        if scenario == "replay":
            expect(server.post(fixed_key), "replay after the run", status=200, replayed=True)
        runs = settled_runs(server, max(0.2, 2 * run["p99_us"] / 1e6))
    finally:
        server.stop()
    run["sent"] = warm["requests"] + run["requests"] + checks
    run["warmup_non2xx"] = warm["non2xx"]
    run["warmup_socket_errors"] = warm["socket_errors"]
    run["handler_runs"] = runs
    return run


def check_after(
    scenario: str,
    run: dict[str, Any],
    redis: Redis,
    prefix: str,
    *,
    pg: Postgres | None,
    table: str,
) -> None:
    """Executions match the requests (or one, for replay), and each left its record."""
    runs, sent = run["handler_runs"], run.pop("sent")
    if scenario == "replay":
        if runs != 1:
            raise Invalid(f"replay: the handler ran {runs} times, expected once")
    elif not sent <= runs <= sent + 2 * CONNECTIONS:
        # wrk counts completed responses; up to -c requests per wrk run may be cut off.
        raise Invalid(f"{scenario}: {runs} handler runs for {sent} requests sent")
    if scenario in {"hardened", "floor"}:
        records = count_prefix(redis, prefix)
        if records != runs:
            raise Invalid(f"{scenario}: {records} Redis records for {runs} executions")
    if pg is not None:
        rows, done = pg.records(table)
        if not rows == done == runs:
            raise Invalid(f"{scenario}: {rows} rows ({done} done) for {runs} executions")


# -- round trips ---------------------------------------------------------------------------

_OURS = {"info", "echo", "monitor"}  # the instrumentation's own commands


def _commandstats(client: Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, calls in after.items():
        d = calls - before.get(name, 0)
        if d and name not in _OURS:
            out[name] = d
    return out


async def _phase(redis_url: str, send: Any, n: int, marker: str) -> tuple[dict[str, int], int, int]:
    """Commandstats delta, Lua-inner and top-level MONITOR lines of ``n`` calls of ``send``.

    Every instrumentation connection is open before the first snapshot, so the
    delta holds nothing of ours but one INFO (excluded by name).
    """
    sync = Redis.from_url(redis_url)
    monitor, probe = AsyncRedis.from_url(redis_url), AsyncRedis.from_url(redis_url)
    try:
        await probe.echo("connect")
        _commandstats(sync)  # connects (HELLO) before anything is counted
        async with monitor.monitor() as lines:
            await probe.echo(f"start-{marker}")
            before = _commandstats(sync)
            for i in range(n):
                await send(i)
            after = _commandstats(sync)
            await probe.echo(f"end-{marker}")
            inner = top = 0
            started = False
            while True:
                line = await lines.next_command()
                command = line["command"]
                if f"start-{marker}" in command:
                    started = True
                    continue
                if f"end-{marker}" in command:
                    break
                if not started or command.split(" ", 1)[0].strip('"').lower() in _OURS:
                    continue
                if line["client_type"] == "lua":
                    inner += 1
                else:
                    top += 1
    finally:
        await monitor.aclose()
        await probe.aclose()
        sync.close()
    return _delta(before, after), inner, top


async def round_trips(redis_url: str, n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))  # the repo root, so bench.idem_apps imports bench.http_apps
    from bench.idem_apps import make_hardened

    app = make_hardened(redis_url, f"bench:idem:{RUN}:rt:")
    transport = httpx.ASGITransport(app=app)
    keys = [f"rt-{RUN}-{i}" for i in range(n)]
    problems: list[str] = []
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def post(key: str, replayed: bool) -> None:
                headers = {**HEADERS, "idempotency-key": key}
                response = await client.post("/orders", content=BODY, headers=headers)
                flag = response.headers.get(REPLAYED) == "true"
                if response.status_code != 200 or flag != replayed:
                    problems.append(f"round trips: {response.status_code} replayed={flag}")

            for i in range(3):  # scripts loaded, connection open
                await post(f"rt-warm-{RUN}-{i}", replayed=False)
                await post(f"rt-warm-{RUN}-{i}", replayed=True)

            async def first(i: int) -> None:
                await post(keys[i], replayed=False)

            async def replay(i: int) -> None:
                await post(keys[i], replayed=True)

            for name, send in (("first", first), ("replay", replay)):
                delta, inner, top = await _phase(redis_url, send, n, uuid.uuid4().hex)
                total = sum(delta.values())
                out[f"round_trips_{name}"] = round((total - inner) / n, 3)
                out[f"redis_calls_{name}"] = round(total / n, 3)
                out[f"commands_{name}"] = {k: round(v / n, 3) for k, v in sorted(delta.items())}
                if total - inner != top:
                    problems.append(
                        f"round trips ({name}): commandstats says {total - inner}, "
                        f"MONITOR {top} top-level commands"
                    )
    finally:
        await app.state.store.aclose()
    out["round_trip_requests"] = n
    out["round_trip_problems"] = problems
    return out


def private_redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    probe = Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                probe.ping()
                return proc, url
            except Exception:
                time.sleep(0.05)
    finally:
        probe.close()
    proc.kill()
    raise Invalid("private redis-server did not come up")


# -- summary -------------------------------------------------------------------------------


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_round: dict[str, list[float]] = {}
    for name in SCENARIOS:
        rs = runs[name]
        by_round[name] = [r["rps"] for r in rs]
        out[f"{name}_rps"] = round(statistics.median(by_round[name]), 1) if rs else None
        for field in ("p50_us", "p99_us"):
            out[f"{name}_{field}"] = round(statistics.median(r[field] for r in rs)) if rs else None
        out[f"{name}_rps_rounds"] = [round(x, 1) for x in by_round[name]]
        out[f"{name}_non2xx"] = sum(r["non2xx"] + r["warmup_non2xx"] for r in rs)
        out[f"{name}_socket_errors"] = sum(
            r["socket_errors"] + r["warmup_socket_errors"] for r in rs
        )
        out[f"{name}_handler_runs"] = [r["handler_runs"] for r in rs]
    for name, base, key in [(n, "bare", f"{n}_ratio") for n in SCENARIOS[1:]] + [
        ("hardened", "floor", "vs_floor"),
        ("sql", "sql_floor", "sql_vs_floor"),
    ]:
        rps, base_rps = out[f"{name}_rps"], out[f"{base}_rps"]
        out[key] = round(rps / base_rps, 3) if rps is not None and base_rps else None
        # Rounds pair up only when both scenarios measured every round.
        pairs = zip(by_round[name], by_round[base], strict=False)
        paired = (
            [x / b for x, b in pairs if b] if len(by_round[name]) == len(by_round[base]) else []
        )
        out[f"{key}_paired"] = round(statistics.median(paired), 3) if paired else None
    return out


def throughput(
    redis: Redis, pg: Postgres | None, problems: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Every scenario's measured rounds; a round whose checks fail is left out, with why."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(WRK_LUA % {"body": BODY})
        try:
            for rnd in range(ROUNDS):
                for i in range(len(SCENARIOS)):
                    name = SCENARIOS[(i + rnd) % len(SCENARIOS)]
                    try:
                        run = measure(name, rnd, lua, redis, pg)
                    except Invalid as exc:
                        problems.append(str(exc))
                        print(f"round {rnd} {name}: INVALID {exc}", file=sys.stderr)
                        continue
                    runs[name].append(run)
                    print(f"round {rnd} {name}: {json.dumps(run)}", file=sys.stderr)
        finally:
            delete_prefix(redis, f"bench:idem:{RUN}:")
    return runs


def judge(out: dict[str, Any], runs: dict[str, list[dict[str, Any]]], problems: list[str]) -> None:
    """Refused requests or missing rounds make the run invalid; goals are only reported."""
    for name in SCENARIOS:
        if out[f"{name}_non2xx"] or out[f"{name}_socket_errors"]:
            problems.append(
                f"{name}: {out[f'{name}_non2xx']} non-2xx, "
                f"{out[f'{name}_socket_errors']} socket errors"
            )
        if len(runs[name]) != ROUNDS:
            problems.append(f"{name}: {len(runs[name])} of {ROUNDS} rounds measured")
    hardened, floor, ratio = (
        out.get("hardened_rps"),
        out.get("floor_rps"),
        out.get("hardened_ratio"),
    )
    out["goals"] = {
        "hardened_rps >= 0.9*floor_rps": bool(hardened and floor and hardened >= 0.9 * floor),
        "hardened_ratio >= 0.65": ratio is not None and ratio >= 0.65,
    }


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is missing; install it with: apt-get install -y wrk", file=sys.stderr)
        return 2
    started = time.monotonic()
    out: dict[str, Any] = {
        "bench": "idempotency",
        "rounds": ROUNDS,
        "wrk": f"-t1 -c{CONNECTIONS} -d{DURATION} (sql: -d{SQL_DURATION})",
        "load1_at_start": float(Path("/proc/loadavg").read_text().split()[0]),
    }
    problems: list[str] = []
    try:
        pg: Postgres | None = Postgres(DATABASE_URL)
    except Exception as exc:
        problems.append(f"PostgreSQL at {DATABASE_URL}: {exc}")
        pg = None
    redis = Redis.from_url(URL)
    try:
        redis.ping()
        runs = throughput(redis, pg, problems)
    except RedisError as exc:
        print(f"Redis at {URL}: {exc}", file=sys.stderr)
        return 2
    finally:
        redis.close()
        if pg is not None:
            pg.close()
    out.update(summarise(runs))
    out["hardened_vs_peer"] = (
        round(out["hardened_rps"] / out["peer_rps"], 3)
        if out["hardened_rps"] and out["peer_rps"]
        else None
    )

    if shutil.which("redis-server") is None:
        problems.append("redis-server not on PATH: round trips not measured")
    else:
        proc, private_url = private_redis()
        try:
            rt = asyncio.run(round_trips(private_url, RT_REQUESTS))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        problems += rt.pop("round_trip_problems")
        out.update(rt)

    judge(out, runs, problems)
    out["load1_at_end"] = float(Path("/proc/loadavg").read_text().split()[0])
    out["seconds"] = round(time.monotonic() - started, 1)
    out["problems"] = problems
    out["valid"] = not problems
    print(json.dumps(out))
    return 0 if out["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
