"""`RateLimiter` on `MemoryStore` and `RedisStore` alike, and the twin against Redis.

Time: the memory backend advances a fake clock; the Redis backend sleeps (or
uses periods long enough that a test never waits). Exactness between Lua and
its twin is proven by replaying Redis's own clock (the script returns it) on
the twin. The sliding-window counter is cross-checked against ``limits``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import types
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import limits
import limits.storage.memory
import pytest
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import REGISTRY
from redis.asyncio import BlockingConnectionPool, Redis

from hardened.ratelimit._core import CHECK, Policy, RateLimiter
from hardened.stores import MemoryState, MemoryStore, RedisStore
from hardened.stores._contracts import encode_args
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from hardened.stores import Script, ScriptArg
    from hardened.stores._contracts import AtomicScripts

pytestmark = pytest.mark.anyio


@dataclass
class Backend:
    name: str
    store: MemoryStore | RedisStore
    advance: Callable[[float], Awaitable[None]]
    tol: float  # seconds of slack on times (Redis runs on real time)

    def limiter(self) -> RateLimiter:
        return RateLimiter(self.store, namespace=f"rl-{uuid.uuid4().hex[:8]}")


async def _cleanup(store: RedisStore, prefix: str) -> None:
    keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await store.client.delete(*keys)
    await store.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = ManualClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Backend("memory", MemoryStore(clock=clock), advance, 2e-6)
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(url, prefix=prefix)  # default pool settings on purpose
    try:
        yield Backend("redis", store, asyncio.sleep, 0.05)
    finally:
        await _cleanup(store, prefix)


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)  # default pool settings on purpose
    try:
        yield store
    finally:
        await _cleanup(store, prefix)


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- algorithms ----------------------------------------------------------------------


async def test_gcra_burst_then_steady_rate(backend: Backend) -> None:
    """GCRA admits the burst at once, then one request per interval with exact retry_after."""
    policy = Policy("steady", limit=10, period=1.0, burst=4)
    limiter = backend.limiter()
    for left in (3, 2, 1, 0):
        decision = await limiter.check([(policy, "k")])
        assert decision.allowed
        assert decision.results[0].remaining == left
    refused = await limiter.check([(policy, "k")])
    assert not refused.allowed
    assert refused.violated is refused.results[0]
    assert refused.retry_after == pytest.approx(0.1, abs=backend.tol)
    assert refused.results[0].reset_after == pytest.approx(0.4, abs=backend.tol)
    await backend.advance(refused.retry_after + 0.001)
    assert (await limiter.check([(policy, "k")])).allowed
    again = await limiter.check([(policy, "k")])
    assert not again.allowed
    assert again.retry_after == pytest.approx(0.099, abs=backend.tol)


async def test_cost_weighs_a_request(backend: Backend) -> None:
    """A cost-3 request takes three units; one that does not fit waits for all three."""
    policy = Policy("weights", limit=5, period=5.0)
    limiter = backend.limiter()
    first = await limiter.check([(policy, "k")], cost=3)
    assert (first.allowed, first.results[0].remaining) == (True, 2)
    refused = await limiter.check([(policy, "k")], cost=3)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0, abs=backend.tol)


async def test_sliding_window_counts(backend: Backend) -> None:
    """A sliding-window policy admits exactly limit units, then refuses until the window slides."""
    policy = Policy("login", limit=5, period=3600.0, algorithm="sliding_window")
    limiter = backend.limiter()
    remaining = [(await limiter.check([(policy, "u1")])).results[0].remaining for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    refused = await limiter.check([(policy, "u1")])
    result = refused.results[0]
    assert (refused.allowed, result.remaining) == (False, 0)
    assert 0 < result.retry_after <= 3600.0 < result.reset_after <= 7200.0
    assert (await limiter.check([(policy, "u2")])).allowed  # keys are independent


@dataclass
class FixedClock:
    """`AtomicScripts` running twins on a state at a time the test sets."""

    now: float = 0.0
    state: MemoryState = field(init=False)

    def __post_init__(self) -> None:
        self.state = MemoryState(lambda: self.now)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        return script.memory(self.state, tuple(keys), encode_args(args), self.now)


async def test_sliding_window_matches_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """On seeded random sequences the sliding window admits exactly what `limits` admits."""
    fake = types.SimpleNamespace(time=lambda: 0.0)
    monkeypatch.setattr(limits.storage.memory, "time", fake)
    verdicts: set[bool] = set()
    for seed in range(20):
        rng = random.Random(seed)
        period, limit = rng.choice([1, 2, 10]), rng.randint(1, 12)
        policy = Policy("sw", limit=limit, period=period, algorithm="sliding_window")
        item = limits.RateLimitItemPerSecond(limit, period)
        peer = SlidingWindowCounterRateLimiter(MemoryStorage())
        ours = FixedClock()
        limiter = RateLimiter(ours)
        t_us = 1_000_000_000 + 300  # never on a window boundary: float and integer agree
        for _ in range(300):
            t_us += rng.randint(0, 4 * period * 1_000_000 // limit) // 1000 * 1000
            ours.now = t_us / 1_000_000
            fake.time = lambda at=ours.now: at
            cost = rng.choice([1, 1, 1, 2, 3])
            decision = await limiter.check([(policy, "k")], cost=cost)
            assert decision.allowed == peer.hit(item, "k", cost=cost), (seed, t_us)
            verdicts.add(decision.allowed)
    assert verdicts == {True, False}


async def test_gcra_twin_matches_reference_model() -> None:
    """The GCRA twin matches a textbook virtual-scheduling model on random sequences."""
    for seed in range(20):
        rng = random.Random(seed)
        limit, period = rng.randint(1, 20), rng.choice([1.0, 2.5, 60.0])
        burst = rng.choice([None, 1, limit * 2])
        policy = Policy("g", limit=limit, period=period, burst=burst)
        interval = round(period * 1_000_000 / limit)
        capacity = (burst or limit) * interval
        clock, tat = FixedClock(), 0
        limiter = RateLimiter(clock)
        now = 5_000_000_000
        for _ in range(200):
            now += rng.randint(0, 3 * interval)
            clock.now = now / 1_000_000
            cost = rng.choice([1, 1, 2])
            decision = await limiter.check([(policy, "k")], cost=cost)
            start = max(tat, now)
            allowed = start + cost * interval - capacity <= now
            assert decision.allowed == allowed
            if allowed:
                tat = start + cost * interval
                assert decision.results[0].reset_after == pytest.approx((tat - now) / 1e6)
            elif cost * interval > capacity:  # above the burst: no wait would admit it
                assert decision.impossible
            else:
                wait = (start + cost * interval - capacity - now) / 1e6
                assert decision.retry_after == pytest.approx(wait)


@dataclass
class Recording:
    """Passes scripts to a store and records (keys, args, reply)."""

    store: RedisStore
    calls: list[tuple[list[str], list[bytes], Any]] = field(default_factory=list)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        reply = await self.store.run(script, keys, args)
        self.calls.append((list(keys), encode_args(args), reply))
        return reply


async def test_redis_and_twin_agree_exactly(redis_store: RedisStore) -> None:
    """The same random sequence replayed at Redis's own clock gives identical replies."""
    rng = random.Random(7)
    policies = [
        Policy("fast", limit=5, period=0.2),
        Policy("burst", limit=3, period=0.3, burst=6),
        Policy("shadowgcra", limit=2, period=0.2, shadow=True),
        Policy("window", limit=4, period=0.25, algorithm="sliding_window"),
        Policy("shadowed", limit=2, period=0.2, algorithm="sliding_window", shadow=True),
    ]
    recording = Recording(redis_store)
    limiter = RateLimiter(recording)
    for _ in range(120):
        hits = [(p, rng.choice("ab")) for p in rng.sample(policies, rng.randint(1, 4))]
        await limiter.check(hits, cost=rng.choice([1, 1, 2]))
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() * 0.06)
    twin = FixedClock()
    for keys, args, reply in recording.calls:
        twin.now = reply[0] / 1_000_000
        assert await twin.run(CHECK, keys, args) == reply
    assert {r[1] for _, _, r in recording.calls} == {0, 1}  # both verdicts were exercised


# -- many policies, many requests ----------------------------------------------------


@pytest.mark.parametrize("algorithm", ["gcra", "sliding_window"])
async def test_200_concurrent_checks_admit_exactly_50(
    redis_store: RedisStore, algorithm: str
) -> None:
    """200 concurrent checks on from_url defaults admit exactly 50 of 50/min, no store error."""
    policy = Policy("storm", limit=50, period=60.0, algorithm=algorithm)  # type: ignore[arg-type]
    limiter = RateLimiter(redis_store)
    assert redis_store.client.connection_pool.max_connections < 200  # the burst outruns the pool
    # The sliding-window counter's windows are epoch-aligned; a burst straddling a
    # boundary may admit one extra (the approximation's floor), so start clear of one.
    if algorithm == "sliding_window" and time.time() % 60.0 > 55.0:
        await asyncio.sleep(60.0 - time.time() % 60.0 + 0.1)
    before = sample("hardened_ratelimit_store_errors_total", {})
    decisions = await asyncio.gather(*(limiter.check([(policy, "t1")]) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert not any(d.store_failed for d in decisions)
    assert sample("hardened_ratelimit_store_errors_total", {}) == before


IP = Policy("ip", limit=10, period=60.0)
USER = Policy("user", limit=2, period=60.0, algorithm="sliding_window")
TENANT = Policy("tenant", limit=10, period=60.0)


async def test_refused_by_one_consumes_nothing_from_others(backend: Backend) -> None:
    """A request the user policy refuses takes nothing from the ip and tenant quotas."""
    limiter = backend.limiter()
    hits = [(IP, "1.2.3.4"), (USER, "u1"), (TENANT, "t1")]
    for _ in range(2):
        assert (await limiter.check(hits)).allowed
    for _ in range(5):
        refused = await limiter.check(hits)
        assert not refused.allowed
        assert refused.violated is not None
        assert refused.violated.policy is USER
        assert refused.most_restrictive is refused.violated
        assert [r.allowed for r in refused.results] == [True, False, True]
        assert [r.remaining for r in refused.results] == [8, 0, 8]
        assert refused.near_limit
    alone = await limiter.check([(IP, "1.2.3.4"), (TENANT, "t1")])
    assert [r.remaining for r in alone.results] == [7, 7]
    assert not alone.near_limit


async def test_shadow_policy_never_blocks(backend: Backend) -> None:
    """A shadow policy reports its refusals but the request goes through."""
    shadow = Policy("shadow", limit=1, period=60.0, shadow=True)
    limiter = backend.limiter()
    before = sample(
        "hardened_ratelimit_decisions_total", {"policy": "shadow", "outcome": "shadow_limited"}
    )
    decisions = [await limiter.check([(shadow, "k"), (IP, "k")]) for _ in range(4)]
    assert all(d.allowed and d.violated is None for d in decisions)
    assert [d.results[0].allowed for d in decisions] == [True, False, False, False]
    assert [d.results[1].remaining for d in decisions] == [9, 8, 7, 6]
    after = sample(
        "hardened_ratelimit_decisions_total", {"policy": "shadow", "outcome": "shadow_limited"}
    )
    assert after - before == 3


async def test_lone_shadow_policy_reports_but_never_blocks(backend: Backend) -> None:
    """A request under one shadow policy alone goes through past the limit, counted as such."""
    shadow = Policy("lone-shadow", limit=2, period=60.0, shadow=True)
    labels = {"policy": "lone-shadow", "outcome": "shadow_limited"}
    limiter = backend.limiter()
    before = sample("hardened_ratelimit_decisions_total", labels)
    decisions = [await limiter.check([(shadow, "k")]) for _ in range(4)]
    assert all(d.allowed and d.violated is None for d in decisions)
    assert [d.results[0].allowed for d in decisions] == [True, True, False, False]
    assert [d.results[0].remaining for d in decisions] == [1, 0, 0, 0]
    assert decisions[2].results[0].retry_after > 0
    assert sample("hardened_ratelimit_decisions_total", labels) - before == 2


async def test_bad_input_is_refused(backend: Backend) -> None:
    """Bad policy names, costs and duplicate hits are caller bugs (ValueError)."""
    limiter = backend.limiter()
    with pytest.raises(ValueError, match="name"):
        Policy("Bad Name", limit=1, period=1.0)
    with pytest.raises(ValueError, match="burst"):
        Policy("w", limit=1, period=1.0, algorithm="sliding_window", burst=2)
    with pytest.raises(ValueError, match="cost"):
        await limiter.check([(IP, "k")], cost=0)
    with pytest.raises(ValueError, match="twice"):
        await limiter.check([(IP, "k"), (IP, "k")])
    assert (await limiter.check([])).allowed


@dataclass
class Counting:
    """Passes scripts to a store and counts the round trips."""

    store: AtomicScripts
    calls: int = 0

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        self.calls += 1
        return await self.store.run(script, keys, args)


def outcomes(policy: str) -> dict[str, float]:
    names = ("allowed", "limited", "impossible", "shadow_limited", "shadow_impossible")
    return {
        o: sample("hardened_ratelimit_decisions_total", {"policy": policy, "outcome": o})
        for o in names
    }


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def test_cost_above_capacity_is_impossible_without_a_round_trip(backend: Backend) -> None:
    """A cost above a GCRA burst or a window limit is refused as impossible, no store call made."""
    gcra = Policy("bulk", limit=10, period=60.0, burst=3)
    window = Policy("exports", limit=5, period=3600.0, algorithm="sliding_window")
    counting = Counting(backend.store)
    limiter = RateLimiter(counting, namespace=f"rl-{uuid.uuid4().hex[:8]}")
    before = {p.name: outcomes(p.name) for p in (gcra, window)}
    for policy, cost in ((gcra, 4), (window, 6)):
        for _ in range(3):
            refused = await limiter.check([(policy, "k")], cost=cost)
            assert (refused.allowed, refused.impossible, refused.store_failed) == (
                False,
                True,
                False,
            )
            assert refused.violated is refused.results[0]
            assert refused.results[0].impossible
            assert refused.retry_after == math.inf
    assert counting.calls == 0
    # The refusals consumed nothing: the whole capacity is still there, and taking it works.
    full = [await limiter.check([(p, "k")], cost=p.max_cost) for p in (gcra, window)]
    assert [(d.allowed, d.results[0].remaining) for d in full] == [(True, 0), (True, 0)]
    # A cost that fits but finds no room now is the ordinary, retryable refusal.
    later = await limiter.check([(gcra, "k")], cost=3)
    assert (later.allowed, later.impossible) == (False, False)
    assert 0 < later.retry_after < math.inf
    assert counting.calls == 3
    after = {p.name: outcomes(p.name) for p in (gcra, window)}
    assert delta(before["bulk"], after["bulk"]) == {"impossible": 3, "allowed": 1, "limited": 1}
    assert delta(before["exports"], after["exports"]) == {"impossible": 3, "allowed": 1}


async def test_impossible_policy_among_several_reads_and_takes_nothing(backend: Backend) -> None:
    """One policy that can never admit the cost refuses the request; the others are untouched."""
    counting = Counting(backend.store)
    limiter = RateLimiter(counting, namespace=f"rl-{uuid.uuid4().hex[:8]}")
    hits = [(IP, "1.2.3.4"), (USER, "u1"), (TENANT, "t1")]
    refused = await limiter.check(hits, cost=3)  # USER allows 2 per minute: never 3
    assert (refused.allowed, refused.impossible) == (False, True)
    assert refused.violated is not None
    assert refused.violated.policy is USER
    assert [r.impossible for r in refused.results] == [False, True, False]
    assert counting.calls == 0
    alone = await limiter.check([(IP, "1.2.3.4"), (TENANT, "t1")], cost=3)
    assert [r.remaining for r in alone.results] == [7, 7]


async def test_shadow_policy_reports_an_impossible_cost_without_blocking(backend: Backend) -> None:
    """A shadow policy below the cost reports impossible (never a retry time) and never blocks."""
    shadow = Policy("trial-bulk", limit=2, period=60.0, shadow=True)
    limiter = backend.limiter()
    before = outcomes("trial-bulk")
    both = await limiter.check([(shadow, "k"), (IP, "k")], cost=3)
    alone = await limiter.check([(shadow, "k")], cost=3)
    for decision in (both, alone):
        assert (decision.allowed, decision.impossible, decision.violated) == (True, False, None)
        assert decision.results[0].impossible
        assert decision.results[0].retry_after == math.inf
    assert both.results[1].remaining == 7  # the enforced policy admitted and consumed
    assert delta(before, outcomes("trial-bulk")) == {"shadow_impossible": 2}


# -- round trips and outages ---------------------------------------------------------


async def test_three_policies_in_one_round_trip(redis_url: str) -> None:
    """Each three-policy check is one EVALSHA from us: MONITOR and commandstats agree."""
    prefix, name = f"test:{uuid.uuid4().hex}:", f"rl-test-{uuid.uuid4().hex}"
    pool = BlockingConnectionPool.from_url(redis_url, client_name=name, max_connections=4)
    store = RedisStore(Redis(connection_pool=pool), prefix=prefix, owns_client=True)
    limiter, checks = RateLimiter(store), 10
    hits = [(IP, "1.2.3.4"), (USER, "u1"), (TENANT, "t1")]
    monitor, probe = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        await limiter.check(hits)  # warm up: script loaded, connection open
        ours = {c["addr"].rsplit(":", 1)[1] for c in await probe.client_list() if c["name"] == name}
        marker = uuid.uuid4().hex
        async with monitor.monitor() as lines:
            before = await probe.info("commandstats")
            for _ in range(checks):
                await limiter.check(hits)
            after = await probe.info("commandstats")
            await probe.echo(marker)
            seen = []
            while marker not in (line := await lines.next_command())["command"]:
                seen.append(line)
    finally:
        await monitor.aclose()
        await probe.aclose()
        await _cleanup(store, prefix)
    starts = [i for i, line in enumerate(seen) if line["command"] == "INFO commandstats"]
    window = seen[starts[0] + 1 : starts[-1]]
    mine = [line["command"].split(" ")[:2] for line in window if line["client_port"] in ours]
    assert mine == [["EVALSHA", CHECK.sha]] * checks
    others = sum(
        line["command"].upper().startswith("EVALSHA")
        for line in window
        if line["client_port"] not in ours and line["client_type"] != "lua"
    )
    delta = after["cmdstat_evalsha"]["calls"] - before.get("cmdstat_evalsha", {}).get("calls", 0)
    assert delta == checks + others


async def test_store_down_applies_each_fail_mode() -> None:
    """Redis unreachable: open policies allow, closed ones refuse with Retry-After 1, no raise."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    limiter = RateLimiter(store)
    lenient = Policy("lenient", limit=5, period=60.0, fail_mode="open")
    strict = Policy("strict", limit=5, period=60.0, fail_mode="closed")
    before = sample("hardened_ratelimit_store_errors_total", {})
    try:
        both = await limiter.check([(lenient, "k"), (strict, "k")])
        open_only = await limiter.check([(lenient, "k")])
    finally:
        await store.aclose()
    assert (both.allowed, both.store_failed, both.retry_after) == (False, True, 1.0)
    assert both.violated is not None
    assert both.violated.policy is strict
    assert [r.remaining for r in both.results] == [5, 0]
    assert (open_only.allowed, open_only.store_failed) == (True, True)
    assert sample("hardened_ratelimit_store_errors_total", {}) == before + 2
    failed = {"policy": "strict", "outcome": "failed_closed"}
    assert sample("hardened_ratelimit_decisions_total", failed) >= 1


async def test_impossible_cost_is_refused_even_with_the_store_down() -> None:
    """With Redis unreachable an impossible cost is still refused as impossible, not failed open."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    limiter = RateLimiter(store)
    lenient = Policy("lenient-bulk", limit=5, period=60.0, fail_mode="open")
    before = sample("hardened_ratelimit_store_errors_total", {})
    try:
        decision = await limiter.check([(lenient, "k")], cost=6)
    finally:
        await store.aclose()
    assert (decision.allowed, decision.impossible, decision.store_failed) == (False, True, False)
    assert sample("hardened_ratelimit_store_errors_total", {}) == before
