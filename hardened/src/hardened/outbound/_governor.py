"""The governor: deadline → retry → breaker → cap → bulkhead → attempt timeout, per call.

Only the failure path touches stamina: the first attempt runs directly, and
a retryable outcome enters ``stamina.retry_context`` with that outcome
re-raised as its first attempt, so stamina schedules every retry (its
testing mode and instrumentation apply) while `_Retry` decides each wait
(full jitter or ``Retry-After``) and whether there is one at all (idempotent,
deadline, budget).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import stamina

from hardened.observability import check
from hardened.outbound import _metrics
from hardened.outbound._breaker import CircuitBreaker, Permit
from hardened.outbound._bulkhead import Bulkhead
from hardened.outbound._cap import IntervalCap
from hardened.outbound._errors import (
    AttemptTimedOut,
    BreakerOpen,
    DeadlineExceeded,
    OutboundRefused,
)
from hardened.outbound._retry import RetryBudget, ambient_deadline, backoff
from hardened.stores import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hardened.observability import HealthCheck
    from hardened.outbound._config import GovernorConfig, LaneConfig
    from hardened.stores import AtomicScripts

__all__ = ["Governor", "Verdict"]

T = TypeVar("T")
LaneName = Literal["default", "long_running"]

#: The least time worth starting an attempt with; a retry that would leave less is not made.
_MIN_ATTEMPT = 0.01


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt's result means: a failure to the breaker, worth retrying, and when."""

    failed: bool = False
    retryable: bool = False
    retry_after: float | None = None


_OK = Verdict()


class _Retry(Exception, Generic[T]):
    """A retryable outcome travelling through stamina: a result or the error it stands for."""

    def __init__(
        self,
        result: Any = None,
        error: BaseException | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.result = result
        self.error = error
        self.retry_after = retry_after

    def give_up(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One call's fixed parts, shared by its attempts."""

    fn: Callable[[], Awaitable[T]]
    lane: _Lane
    end: float
    classify: Callable[[T], Verdict] | None
    retryable: tuple[type[BaseException], ...]


@dataclass(slots=True)
class _Lane:
    config: LaneConfig
    bulkhead: Bulkhead


class Governor:
    """One dependency's guard; share one per dependency per process (see `Governors`).

    ``store`` holds the shared interval cap (a `RedisStore` for several
    processes; a private `MemoryStore` when None). ``key`` names the
    breaker's and cap's state when several governors share one config
    name (dynamic targets); metrics are labelled by ``config.name`` only.
    """

    def __init__(
        self,
        config: GovernorConfig,
        *,
        store: AtomicScripts | None = None,
        key: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.name = config.name
        self.key = key or config.name
        self._clock = clock
        self._metrics = _metrics.bind(config.name)
        self.breaker = CircuitBreaker(
            self.key, config.breaker, clock=clock, on_transition=self._metrics.transition
        )
        cap = config.cap
        self.cap = None if cap is None else IntervalCap(self.key, cap, store or MemoryStore())
        self._lanes: dict[str, _Lane] = {}
        for lane_name, lane in (("default", config.lane), ("long_running", config.long_running)):
            bulkhead = Bulkhead(
                self.key, lane.bulkhead, on_wait=self._metrics.queue_wait(lane_name)
            )
            if self.key == self.name:  # a dynamic target's lanes are not gauges
                self._metrics.watch(lane_name, bulkhead)
            self._lanes[lane_name] = _Lane(lane, bulkhead)
        self.budget = RetryBudget(config.retry.budget_ratio, config.retry.budget_reserve)
        self._retry_on: tuple[type[BaseException], ...] = (AttemptTimedOut, *config.retry.on)

    def lane(self, name: LaneName = "default") -> Bulkhead:
        """The bulkhead of a lane (its counts: in flight, queued)."""
        return self._lanes[name].bulkhead

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        lane: LaneName = "default",
        deadline: float | None = None,
        classify: Callable[[T], Verdict] | None = None,
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Run ``fn`` under every guard; retried only when ``idempotent``.

        ``classify`` judges a result (an HTTP response: 503 is a retryable
        failure); exceptions are failures, retryable when they are of
        ``retry_on``, the config's ``retry.on`` or an attempt timeout.
        Cancellation is never retried and never counted as a failure. When
        retries run out, the last result is returned or its error raised.
        """
        try:
            chosen = self._lanes[lane]
        except KeyError:
            raise ValueError(f"unknown lane {lane!r}") from None
        start = self._clock()
        end = start + chosen.config.deadline
        if deadline is not None:
            end = min(end, start + deadline)
        outer = ambient_deadline()
        if outer is not None:
            end = min(end, outer)
        self.budget.deposit()
        retryable = (*self._retry_on, *retry_on) if retry_on else self._retry_on
        plan = _Call(fn, chosen, end, classify, retryable)
        try:
            return await self._attempt(plan)
        except _Retry as first:
            if not idempotent or self.config.retry.attempts < 2:
                return first.give_up()  # type: ignore[no-any-return]
            return await self._retry(first, plan)

    async def _retry(self, first: _Retry[T], plan: _Call[T]) -> T:
        retry = self.config.retry
        made = 0

        def wait_for(exc: Exception) -> bool | float:
            nonlocal made
            if not isinstance(exc, _Retry) or made + 1 >= retry.attempts:
                return False  # stamina asks before it checks its own attempt limit
            made += 1
            wait = backoff(retry, made)
            if exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
            if wait + _MIN_ATTEMPT >= plan.end - self._clock():
                self._metrics.reject("deadline")
                return False
            if not self.budget.withdraw():
                self._metrics.reject("retry_budget")
                return False
            self._metrics.retried()
            return wait

        pending: _Retry[T] | None = first
        try:
            async for attempt in stamina.retry_context(
                on=wait_for, attempts=retry.attempts, timeout=None, wait_max=retry.cap
            ):
                with attempt:
                    if pending is None:
                        return await self._attempt(plan)
                    already, pending = pending, None
                    raise already
        except _Retry as last:
            return last.give_up()  # type: ignore[no-any-return]
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, plan: _Call[T]) -> T:
        left = plan.end - self._clock()
        if left <= 0:
            self._metrics.reject("deadline")
            raise DeadlineExceeded(dependency=self.name)
        try:
            permit = self.breaker.acquire()
        except BreakerOpen:
            self._metrics.reject("breaker_open")
            raise
        try:
            await self._admit(plan, left)
            try:
                result, took = await self._run(plan, permit)
            finally:
                plan.lane.bulkhead.release()
            self._metrics.attempt(took)
            verdict = _OK if plan.classify is None else plan.classify(result)
            permit.record(took, failed=verdict.failed)
        except BaseException:
            permit.abandon()  # a no-op once recorded; else a probe's permit comes back
            raise
        if verdict.retryable:
            raise _Retry(result=result, retry_after=verdict.retry_after)
        return result

    async def _admit(self, plan: _Call[T], left: float) -> None:
        """A slot of the shared cap, then a permit of the lane's bulkhead (held on return)."""
        if self.cap is not None:
            try:
                await self.cap.admit(min(self.cap.config.max_wait, left))
            except OutboundRefused:
                self._metrics.reject("cap")
                raise
            left = plan.end - self._clock()
        try:
            await plan.lane.bulkhead.acquire(left)
        except OutboundRefused:
            self._metrics.reject("bulkhead_full")
            raise

    async def _run(self, plan: _Call[T], permit: Permit) -> tuple[T, float]:
        """One attempt under its timeout; failures are recorded here, a success by the caller."""
        clock = self._clock
        timeout = plan.lane.config.timeout
        began = clock()
        cut_by_deadline = plan.end - began < timeout
        try:
            async with asyncio.timeout(min(timeout, plan.end - began)) as scope:
                result = await plan.fn()
        except TimeoutError:
            if not scope.expired():
                raise
            permit.record(clock() - began, failed=True)
            self._metrics.timed_out()
            if cut_by_deadline:
                raise DeadlineExceeded(dependency=self.name) from None
            raise _Retry(error=AttemptTimedOut(dependency=self.name)) from None
        except Exception as exc:
            permit.record(clock() - began, failed=True)
            if isinstance(exc, plan.retryable):
                raise _Retry(error=exc) from None
            raise
        return result, clock() - began

    def health_check(self) -> HealthCheck:
        """A non-critical readiness check failing while the breaker is open (degraded)."""

        async def probe() -> None:
            state = self.breaker.state
            if state in ("open", "forced_open"):
                raise BreakerOpen(dependency=self.name, retry_after=self.breaker.retry_after())

        return check(f"outbound.{self.name}", probe, critical=False)
