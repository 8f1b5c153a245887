"""`Throttle`: the rate limiter outside HTTP (sends, job enqueues, socket messages)."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import pytest

from hardened.errors import StoreUnavailable
from hardened.ratelimit import CostExceedsLimit, Policy, QuotaExceeded, RateLimiter, Throttle
from hardened.stores import MemoryStore, RedisStore
from hardened.testing import ManualClock, scratch_redis_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

SMS = Policy("sms", limit=10, period=60, algorithm="sliding_window")


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield RateLimiter(MemoryStore(clock=ManualClock()), namespace="t")
        return
    async with scratch_redis_store(request.getfixturevalue("redis_url")) as store:
        yield RateLimiter(store, namespace="t")


async def test_eleventh_send_in_a_minute_is_refused_per_tenant(limiter: RateLimiter) -> None:
    """Ten concurrent sends pass for tenant A, the 11th is a 429 and tenant B is untouched."""
    throttle = Throttle(limiter, (SMS,))
    sent: list[str] = []

    @throttle.limit(lambda tenant, to: tenant)
    async def send_sms(tenant: str, to: str) -> None:
        sent.append(f"{tenant}:{to}")

    await asyncio.gather(*(send_sms("a", f"+8190{i}") for i in range(10)))
    with pytest.raises(QuotaExceeded) as refused:
        await send_sms("a", "+81999")
    assert refused.value.violated_policy == "sms"
    assert refused.value.status == 429
    await send_sms("b", "+81000")
    assert len(sent) == 11
    assert sent[-1] == "b:+81000"


async def test_check_reports_instead_of_raising(limiter: RateLimiter) -> None:
    """A socket loop can read the decision and drop the message instead of failing."""
    throttle = Throttle(limiter, (Policy("ws", limit=3, period=10),))
    decisions = [await throttle.check("socket-1") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[-1].retry_after > 0


async def test_cost_above_the_limit_is_reported_and_refused(limiter: RateLimiter) -> None:
    """A batch larger than the limit: check says impossible, acquire raises CostExceedsLimit."""
    throttle = Throttle(limiter, (SMS,))
    decision = await throttle.check("a", cost=11)
    assert (decision.allowed, decision.impossible, decision.retry_after) == (False, True, math.inf)
    with pytest.raises(CostExceedsLimit) as refused:
        await throttle.acquire("a", cost=11, what="campaign")
    assert (refused.value.violated_policy, refused.value.max_cost) == ("sms", 10)
    assert refused.value.status == 422
    assert (await throttle.check("a", cost=10)).allowed  # nothing was consumed


async def test_keys_must_match_the_policies(limiter: RateLimiter) -> None:
    """One key per policy, or a clear error before anything is consumed."""
    throttle = Throttle(limiter, (SMS, Policy("user", limit=5, period=60)))
    with pytest.raises(ValueError, match="one key per policy"):
        await throttle.acquire("tenant-only")
    with pytest.raises(ValueError, match="at least one policy"):
        Throttle(limiter, ())


async def test_fail_closed_throttle_without_store_is_unavailable() -> None:
    """A fail-closed send limit with Redis down refuses (503), a fail-open one lets it through."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        limiter = RateLimiter(store)
        closed = Throttle(limiter, (Policy("sms", limit=10, period=60, fail_mode="closed"),))
        with pytest.raises(StoreUnavailable):
            await closed.acquire("a")
        opened = Throttle(limiter, (Policy("jobs", limit=10, period=60),))
        assert await opened.acquire("a") == {}
    finally:
        await store.aclose()
