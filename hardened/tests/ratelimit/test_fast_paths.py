"""The hand-unrolled single-hit paths agree with the general ones, decision by decision.

`RateLimiter.check` unrolls the one-hit case (the hot path), and the script's
Python twin `_check` unrolls one GCRA hit. Both were written for speed, so
each is replayed here against the general path it short-cuts on the same
random sequences (seeded: a failure names its seed), on a fake clock.
"""

from __future__ import annotations

import random

import pytest

from hardened.ratelimit._core import Policy, RateLimiter, _check, _check_all
from hardened.stores import MemoryState, MemoryStore
from hardened.testing import ManualClock

pytestmark = pytest.mark.anyio

POLICIES = (
    Policy("tight", limit=5, period=10.0),
    Policy("burst", limit=100, period=60.0, burst=7),
    Policy("window", limit=4, period=2.0, algorithm="sliding_window"),
    Policy("shadowed", limit=3, period=5.0, shadow=True),
)


@pytest.mark.parametrize("seed", range(6))
async def test_unrolled_check_decides_like_the_general_path(seed: int) -> None:
    """RateLimiter.check on one hit returns what _check_many returns for it, every time."""
    rng = random.Random(seed)
    clock = ManualClock()
    store = MemoryStore(clock=clock)  # one store, so one epoch; namespaces keep the two apart
    fast = RateLimiter(store, namespace="fast")
    general = RateLimiter(store, namespace="general")
    for step in range(400):
        policy = rng.choice(POLICIES)
        key = rng.choice(("a", "b", "tenant:{x}%"))  # one key needs escaping
        cost = rng.choice((1, 1, 1, 2, 3))
        expected = await general._check_many([(policy, key)], cost)
        assert await fast.check([(policy, key)], cost=cost) == expected, (seed, step)
        clock.now += rng.choice((0.0, 0.0, 0.050003, 0.4, 1.5, 7.000211))


@pytest.mark.parametrize("seed", range(3))
async def test_unrolled_check_refuses_impossible_costs_like_the_general_path(seed: int) -> None:
    """Costs at and above each policy's capacity: the unrolled check equals _check_many."""
    rng = random.Random(seed)
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    fast = RateLimiter(store, namespace="fast")
    general = RateLimiter(store, namespace="general")
    impossible = 0
    for step in range(200):
        policy = rng.choice(POLICIES)
        cost = rng.choice((1, policy.max_cost, policy.max_cost + 1, 50))
        expected = await general._check_many([(policy, "k")], cost)
        got = await fast.check([(policy, "k")], cost=cost)
        assert got == expected, (seed, step)
        impossible += got.results[0].impossible
        clock.now += rng.choice((0.0, 0.4, 7.000211))
    assert impossible > 0


@pytest.mark.parametrize("seed", range(6))
def test_unrolled_twin_matches_the_general_twin(seed: int) -> None:
    """One GCRA hit through _check's unrolled branch: same reply, value and TTL as _check_all."""
    rng = random.Random(seed)
    clock = ManualClock(1000.000123)  # off the millisecond grid: TTL rounding shows
    fast, general = MemoryState(clock), MemoryState(clock)
    key = "rl:{t}:k"
    for step in range(400):
        cost, shadow = rng.choice((1, 1, 2, 5)), rng.random() < 0.2
        limit, period_us = rng.choice(((5, 10_000_003), (100, 60_000_701)))
        a = period_us // limit
        b = a * rng.choice((limit, 7))
        args = [b"%d" % cost, b"1", b"1" if shadow else b"0", b"%d" % limit, b"%d" % a, b"%d" % b]
        reply = _check(fast, [key], args, clock())
        now_us = round(clock() * 1_000_000)
        assert reply == _check_all(general, [key], args, now_us, cost), (seed, step)
        assert (fast.get(key), fast.pttl(key)) == (general.get(key), general.pttl(key))
        clock.now += rng.choice((0.0, 0.3007, 1.9, 12.000041))
