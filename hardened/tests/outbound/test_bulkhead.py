"""The bulkhead: its fast path, bounded FIFO queue, and exact counts under cancellation races.

Races are built inside one loop iteration (no awaits between the steps), so a
waiter can be handed a permit and cancelled before it resumes; every test
counts permits afterwards instead of measuring time.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardened.outbound import Bulkhead, BulkheadConfig, BulkheadFull

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine
    from typing import Any

pytestmark = pytest.mark.anyio

#: Long enough never to expire during a test: a wait that ends early is a bug.
FOREVER = 3600.0
#: Loop iterations that let every woken or cancelled task run to its next await.
SETTLE = 6


async def settle() -> None:
    """Let the loop run every ready task (handed and cancelled waiters resume in one step)."""
    for _ in range(SETTLE):
        await asyncio.sleep(0)


async def settle_until(agreed: Callable[[], bool], limit: int = 5000) -> None:
    """Run the loop until ``agreed()`` holds at a moment between steps (chains of hand-offs)."""
    for _ in range(limit):
        await asyncio.sleep(0)
        if agreed():
            return
    raise AssertionError("the counts never agreed with the callers")


def bulkhead(concurrent: int = 15, queue: int = 1000, wait: float = FOREVER) -> Bulkhead:
    return Bulkhead("crm", BulkheadConfig(concurrent, queue, wait))


def assert_consistent(bh: Bulkhead) -> None:
    """The invariants that hold at every point the loop is not inside the bulkhead."""
    limit = bh.config.max_concurrent
    assert 0 <= bh.in_flight <= limit
    assert bh.in_flight + bh.available == limit
    if bh.queued:  # nobody waits while a permit lies idle
        assert bh.available == 0


def completes_without_suspending(coro: Coroutine[Any, Any, None]) -> bool:
    """Step a coroutine once by hand: True if it returned without awaiting anything."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


@pytest.fixture(autouse=True)
async def no_loop_errors() -> AsyncIterator[None]:
    """Fail the test on any error a loop callback (a timer, a hand-off) raised and only logged."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        yield
    finally:
        loop.set_exception_handler(previous)
    assert errors == []


@pytest.fixture
def waits() -> list[float]:
    """The seconds every queued acquire reported through ``on_wait``."""
    return []


@pytest.fixture
def timed(waits: list[float]) -> Bulkhead:
    """Two permits, a queue of three, reporting waits into ``waits``."""
    return Bulkhead("crm", BulkheadConfig(2, 3, FOREVER), on_wait=waits.append)


# --- fast path, queue bound, timeouts ------------------------------------------------------


async def test_a_free_permit_is_taken_without_awaiting_anything(
    timed: Bulkhead, waits: list[float]
) -> None:
    """With a free permit and nobody queued, acquire returns on its first step, counted at once."""
    assert completes_without_suspending(timed.acquire())
    assert (timed.in_flight, timed.available, timed.queued) == (1, 1, 0)
    assert completes_without_suspending(timed.acquire(timeout=0))
    assert (timed.in_flight, timed.available) == (2, 0)
    assert not completes_without_suspending(timed.acquire())  # none left: it would queue
    assert (timed.in_flight, timed.queued) == (2, 0)  # the closed attempt left nothing behind
    assert waits == []  # the fast path is no queue wait


async def test_a_full_queue_refuses_at_once() -> None:
    """With every permit taken and max_queue waiting, the next acquire raises on its first step."""
    bh = bulkhead(concurrent=1, queue=2)
    await bh.acquire()
    waiting = [asyncio.create_task(bh.acquire()) for _ in range(2)]
    await settle()
    assert bh.queued == 2
    coro = bh.acquire()
    with pytest.raises(BulkheadFull) as refused:
        coro.send(None)
    assert refused.value.dependency == "crm"
    assert (bh.in_flight, bh.queued) == (1, 2)
    for _ in range(3):
        bh.release()
        await settle()
    await asyncio.gather(*waiting)
    assert (bh.in_flight, bh.queued, bh.available) == (0, 0, 1)


async def test_a_queue_of_zero_refuses_whenever_no_permit_is_free() -> None:
    """max_queue=0 means no waiting at all: the fast path or an immediate BulkheadFull."""
    bh = bulkhead(concurrent=1, queue=0)
    await bh.acquire()
    with pytest.raises(BulkheadFull):
        bh.acquire().send(None)
    assert (bh.in_flight, bh.queued) == (1, 0)


async def test_a_caller_without_time_left_is_refused_instead_of_queued() -> None:
    """A timeout of zero or less (deadline passed) refuses at once when it would have to wait."""
    bh = bulkhead(concurrent=1)
    await bh.acquire()
    for left in (0.0, -1.0):
        with pytest.raises(BulkheadFull):
            bh.acquire(timeout=left).send(None)
    assert (bh.in_flight, bh.queued) == (1, 0)


async def test_a_wait_past_max_wait_is_refused_and_leaves_the_queue(waits: list[float]) -> None:
    """A queued acquire that gets no permit within max_wait raises BulkheadFull, queue emptied."""
    bh = Bulkhead("crm", BulkheadConfig(1, 10, 0.01), on_wait=waits.append)
    await bh.acquire()
    results = await asyncio.gather(*(bh.acquire() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, BulkheadFull) for r in results)
    assert (bh.in_flight, bh.queued) == (1, 0)
    bh.release()
    assert (bh.in_flight, bh.available) == (0, 1)
    assert waits == []  # refusals are not queue waits


async def test_the_callers_timeout_bounds_the_wait_below_max_wait() -> None:
    """The wait is min(max_wait, timeout): a short timeout refuses long before max_wait."""
    bh = bulkhead(concurrent=1, wait=FOREVER)
    await bh.acquire()
    async with asyncio.timeout(60):  # only a guard against hanging: FOREVER would hang
        with pytest.raises(BulkheadFull):
            await bh.acquire(timeout=0.01)
    assert (bh.in_flight, bh.queued) == (1, 0)


async def test_on_wait_is_reported_once_per_queued_grant(
    timed: Bulkhead, waits: list[float]
) -> None:
    """Each queued acquire that gets a permit reports its wait once; fast paths report nothing."""
    await timed.acquire()
    await timed.acquire()
    tasks = [asyncio.create_task(timed.acquire()) for _ in range(3)]
    await settle()
    for _ in range(3):
        timed.release()
    await asyncio.gather(*tasks)
    assert len(waits) == 3
    assert all(w >= 0 for w in waits)
    assert (timed.in_flight, timed.queued) == (2, 0)


async def test_a_failing_on_wait_gives_the_permit_back() -> None:
    """If the wait callback raises, the acquire fails and the permit it got is released."""

    def broken(seconds: float) -> None:
        raise ValueError(seconds)

    bh = Bulkhead("crm", BulkheadConfig(1, 10, FOREVER), on_wait=broken)
    await bh.acquire()
    task = asyncio.create_task(bh.acquire())
    await settle()
    bh.release()
    with pytest.raises(ValueError, match=r"\d"):
        await task
    assert (bh.in_flight, bh.queued, bh.available) == (0, 0, 1)


async def test_release_without_a_permit_is_an_error_that_changes_nothing() -> None:
    """A release with nothing in flight raises instead of minting a permit."""
    bh = bulkhead(concurrent=2)
    with pytest.raises(RuntimeError, match="without a held permit"):
        bh.release()
    assert (bh.in_flight, bh.available) == (0, 2)


async def test_an_exception_thrown_into_a_waiter_leaves_no_dead_entry() -> None:
    """A non-cancellation exception thrown into a queued acquire removes it from the queue."""
    bh = bulkhead(concurrent=1)
    await bh.acquire()
    coro = bh.acquire()
    coro.send(None)  # now queued, suspended on its future
    assert bh.queued == 1
    with pytest.raises(KeyError):
        coro.throw(KeyError("boom"))
    assert (bh.in_flight, bh.queued) == (1, 0)
    bh.release()
    assert bh.available == 1


# --- order -------------------------------------------------------------------------------


async def test_grants_follow_arrival_order() -> None:
    """Queued callers get permits strictly first come, first served."""
    bh = bulkhead(concurrent=1)
    await bh.acquire()
    order: list[int] = []

    async def caller(i: int) -> None:
        await bh.acquire()
        order.append(i)
        bh.release()

    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(caller(i)))
        await asyncio.sleep(0)  # each one queued before the next is created
    assert bh.queued == 20
    bh.release()
    await asyncio.gather(*tasks)
    assert order == list(range(20))
    assert (bh.in_flight, bh.queued, bh.available) == (0, 0, 1)


async def test_a_permit_handed_to_a_waiter_cannot_be_taken_by_a_newcomer() -> None:
    """After release() hands the permit to a waiter, a new acquire queues behind it (no barging)."""
    bh = bulkhead(concurrent=1)
    await bh.acquire()
    first = asyncio.create_task(bh.acquire())
    await settle()
    bh.release()  # handed to `first`, which has not resumed yet
    assert (bh.in_flight, bh.available, bh.queued) == (1, 0, 0)
    newcomer = bh.acquire()
    assert not completes_without_suspending(newcomer)
    assert (bh.in_flight, bh.queued) == (1, 0)  # the closed newcomer left nothing behind
    await first
    assert bh.in_flight == 1


# --- cancellation races ------------------------------------------------------------------


@dataclass
class Crowd:
    """``size`` callers queued in order on a bulkhead whose permits the test holds."""

    bh: Bulkhead
    tasks: list[asyncio.Task[None]]
    holding: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)
    handed: list[int] = field(default_factory=list)  # who each release handed a permit to
    held_by_test: int = 0
    released_by_test: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> int | None:
        """Release one of the test's permits; the caller it was handed to (FIFO), if any."""
        if not self.held_by_test:
            return None
        self.held_by_test -= 1
        self.released_by_test += 1
        self.bh.release()
        nxt = next(
            (i for i in range(len(self.tasks)) if i not in self.cancelled and i not in self.handed),
            None,
        )
        if nxt is not None:
            self.handed.append(nxt)
            assert self.bh.available == 0  # handed on, not freed: in_flight unchanged
        return nxt

    def cancel(self, i: int) -> None:
        self.cancelled.add(i)
        self.tasks[i].cancel()

    def expected_holders(self) -> set[int]:
        """FIFO: the first ``released`` callers that were never cancelled hold the permits."""
        live = [i for i in range(len(self.tasks)) if i not in self.cancelled]
        return set(live[: self.released_by_test])

    async def drain(self) -> None:
        """Let every holder finish and give the test's permits back; then nothing is left."""
        self.gate.set()
        while self.held_by_test:
            self.release()
        async with asyncio.timeout(60):  # a guard against a lost permit hanging the test
            await asyncio.gather(*self.tasks, return_exceptions=True)
        bh = self.bh
        assert (bh.in_flight, bh.queued) == (0, 0)
        assert bh.available == bh.config.max_concurrent


async def crowd(bh: Bulkhead, size: int) -> Crowd:
    """Take every permit for the test, then queue ``size`` callers in order."""
    permits = bh.config.max_concurrent
    for _ in range(permits):
        await bh.acquire()
    c = Crowd(bh, [], held_by_test=permits)

    async def caller(i: int) -> None:
        await bh.acquire()
        c.holding.add(i)
        try:
            await c.gate.wait()
        finally:
            c.holding.discard(i)
            bh.release()

    c.tasks = [asyncio.create_task(caller(i)) for i in range(size)]
    await settle()
    assert (bh.in_flight, bh.queued) == (permits, size)
    return c


async def check_settled(c: Crowd) -> None:
    """After the loop ran everyone: exactly the FIFO-chosen live callers hold permits."""
    await settle()
    bh = c.bh
    assert_consistent(bh)
    assert c.holding == c.expected_holders()
    assert bh.in_flight == c.held_by_test + len(c.holding)
    waiting = [t for t in c.tasks if not t.done()]
    assert bh.queued == len(waiting) - len(c.holding)
    for i in c.cancelled - c.holding:
        assert c.tasks[i].cancelled()


async def test_cancelling_every_other_waiter_while_releasing_leaks_nothing() -> None:
    """15 permits, 100 waiters: interleaved releases and cancels in one iteration stay exact."""
    c = await crowd(bulkhead(15), 100)
    for k in range(0, 100, 2):  # all in one loop iteration: nobody resumes in between
        handed = c.release()
        if handed is not None and k % 4 == 0:
            c.cancel(handed)  # handed a permit, cancelled before it could resume
        if k not in c.cancelled:
            c.cancel(k)
    assert c.handed  # the race was really built: permits were handed to soon-cancelled waiters
    assert c.released_by_test == 15
    await check_settled(c)
    await c.drain()


async def test_a_cancelled_handed_waiter_passes_its_permit_to_the_next() -> None:
    """A waiter cancelled after its grant but before resuming hands the permit to the next one."""
    c = await crowd(bulkhead(1), 3)
    assert c.release() == 0
    c.cancel(0)
    assert (c.bh.in_flight, c.bh.queued) == (1, 2)
    await check_settled(c)
    assert c.holding == {1}
    assert c.tasks[0].cancelled()
    await c.drain()


async def test_a_cancelled_handed_waiter_with_nobody_behind_frees_the_permit() -> None:
    """With no one else queued, a handed-then-cancelled waiter's permit becomes free again."""
    c = await crowd(bulkhead(2), 1)
    assert c.release() == 0
    c.cancel(0)
    await check_settled(c)
    assert (c.bh.in_flight, c.bh.available, c.bh.queued) == (1, 1, 0)
    await c.drain()


async def test_cancelling_a_waiter_twice_or_after_it_finished_changes_nothing() -> None:
    """Repeated cancels of one waiter, and cancels of finished tasks, never move a count."""
    c = await crowd(bulkhead(1), 3)
    c.cancel(1)
    c.cancel(1)
    c.release()
    c.cancel(0)
    c.cancel(0)
    await check_settled(c)
    assert c.holding == {2}
    c.cancel(1)
    await check_settled(c)
    await c.drain()


ops = st.lists(
    st.one_of(
        st.just(("release", 0)),
        st.just(("release_then_cancel", 0)),
        st.tuples(st.just("cancel"), st.integers(0, 99)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops)
async def test_any_interleaving_of_releases_and_cancels_keeps_exact_counts(
    steps: list[tuple[str, int]],
) -> None:
    """Random releases, cancels and cancel-right-after-grant in one iteration leak no permit."""
    c = await crowd(bulkhead(15), 100)
    for op, k in steps:
        if op == "cancel":
            c.cancel(k)
        else:
            handed = c.release()
            if op == "release_then_cancel" and handed is not None:
                c.cancel(handed)
        assert_consistent(c.bh)
    await check_settled(c)
    await c.drain()


# --- random schedules with awaits, timeouts and arrivals -------------------------------------


@dataclass
class Chaos:
    """Callers that record what they went through, on a bulkhead driven by a seeded random."""

    bh: Bulkhead
    rng: random.Random
    state: dict[int, str] = field(default_factory=dict)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    held_by_test: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    peak: int = 0

    def spawn(self, timeout: float | None) -> None:
        i = len(self.tasks)
        self.tasks[i] = asyncio.create_task(self.caller(i, timeout))

    async def caller(self, i: int, timeout: float | None) -> None:
        self.state[i] = "waiting"
        try:
            await self.bh.acquire(timeout)
        except BulkheadFull:
            self.state[i] = "refused"
            return
        except asyncio.CancelledError:
            self.state[i] = "cancelled"
            raise
        self.state[i] = "holding"
        self.peak = max(self.peak, self.holders())
        try:
            if self.rng.random() < 0.5:
                await asyncio.sleep(0)
            else:
                await self.gate.wait()
        finally:
            self.state[i] = "done"
            self.bh.release()

    def holders(self) -> int:
        return sum(1 for s in self.state.values() if s == "holding")

    def count(self, name: str) -> int:
        return sum(1 for s in self.state.values() if s == name)


async def run_chaos(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.randint(1, 6)
    bh = bulkhead(limit, queue=rng.randint(0, 30))
    ch = Chaos(bh, rng)
    for _ in range(rng.randint(0, limit)):
        await bh.acquire()
        ch.held_by_test += 1
    for _ in range(rng.randint(10, 60)):
        choice = rng.random()
        if choice < 0.3:
            ch.spawn(rng.choice([None, None, 0.0005, 0.002]))  # some waits expire mid-run
        elif choice < 0.5 and ch.held_by_test:
            ch.held_by_test -= 1
            bh.release()
        elif choice < 0.7 and ch.tasks:
            ch.tasks[rng.randrange(len(ch.tasks))].cancel()  # waiting, handed, holding or done
        elif choice < 0.75:
            ch.gate.set()
            ch.gate = asyncio.Event()  # let today's holders go; later ones wait for the next
        elif choice < 0.8:
            time.sleep(0.001)  # blocks the loop: the short timers come due among what follows
        else:
            await asyncio.sleep(0)
        assert_consistent(bh)
        assert ch.holders() <= limit
    # A moment with no waiter between its wake-up and its resumption: the counts are the callers'.
    await settle_until(
        lambda: bh.in_flight == ch.held_by_test + ch.holders() and bh.queued == ch.count("waiting")
    )
    assert_consistent(bh)
    ch.gate.set()
    while ch.held_by_test:
        ch.held_by_test -= 1
        bh.release()
    async with asyncio.timeout(60):  # a guard against a lost permit hanging the test
        await asyncio.gather(*ch.tasks.values(), return_exceptions=True)
    assert (bh.in_flight, bh.queued, bh.available) == (0, 0, limit)
    assert ch.peak <= limit
    assert ch.count("waiting") == ch.count("holding") == 0


async def test_seeded_random_schedules_with_awaits_timeouts_and_arrivals_leak_nothing() -> None:
    """300 seeded schedules (timeouts, arrivals, cancels of anyone) end with every permit back."""
    for seed in range(300):
        await run_chaos(seed)


# --- a timeout racing a grant ------------------------------------------------------------


async def test_a_grant_before_an_overdue_timer_runs_wins() -> None:
    """A permit handed to a waiter whose timer is due but has not run is kept: the grant wins."""
    bh = bulkhead(concurrent=1)
    await bh.acquire()
    task = asyncio.create_task(bh.acquire(timeout=0.001))
    await settle()
    assert bh.queued == 1
    time.sleep(0.01)  # the loop is blocked: the waiter's timer is overdue but cannot run
    bh.release()  # handed before the timer gets its turn
    await task  # no BulkheadFull
    assert (bh.in_flight, bh.queued, bh.available) == (1, 0, 0)
    bh.release()
    assert bh.available == 1


@pytest.mark.parametrize("behind", [False, True], ids=["alone", "with_a_waiter_behind"])
async def test_a_timer_that_fires_before_the_grant_loses_nothing(behind: bool) -> None:
    """A waiter refused by its timer just before a release passes the permit on (or frees it)."""
    bh = bulkhead(concurrent=1)
    await bh.acquire()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(bh.acquire(timeout=0.001))
    late = asyncio.create_task(bh.acquire()) if behind else None
    await settle()
    assert bh.queued == 1 + behind
    # The timer and this release come due in one iteration, the timer first (it is earlier).
    loop.call_at(loop.time() + 0.002, bh.release)
    time.sleep(0.01)
    with pytest.raises(BulkheadFull):
        await task
    if late is not None:
        await late
    assert (bh.in_flight, bh.queued, bh.available) == (int(behind), 0, 1 - behind)


async def test_timeouts_racing_grants_over_many_waiters_leak_nothing() -> None:
    """Due timers and a burst of releases in one iteration: grants first win, the rest refuse."""
    bh = bulkhead(concurrent=5)
    for _ in range(5):
        await bh.acquire()
    held: list[int] = []
    refused: list[int] = []
    gate = asyncio.Event()

    async def caller(i: int) -> None:
        try:
            await bh.acquire(0.001 if i % 2 else None)  # odd callers' timers are due
        except BulkheadFull:
            refused.append(i)
            return
        held.append(i)
        await gate.wait()
        bh.release()

    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(caller(i)) for i in range(40)]
    await settle()
    assert bh.queued == 40
    for _ in range(3):
        loop.call_at(loop.time() + 0.002, bh.release)  # after every timer, in the same iteration
    time.sleep(0.01)  # the loop is blocked: every timer is overdue, none has run
    bh.release()  # to caller 0
    bh.release()  # to caller 1, whose timer is overdue: the grant came first
    await settle()
    assert sorted(held) == [0, 1, 2, 4, 6]
    assert sorted(refused) == list(range(3, 40, 2))
    assert (bh.in_flight, bh.queued) == (5, 16)
    gate.set()
    async with asyncio.timeout(60):  # a guard against a lost permit hanging the test
        await asyncio.gather(*tasks)
    assert sorted(held) == sorted([1, *range(0, 40, 2)])
    assert (bh.in_flight, bh.queued, bh.available) == (0, 0, 5)


# --- the bound ---------------------------------------------------------------------------


async def test_concurrency_never_exceeds_max_concurrent() -> None:
    """200 tasks doing acquire / sleep(0) / release never hold more than max_concurrent at once."""
    bh = bulkhead(concurrent=15, queue=1000)
    current = 0
    peak = 0
    over: list[int] = []

    async def worker() -> None:
        nonlocal current, peak
        await bh.acquire()
        current += 1
        peak = max(peak, current)
        if bh.in_flight > 15 or current > bh.in_flight:
            over.append(bh.in_flight)
        await asyncio.sleep(0)
        current -= 1
        bh.release()

    await asyncio.gather(*(worker() for _ in range(200)))
    assert over == []
    assert peak == 15  # the bound is reached, never passed
    assert (bh.in_flight, bh.queued, bh.available) == (0, 0, 15)
