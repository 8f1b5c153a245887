"""The governor over real sockets: retries, deadlines, the breaker, bulkheads, trace headers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING

import httpx
import pytest
import stamina
from fake_provider import FakeProvider, running_provider

from hardened.logging import correlation_scope
from hardened.observability import Health
from hardened.outbound import (
    AttemptTimedOut,
    BreakerConfig,
    BreakerOpen,
    BulkheadConfig,
    BulkheadFull,
    DeadlineExceeded,
    GovernedTransport,
    Governor,
    GovernorConfig,
    Governors,
    LaneConfig,
    RetryConfig,
    deadline,
    parse_retry_after,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class Clock:
    """A monotonic clock the test moves (the breaker's windows and open periods)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    async with running_provider() as fake:
        yield fake


def _config(**changes: object) -> GovernorConfig:
    base = GovernorConfig(
        "fake",
        lane=LaneConfig(BulkheadConfig(max_concurrent=5, max_queue=50, max_wait=5), 5.0, 30.0),
        retry=RetryConfig(attempts=3, base=0.01, cap=0.05),
        breaker=BreakerConfig(minimum_calls=10, failure_rate=0.5, open_for=30, half_open_probes=3),
        cap=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _client(governor: Governor, fake: FakeProvider) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fake.url, transport=GovernedTransport(governor))


@pytest.mark.anyio
async def test_breaker_opens_at_sixty_percent_failures_and_shields_the_provider(
    provider: FakeProvider,
) -> None:
    """At 60 % failures the breaker opens after the minimum calls; then nothing reaches the fake."""
    clock = Clock()
    governor = Governor(_config(retry=RetryConfig(attempts=1)), clock=clock)
    provider.mode = "flaky"
    async with _client(governor, provider) as client:
        statuses = [(await client.get("/call")).status_code for _ in range(10)]
        assert statuses.count(503) == 6
        assert governor.breaker.state == "open"
        for _ in range(20):
            with pytest.raises(BreakerOpen) as refused:
                await client.get("/call")
        assert refused.value.retry_after is not None
        assert provider.calls == 10

        provider.mode = "ok"
        clock.advance(30)
        assert governor.breaker.state == "half_open"
        probes = [await client.get("/call") for _ in range(3)]
        assert [p.status_code for p in probes] == [200, 200, 200]
        assert governor.breaker.state == "closed"
        assert provider.calls == 13


@pytest.mark.anyio
async def test_a_hanging_probe_times_out_and_the_breaker_does_not_wedge_half_open(
    provider: FakeProvider,
) -> None:
    """A hanging probe is cut by the attempt timeout, counts as failed, and reopens the breaker."""
    clock = Clock()
    lane = LaneConfig(BulkheadConfig(max_concurrent=5), timeout=0.2, deadline=30.0)
    config = _config(
        lane=lane,
        retry=RetryConfig(attempts=1),
        breaker=BreakerConfig(minimum_calls=4, failure_rate=0.5, open_for=30, half_open_probes=1),
    )
    governor = Governor(config, clock=clock)
    provider.mode = "fail"
    async with _client(governor, provider) as client:
        for _ in range(4):
            await client.get("/call")
        assert governor.breaker.state == "open"
        provider.mode = "hang"
        clock.advance(30)
        with pytest.raises(AttemptTimedOut):
            await client.get("/call")
        assert governor.breaker.state == "open"  # the probe failed: open again, not stuck half-open
        provider.mode = "ok"
        clock.advance(30)
        assert (await client.get("/call")).status_code == 200
        assert governor.breaker.state == "closed"


@pytest.mark.anyio
async def test_a_post_without_an_idempotency_key_is_never_retried(provider: FakeProvider) -> None:
    """A failing POST is sent once; with an Idempotency-Key or as a GET it is retried."""
    governor = Governor(_config())
    provider.mode = "fail"
    async with _client(governor, provider) as client:
        assert (await client.post("/call", json={"a": 1})).status_code == 503
        assert provider.calls == 1
        provider.reset_counts()
        keyed = await client.post("/call", json={"a": 1}, headers={"idempotency-key": "k1"})
        assert keyed.status_code == 503
        assert provider.calls == 3
        provider.reset_counts()
        assert (await client.get("/call")).status_code == 503
        assert provider.calls == 3


@pytest.mark.anyio
async def test_retry_after_is_waited_for_at_least_and_refused_when_the_deadline_is_nearer(
    provider: FakeProvider,
) -> None:
    """429 with Retry-After: 2 is retried no sooner than 2 s on, or not at all with < 2 s left."""
    governor = Governor(_config(retry=RetryConfig(attempts=2, base=0.01, cap=0.05)))
    provider.mode, provider.status, provider.retry_after = "status", 429, "2"
    async with _client(governor, provider) as client:
        with deadline(1.5):
            assert (await client.get("/call")).status_code == 429
        assert provider.calls == 1
        provider.reset_counts()
        assert (await client.get("/call")).status_code == 429
        assert provider.calls == 2
        (first, _), (second, _) = provider.arrivals
        assert second - first >= 2.0


@pytest.mark.anyio
async def test_a_call_whose_deadline_is_shorter_than_the_next_backoff_is_not_retried(
    provider: FakeProvider,
) -> None:
    """With a 1 s backoff and 0.5 s of deadline left, the failed attempt is the only one."""
    retry = RetryConfig(attempts=3, base=1.0, cap=1.0, jitter=0.0)
    governor = Governor(_config(retry=retry))
    provider.mode = "fail"
    async with _client(governor, provider) as client:
        with deadline(0.5):
            assert (await client.get("/call")).status_code == 503
        assert provider.calls == 1


@pytest.mark.anyio
async def test_http_dates_in_retry_after_are_honoured(provider: FakeProvider) -> None:
    """Retry-After as an HTTP-date two seconds ahead is parsed as about two seconds."""
    now = datetime.now(UTC).replace(microsecond=0)
    header = format_datetime(now + timedelta(seconds=2), usegmt=True)
    assert parse_retry_after(header, now=now) == 2.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None


@pytest.mark.anyio
async def test_the_retry_budget_keeps_retries_to_a_share_of_calls(provider: FakeProvider) -> None:
    """50 failing GETs with 3 attempts each make at most reserve + 20 % of calls in retries."""
    retry = RetryConfig(attempts=3, base=0.001, cap=0.002, budget_ratio=0.2, budget_reserve=2)
    breaker = BreakerConfig(mode="disabled")
    governor = Governor(_config(retry=retry, breaker=breaker))
    provider.mode = "fail"
    async with _client(governor, provider) as client:
        for _ in range(50):
            await client.get("/call")
    retries = provider.calls - 50
    assert 0 < retries <= 2 + 0.2 * 50
    assert governor.budget.spent == retries


@pytest.mark.anyio
async def test_cancellation_is_never_retried_nor_counted_by_the_breaker(
    provider: FakeProvider,
) -> None:
    """A caller cancelled mid-attempt gets CancelledError; one request sent, breaker counts none."""
    governor = Governor(_config())
    provider.mode = "hang"
    async with _client(governor, provider) as client:
        task = asyncio.create_task(client.get("/call"))
        while provider.calls == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert provider.calls == 1
    assert governor.breaker.snapshot()["calls"] == 0
    assert governor.lane().in_flight == 0


@pytest.mark.anyio
async def test_a_full_bulkhead_refuses_with_a_typed_503(provider: FakeProvider) -> None:
    """Beyond max_concurrent + max_queue, calls are refused with BulkheadFull (nothing sent)."""
    lane = LaneConfig(BulkheadConfig(max_concurrent=2, max_queue=3, max_wait=30), 30.0, 60.0)
    governor = Governor(_config(lane=lane))
    provider.mode = "hang"
    async with _client(governor, provider) as client:
        held = [asyncio.create_task(client.get("/call")) for _ in range(5)]
        while governor.lane().queued < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(BulkheadFull) as refused:
            await client.get("/call")
        assert refused.value.status == 503
        assert refused.value.code == "outbound.bulkhead_full"
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    assert provider.calls == 2
    assert governor.lane().in_flight == 0
    assert governor.lane().queued == 0


@pytest.mark.anyio
async def test_the_long_running_lane_has_its_own_bulkhead_and_timeout(
    provider: FakeProvider,
) -> None:
    """A long-running lane call outlasts the default lane's timeout, on its own permits."""
    config = _config(
        lane=LaneConfig(BulkheadConfig(max_concurrent=1), timeout=0.1, deadline=5.0),
        long_running=LaneConfig(BulkheadConfig(max_concurrent=2), timeout=30.0, deadline=30.0),
        retry=RetryConfig(attempts=1),
    )
    governor = Governor(config)
    provider.delay = 0.3
    async with _client(governor, provider) as client:
        with pytest.raises(AttemptTimedOut):
            await client.get("/call")
        slow = await client.get("/call", extensions={"hardened.lane": "long_running"})
        assert slow.status_code == 200
    assert governor.lane("long_running").in_flight == 0


@pytest.mark.anyio
async def test_the_deadline_cuts_an_attempt_and_is_its_own_refusal(provider: FakeProvider) -> None:
    """An attempt still running when the call's deadline passes ends in DeadlineExceeded."""
    governor = Governor(_config())
    provider.mode = "hang"
    async with _client(governor, provider) as client:
        with deadline(0.2), pytest.raises(DeadlineExceeded) as refused:
            await client.get("/call")
    assert refused.value.code == "outbound.deadline_exceeded"
    assert provider.calls == 1


@pytest.mark.anyio
async def test_trace_context_and_correlation_id_travel_on_every_request(
    provider: FakeProvider,
) -> None:
    """Each outbound request carries traceparent (trace id = correlation id) and X-Request-ID."""
    governor = Governor(_config())
    async with _client(governor, provider) as client:
        with correlation_scope("0123456789abcdef0123456789abcdef"):
            await client.get("/call")
            await client.get("/call")
    first, second = provider.headers
    assert first["x-request-id"] == "0123456789abcdef0123456789abcdef"
    version, trace, span, flags = first["traceparent"].split("-")
    assert (version, trace, flags) == ("00", "0123456789abcdef0123456789abcdef", "01")
    assert len(span) == 16
    assert second["traceparent"].split("-")[2] != span


@pytest.mark.anyio
async def test_connection_resets_are_retried_for_idempotent_calls(provider: FakeProvider) -> None:
    """A reset GET is retried up to the attempts, then the transport error surfaces."""
    governor = Governor(_config())
    provider.mode = "reset"
    async with _client(governor, provider) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/call")
    assert provider.calls == 3


@pytest.mark.anyio
async def test_stamina_testing_mode_turns_the_retries_off(provider: FakeProvider) -> None:
    """Retries run on stamina: under stamina.set_testing(attempts=1) a failing GET is sent once."""
    governor = Governor(_config())
    provider.mode = "fail"
    async with _client(governor, provider) as client:
        with stamina.set_testing(True, attempts=1):
            assert (await client.get("/call")).status_code == 503
    assert provider.calls == 1


@pytest.mark.anyio
async def test_an_open_breaker_makes_readiness_degraded(provider: FakeProvider) -> None:
    """Readiness reports the dependency failing (degraded, still 200) while its breaker is open."""
    governor = Governor(_config())
    health = Health([governor.health_check()])
    assert (await health.ready()).status == "ok"
    governor.breaker.force_open()
    ready = await health.ready()
    assert ready.status == "degraded"
    assert ready.http_status == 200
    governor.breaker.reset()
    assert (await health.ready()).status == "ok"


def test_dynamic_targets_are_bounded_and_reused() -> None:
    """Governors for many dynamic targets stay within max_dynamic; a target keeps its governor."""
    governors = Governors(max_dynamic=3)
    template = _config()
    first = governors.for_target("https://a.example/hook", template)
    assert governors.for_target("https://a.example/hook", template) is first
    for n in range(10):
        governors.for_target(f"https://t{n}.example/hook", template)
    assert governors.dynamic_count == 3
    assert governors.for_target("https://a.example/hook", template) is not first


def test_configuration_comes_from_the_seed_variable_names() -> None:
    """<DEP>_QUEUE_* variables set the lanes, cap and token timings; a bad one names itself."""
    env = {
        "SF_QUEUE_CONCURRENCY": "12",
        "SF_QUEUE_INTERVAL_CAP": "400",
        "SF_QUEUE_TIMEOUT_MS": "45000",
        "SF_QUEUE_LONG_RUNNING_CONCURRENCY": "22",
        "SF_QUEUE_LONG_RUNNING_TIMEOUT_MS": "600000",
        "SF_AUTH_TIMEOUT_MS": "45000",
        "SF_TOKEN_TTL_MS": "720000",
        "SF_TOKEN_REFRESH_BUFFER_MS": "60000",
    }
    config = GovernorConfig.from_env("sf", env)
    assert config.lane.bulkhead.max_concurrent == 12
    assert config.lane.timeout == 45.0
    assert config.cap is not None
    assert (config.cap.calls, config.cap.period) == (400, 60.0)
    assert (config.long_running.bulkhead.max_concurrent, config.long_running.timeout) == (22, 600.0)
    assert (config.token.auth_timeout, config.token.ttl, config.token.refresh_buffer) == (
        45.0,
        720.0,
        60.0,
    )
    assert config.describe()["SF_QUEUE_INTERVAL_CAP"] == 400
    assert GovernorConfig.from_env("sf", {"SF_QUEUE_INTERVAL_CAP": "0"}).cap is None
    with pytest.raises(ValueError, match="SF_QUEUE_CONCURRENCY"):
        GovernorConfig.from_env("sf", {"SF_QUEUE_CONCURRENCY": "many"})
    with pytest.raises(ValueError, match="SF_"):
        GovernorConfig.from_env("sf", {"SF_QUEUE_CONCURRENCY": "0"})
