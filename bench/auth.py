"""Refresh-token rotation: `hardened.auth.refresh` against a raw redis-py pipeline.

Run: ``uv run python bench/auth.py`` (Redis at ``REDIS_URL``, default
``redis://127.0.0.1:6379/15``). Prints one JSON line.

* hardened: `RefreshTokens.rotate`, one ``EVALSHA`` that checks the presented
  hash against current / parent / ancestors and rotates atomically on the
  server clock.
* raw: the same reads and writes as a user would write them without atomicity:
  ``HMGET current parent rotated_at``, then one non-transactional pipeline of
  ``HSET`` + ``LPUSH`` + ``LTRIM`` + ``PEXPIRE`` x3 (2 round trips, client
  clock, and two racing refreshes can both pass the check). It computes the
  same HMACs, so the difference is the store access.

Both run on identical blocking pools (no retries), sequentially (one chain of
rotations) and with 16 concurrent tasks (one family each); the variants
alternate within each of 3 rounds and the median round is reported. The
headline keys are the concurrent run; ``sequential`` holds the other.

Round trips are counted by the server: ``total_reads_processed`` (one per
client request; a pipeline is one; commands a script runs are not requests)
over a separate sequential phase. ``commands_per_rotation`` is the
``INFO commandstats`` delta per rotation; it also counts the commands run
inside the script, which is why EVALSHA (1 per rotation) is the only client
command on the hardened side. Keys live under a fresh prefix, deleted at exit.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import statistics
import time
import uuid
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hardened.auth.refresh import RefreshTokens
from hardened.stores import RedisStore, tagged

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
KEY = b"bench-server-key-" + b"x" * 32
ROUNDS = 3
CONCURRENCY = 16
SEQUENTIAL = 3000
CONCURRENT = 6400  # per round, split over the tasks
WARMUP = 300
COUNTED = 500
TTL_MS = 30 * 24 * 3600 * 1000
ANCESTORS = 64


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class RawRotation:
    """The same data layout and HMACs, written with plain commands and no atomicity."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.hash_key = hmac.digest(KEY, b"hardened.auth.refresh/hash", "sha256")
        self.rotate_key = hmac.digest(KEY, b"hardened.auth.refresh/rotate", "sha256")

    def _key(self, user: str, suffix: str) -> str:
        return self.prefix + tagged("raw", user, suffix=suffix)

    async def start(self, user: str) -> str:
        family, secret = _b64(os.urandom(16)), os.urandom(32)
        now = b"%d" % int(time.time() * 1000)
        fam = self._key(user, f"fam:{family}")
        current = hmac.digest(self.hash_key, secret, "sha256")
        fields = {"current": current, "created_at": now, "rotated_at": now, "tenant": "t"}
        await self.client.hset(fam, mapping=fields)
        await self.client.pexpire(fam, TTL_MS)
        await self.client.zadd(self._key(user, "fams"), {family: int(now)})
        return f"{user}.{family}.{_b64(secret)}"

    async def rotate(self, token: str) -> str:
        user, family, text = token.rsplit(".", 2)
        secret = base64.urlsafe_b64decode(text + "=")
        presented = hmac.digest(self.hash_key, secret, "sha256")
        child = hmac.digest(self.rotate_key, b"rotate:" + family.encode() + secret, "sha256")
        fam, anc = self._key(user, f"fam:{family}"), self._key(user, f"anc:{family}")
        current, parent, _rotated_at = await self.client.hmget(
            fam, ["current", "parent", "rotated_at"]
        )
        if current != presented:
            raise RuntimeError("raw rotation: not the current token")
        now = b"%d" % int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        child_hash = hmac.digest(self.hash_key, child, "sha256")
        mapping = {"current": child_hash, "parent": presented, "rotated_at": now}
        pipe.hset(fam, mapping={**mapping, "last_used_at": now})
        pipe.pexpire(fam, TTL_MS)
        if parent is not None:
            pipe.lpush(anc, parent)
            pipe.ltrim(anc, 0, ANCESTORS - 1)
            pipe.pexpire(anc, TTL_MS)
        pipe.pexpire(self._key(user, "fams"), TTL_MS)
        await pipe.execute()
        return f"{user}.{family}.{_b64(child)}"


class Variant:
    def __init__(self, name: str, start: Any, rotate: Any) -> None:
        self.name, self.start, self.rotate = name, start, rotate


async def chain(variant: Variant, count: int, latencies: list[int]) -> None:
    token = await variant.start(uuid.uuid4().hex)
    for _ in range(count):
        began = time.perf_counter_ns()
        token = await variant.rotate(token)
        latencies.append(time.perf_counter_ns() - began)


async def run(variant: Variant, tasks: int, total: int) -> dict[str, float]:
    latencies: list[int] = []
    began = time.perf_counter()
    await asyncio.gather(*(chain(variant, total // tasks, latencies) for _ in range(tasks)))
    elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100)
    return {"per_s": len(latencies) / elapsed, "p50_us": cuts[49] / 1000, "p99_us": cuts[98] / 1000}


async def server_counts(probe: Redis) -> dict[str, int]:
    info = await probe.info("all")
    counts = {k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items() if "cmdstat_" in k}
    counts["_reads"] = info["total_reads_processed"]
    return counts


async def counted(variant: Variant, probe: Redis) -> tuple[float, dict[str, float]]:
    """Round trips and commandstats per rotation over a sequential phase."""
    token = await variant.start(uuid.uuid4().hex)
    token = await variant.rotate(token)  # the family now has a parent, like the timed ones
    before = await server_counts(probe)
    for _ in range(COUNTED):
        token = await variant.rotate(token)
    after = await server_counts(probe)
    delta = {name: after[name] - before.get(name, 0) for name in after}
    delta["info"] -= 1  # the first probe
    reads = (delta.pop("_reads") - 1) / COUNTED  # minus the second probe's request
    commands = {name: round(n / COUNTED, 2) for name, n in sorted(delta.items()) if n}
    return round(reads, 2), commands


async def floor(client: Redis, prefix: str) -> float:
    """Sequential EVALSHA of a one-INCR script: the cost of any single round trip."""
    sha = await client.script_load("return redis.call('INCR', KEYS[1])")
    key = prefix + "floor"
    began = time.perf_counter()
    for _ in range(SEQUENTIAL):
        await client.evalsha(sha, 1, key)
    return SEQUENTIAL / (time.perf_counter() - began)


def median_round(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def compare(hardened: dict[str, float], raw: dict[str, float]) -> dict[str, float]:
    return {
        "hardened_per_s": round(hardened["per_s"]),
        "raw_per_s": round(raw["per_s"]),
        "ratio": round(hardened["per_s"] / raw["per_s"], 3),
        "hardened_p50_us": round(hardened["p50_us"], 1),
        "hardened_p99_us": round(hardened["p99_us"], 1),
        "raw_p50_us": round(raw["p50_us"], 1),
        "raw_p99_us": round(raw["p99_us"], 1),
    }


async def main() -> None:
    prefix = f"bench:auth:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(URL, max_connections=32, timeout=5.0, prefix=prefix)
    pool = BlockingConnectionPool.from_url(
        URL, max_connections=32, timeout=5.0, retry=Retry(NoBackoff(), 0)
    )
    client, probe = Redis(connection_pool=pool), Redis.from_url(URL)
    tokens = RefreshTokens(store, key=KEY)

    async def start(user: str) -> str:
        return (await tokens.start(user, tenant="t")).token

    async def rotate(token: str) -> str:
        return (await tokens.rotate(token)).token

    hardened = Variant("hardened", start, rotate)
    raw_rotation = RawRotation(client, prefix)
    raw = Variant("raw", raw_rotation.start, raw_rotation.rotate)
    try:
        for variant in (hardened, raw):
            await run(variant, CONCURRENCY, WARMUP * CONCURRENCY)
        results: dict[str, list[dict[str, float]]] = {}
        for round_ in range(ROUNDS):
            order = (hardened, raw) if round_ % 2 == 0 else (raw, hardened)
            for mode, tasks, total in (
                ("seq", 1, SEQUENTIAL),
                ("conc", CONCURRENCY, CONCURRENT),
            ):
                for variant in order:
                    outcome = await run(variant, tasks, total)
                    results.setdefault(f"{variant.name}_{mode}", []).append(outcome)
        round_trips, commands = await counted(hardened, probe)
        raw_round_trips, raw_commands = await counted(raw, probe)
        floor_per_s = await floor(client, prefix)
        info = await probe.info("server")
        summary: dict[str, Any] = {
            "bench": "auth_refresh_rotation",
            "headline": f"concurrent_{CONCURRENCY}",
            **compare(median_round(results["hardened_conc"]), median_round(results["raw_conc"])),
            "round_trips_per_rotation": round_trips,
            "raw_round_trips_per_rotation": raw_round_trips,
            "sequential": compare(
                median_round(results["hardened_seq"]), median_round(results["raw_seq"])
            ),
            "floor_evalsha_per_s": round(floor_per_s),
            "commands_per_rotation": commands,
            "raw_commands_per_rotation": raw_commands,
            "atomic": {"hardened": True, "raw": False},
            "rounds": ROUNDS,
            "concurrency": CONCURRENCY,
            "redis": info["redis_version"],
        }
        print(json.dumps(summary, separators=(",", ":")))
    finally:
        keys = [k async for k in probe.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await probe.delete(*keys[i : i + 500])
        await store.aclose()
        await client.aclose()
        await probe.aclose()


if __name__ == "__main__":
    asyncio.run(main())
