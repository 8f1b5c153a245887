"""The circuit breaker on a hand-moved clock: its window, open period, leased probes and modes.

The breaker is synchronous (one event loop, no awaits inside), so these tests
are plain functions; concurrency is modelled by holding several permits at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened.outbound._breaker import CircuitBreaker, Permit
from hardened.outbound._config import BreakerConfig
from hardened.outbound._errors import BreakerOpen

if TYPE_CHECKING:
    from typing import Any

    from hardened.outbound._breaker import State


class FakeClock:
    """A monotonic clock the test moves; counts how often it is read."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: A breaker small enough to drive by hand: 1 s buckets over 10 s, 2 probes leased 5 s.
SMALL = BreakerConfig(
    failure_rate=0.5,
    slow_call_duration=2.0,
    minimum_calls=4,
    window=10.0,
    buckets=10,
    open_for=30.0,
    half_open_probes=2,
    probe_lease=5.0,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transitions() -> list[tuple[str, State, State]]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, transitions: list[tuple[str, State, State]]) -> CircuitBreaker:
    return make(clock, transitions)


def make(
    clock: FakeClock,
    transitions: list[tuple[str, State, State]] | None = None,
    config: BreakerConfig = SMALL,
    **changes: object,
) -> CircuitBreaker:
    seen = transitions

    def on_transition(name: str, old: State, new: State) -> None:
        if seen is not None:
            seen.append((name, old, new))

    return CircuitBreaker(
        "crm",
        replace(config, **changes),  # type: ignore[arg-type]
        clock=clock,
        on_transition=on_transition,
    )


def state_of(breaker: CircuitBreaker) -> State:
    """The state, read afresh (a helper so mypy does not narrow it between reads)."""
    return breaker.state


def calls(breaker: CircuitBreaker, n: int, *, failed: bool, duration: float = 0.1) -> None:
    for _ in range(n):
        breaker.acquire().record(duration, failed=failed)


def trip(breaker: CircuitBreaker) -> None:
    calls(breaker, SMALL.minimum_calls, failed=True)
    assert state_of(breaker) == "open"


def to_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(SMALL.open_for)
    assert state_of(breaker) == "half_open"


def refused(breaker: CircuitBreaker) -> BreakerOpen:
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    return info.value


# -- closed: the window ----------------------------------------------------------------------


def test_stays_closed_below_minimum_calls_even_at_total_failure(clock: FakeClock) -> None:
    """Nine failures out of nine do not open a breaker that needs ten calls; the tenth opens it."""
    breaker = make(clock, minimum_calls=10)
    calls(breaker, 9, failed=True)
    assert state_of(breaker) == "closed"
    calls(breaker, 1, failed=False)
    assert state_of(breaker) == "open"


def test_opens_exactly_at_the_failure_rate(clock: FakeClock) -> None:
    """4/10 and 5/11 failures keep it closed; 6/12 (the threshold itself) opens it."""
    breaker = make(clock, minimum_calls=10)
    calls(breaker, 4, failed=True)
    calls(breaker, 6, failed=False)
    assert state_of(breaker) == "closed"
    calls(breaker, 1, failed=True)
    assert state_of(breaker) == "closed"
    assert breaker.snapshot()["failure_rate"] == pytest.approx(5 / 11)
    calls(breaker, 1, failed=True)
    assert state_of(breaker) == "open"


def test_the_slow_call_rate_opens_it_and_the_slow_threshold_is_inclusive(clock: FakeClock) -> None:
    """Successful calls of exactly slow_call_duration count as slow; half of them opens at 0.5."""
    breaker = make(clock, slow_call_rate=0.5)
    calls(breaker, 2, failed=False, duration=1.9)
    calls(breaker, 1, failed=False, duration=2.0)
    assert state_of(breaker) == "closed"
    snapshot = breaker.snapshot()
    assert (snapshot["calls"], snapshot["slow_calls"], snapshot["failures"]) == (3, 1, 0)
    calls(breaker, 1, failed=False, duration=7.0)
    assert state_of(breaker) == "open"


def test_the_default_slow_rate_opens_only_when_every_call_is_slow(clock: FakeClock) -> None:
    """With slow_call_rate 1.0, one fast call among slow ones keeps it closed; all slow opens it."""
    mixed, slow = make(clock, slow_call_rate=1.0), make(clock, slow_call_rate=1.0)
    calls(mixed, 1, failed=False, duration=0.1)
    calls(mixed, 9, failed=False, duration=3.0)
    assert state_of(mixed) == "closed"
    calls(slow, 4, failed=False, duration=3.0)
    assert state_of(slow) == "open"


def test_failures_older_than_the_window_no_longer_count(clock: FakeClock) -> None:
    """Failures 11 s old (10 s window) are gone; one 7 s old still counts; the rate stays low."""
    breaker = make(clock, minimum_calls=6, failure_rate=0.4)
    clock.now = 1000.5
    calls(breaker, 3, failed=True)  # bucket 1000
    clock.now = 1004.5
    calls(breaker, 1, failed=True)  # bucket 1004
    clock.now = 1011.5  # buckets 1002..1011 remain: only the 1004 failure
    calls(breaker, 5, failed=False)  # without expiry, 4/6 would have opened it on the 2nd
    assert state_of(breaker) == "closed"
    snapshot = breaker.snapshot()
    assert (snapshot["calls"], snapshot["failures"]) == (6, 1)


def test_failures_inside_the_window_add_up_across_buckets(clock: FakeClock) -> None:
    """Failures spread over 9 s of a 10 s window are all counted together."""
    breaker = make(clock)
    for _ in range(3):
        calls(breaker, 1, failed=True)
        clock.advance(3.0)
    assert state_of(breaker) == "closed"
    calls(breaker, 1, failed=True)
    assert state_of(breaker) == "open"


def test_a_long_silence_empties_the_whole_window(clock: FakeClock) -> None:
    """After an hour without calls the snapshot shows no calls and fresh failures start over."""
    breaker = make(clock)
    calls(breaker, 3, failed=True)
    clock.advance(3600.0)
    assert breaker.snapshot()["calls"] == 0
    calls(breaker, 3, failed=True)
    assert state_of(breaker) == "closed"


def test_acquire_in_the_closed_state_reads_no_clock(clock: FakeClock) -> None:
    """The hot path: acquire reads no clock, record reads it once."""
    breaker = make(clock)
    before = clock.reads
    permit = breaker.acquire()
    assert clock.reads == before
    permit.record(0.1, failed=False)
    assert clock.reads == before + 1


# -- open ------------------------------------------------------------------------------------


def test_open_refuses_everything_with_the_time_left(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """While open every acquire raises BreakerOpen naming the dependency and the wait left."""
    trip(breaker)
    for _ in range(50):
        assert refused(breaker).retry_after == SMALL.open_for
    assert breaker.snapshot()["calls"] == SMALL.minimum_calls  # refusals count nothing
    clock.advance(10.5)
    assert breaker.retry_after() == pytest.approx(19.5)
    error = refused(breaker)
    assert error.dependency == "crm"
    assert error.retry_after == 20  # Retry-After rounds the 19.5 s up
    clock.now = 1000.0 + SMALL.open_for - 0.1
    assert state_of(breaker) == "open"
    clock.now = 1000.0 + SMALL.open_for
    assert state_of(breaker) == "half_open"
    assert breaker.retry_after() is None


# -- half-open -------------------------------------------------------------------------------


def test_half_open_admits_exactly_the_probes_at_once(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """With 2 probes, two permits are handed out and the third acquire is refused."""
    to_half_open(breaker, clock)
    probes = [breaker.acquire(), breaker.acquire()]
    for _ in range(5):
        refused(breaker)
    assert breaker.snapshot()["probes_out"] == len(probes)


def test_succeeding_probes_close_it_with_an_empty_window(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Two successful probes close the breaker; the failures that opened it are forgotten."""
    to_half_open(breaker, clock)
    first, second = breaker.acquire(), breaker.acquire()
    first.record(0.1, failed=False)
    assert state_of(breaker) == "half_open"
    second.record(0.1, failed=False)
    assert state_of(breaker) == "closed"
    assert breaker.snapshot()["calls"] == 0
    calls(breaker, 3, failed=True)
    assert state_of(breaker) == "closed"


def test_failing_probes_open_it_again_for_a_full_period(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """One failed probe of two (rate 0.5) reopens it for a new open_for, measured from then."""
    to_half_open(breaker, clock)
    first, second = breaker.acquire(), breaker.acquire()
    first.record(0.1, failed=False)
    clock.advance(1.0)
    second.record(0.1, failed=True)
    assert state_of(breaker) == "open"
    assert breaker.retry_after() == pytest.approx(SMALL.open_for)
    refused(breaker)


def test_a_slow_probe_counts_as_a_failed_one(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A probe that succeeded but took slow_call_duration reopens it like a failure."""
    to_half_open(breaker, clock)
    first, second = breaker.acquire(), breaker.acquire()
    first.record(0.1, failed=False)
    second.record(SMALL.slow_call_duration, failed=False)
    assert state_of(breaker) == "open"


def test_a_lost_probe_gives_its_permit_back_after_its_lease(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Probes never reported free their permits at probe_lease; the breaker does not wedge."""
    to_half_open(breaker, clock)
    lost = [breaker.acquire(), breaker.acquire()]
    leased_at = clock.now
    clock.now = leased_at + SMALL.probe_lease - 0.1
    refused(breaker)
    clock.now = leased_at + SMALL.probe_lease
    assert breaker.snapshot()["probes_out"] == 0
    fresh = [breaker.acquire(), breaker.acquire()]
    refused(breaker)
    for permit in lost:  # reporting after the lease: too late, nothing counted
        permit.record(0.1, failed=True)
    assert state_of(breaker) == "half_open"
    assert breaker.snapshot()["probe_results"] == 0
    for permit in fresh:
        permit.record(0.1, failed=False)
    assert state_of(breaker) == "closed"


def test_a_probe_reporting_after_its_lease_is_ignored_even_before_anyone_noticed(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A probe recorded past its lease counts nothing, though no acquire reclaimed it yet."""
    to_half_open(breaker, clock)
    late, on_time = breaker.acquire(), breaker.acquire()
    clock.advance(SMALL.probe_lease)
    late.record(0.1, failed=True)
    assert breaker.snapshot()["probe_results"] == 0
    on_time.record(0.1, failed=False)  # also past its lease: ignored too
    assert state_of(breaker) == "half_open"
    assert breaker.snapshot()["probes_out"] == 0


def test_abandon_returns_a_probe_permit_at_once_and_counts_nothing(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """An abandoned probe frees its permit immediately; a recorded one does not come back."""
    to_half_open(breaker, clock)
    first, second = breaker.acquire(), breaker.acquire()
    first.abandon()
    third = breaker.acquire()
    refused(breaker)
    second.record(0.1, failed=False)
    refused(breaker)  # one result in, one probe out: no third slot
    assert breaker.snapshot()["probe_results"] == 1
    third.record(0.1, failed=False)
    assert state_of(breaker) == "closed"


# -- stale permits ---------------------------------------------------------------------------


def test_results_from_an_earlier_generation_are_ignored(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Closed-state permits finishing while open, half-open or closed again count nothing."""
    early = [breaker.acquire() for _ in range(3)]
    trip(breaker)
    early[0].record(0.1, failed=False)  # while open
    assert breaker.snapshot()["calls"] == SMALL.minimum_calls
    clock.advance(SMALL.open_for)
    probe = breaker.acquire()
    early[1].record(0.1, failed=True)  # while half-open: not a probe result
    assert breaker.snapshot()["probe_results"] == 0
    probe.record(0.1, failed=False)
    breaker.acquire().record(0.1, failed=False)
    assert state_of(breaker) == "closed"
    early[2].record(0.1, failed=True)  # closed again, but a new generation
    assert breaker.snapshot()["calls"] == 0


def test_a_probe_from_before_a_reset_counts_nothing(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """reset() makes every permit out stale, closed-state ones included."""
    to_half_open(breaker, clock)
    probe = breaker.acquire()
    breaker.reset()
    held = breaker.acquire()
    breaker.reset()
    probe.record(0.1, failed=True)
    held.record(0.1, failed=True)
    assert breaker.snapshot()["calls"] == 0


def test_a_second_record_or_abandon_on_one_permit_is_a_no_op(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Each permit counts once: a repeat record, or abandon after record, changes nothing."""
    permit = breaker.acquire()
    permit.record(0.1, failed=True)
    permit.record(0.1, failed=True)
    permit.abandon()
    assert breaker.snapshot()["calls"] == 1
    breaker.reset()
    to_half_open(breaker, clock)
    probe = breaker.acquire()
    probe.abandon()
    probe.record(0.1, failed=False)
    probe.abandon()
    assert breaker.snapshot()["probe_results"] == 0
    assert breaker.snapshot()["probes_out"] == 0


# -- modes -----------------------------------------------------------------------------------


def test_forced_open_mode_refuses_forever_without_a_retry_time(clock: FakeClock) -> None:
    """mode=forced_open refuses every call, whatever the clock says, with no retry_after."""
    breaker = make(clock, mode="forced_open")
    for _ in range(3):
        assert state_of(breaker) == "forced_open"
        assert breaker.retry_after() is None
        assert refused(breaker).retry_after == 1  # the refusal's default Retry-After
        clock.advance(3600.0)


def test_disabled_mode_admits_everything_and_counts_nothing(clock: FakeClock) -> None:
    """mode=disabled admits a hundred failing calls and its window stays empty."""
    breaker = make(clock, mode="disabled")
    calls(breaker, 100, failed=True, duration=60.0)
    assert state_of(breaker) == "disabled"
    assert breaker.snapshot()["calls"] == 0


def test_run_time_switches_and_reset(
    breaker: CircuitBreaker, clock: FakeClock, transitions: list[tuple[str, State, State]]
) -> None:
    """force_open/disable/reset switch modes at run time; reset restores a closed, empty breaker."""
    calls(breaker, 3, failed=True)
    breaker.force_open()
    refused(breaker)
    breaker.disable()
    calls(breaker, 10, failed=True)
    assert state_of(breaker) == "disabled"
    breaker.reset()
    assert state_of(breaker) == "closed"
    assert breaker.snapshot()["calls"] == 0  # the 3 failures before force_open are gone
    calls(breaker, 3, failed=True)
    assert state_of(breaker) == "closed"
    calls(breaker, 1, failed=True)
    assert state_of(breaker) == "open"
    breaker.reset()
    assert state_of(breaker) == "closed"
    breaker.reset()  # already closed: the window is cleared, no transition
    assert [(old, new) for _, old, new in transitions] == [
        ("closed", "forced_open"),
        ("forced_open", "disabled"),
        ("disabled", "closed"),
        ("closed", "open"),
        ("open", "closed"),
    ]


def test_every_transition_is_reported_in_order(
    breaker: CircuitBreaker, clock: FakeClock, transitions: list[tuple[str, State, State]]
) -> None:
    """on_transition sees open, the lazy half-open, open again, half-open, closed, in that order."""
    trip(breaker)
    clock.advance(SMALL.open_for)
    assert state_of(breaker) == "half_open"
    assert transitions[-1] == ("crm", "open", "half_open")  # seen by reading state
    probes = [breaker.acquire(), breaker.acquire()]
    for probe in probes:
        probe.record(0.1, failed=True)
    clock.advance(SMALL.open_for)
    probes = [breaker.acquire(), breaker.acquire()]  # the lazy half-open, seen by acquire
    for probe in probes:
        probe.record(0.1, failed=False)
    breaker.force_open()
    breaker.force_open()  # no change, no report
    breaker.disable()
    breaker.reset()
    assert [(old, new) for _, old, new in transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "forced_open"),
        ("forced_open", "disabled"),
        ("disabled", "closed"),
    ]
    assert {name for name, _, _ in transitions} == {"crm"}


# -- property --------------------------------------------------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire")),
        st.tuples(
            st.just("record"),
            st.integers(0, 30),
            st.booleans(),
            st.sampled_from([0.1, 1.0, 2.0, 5.0]),
        ),
        st.tuples(st.just("abandon"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.floats(0.0, 40.0, allow_nan=False)),
        st.sampled_from([("force_open",), ("disable",), ("reset",)]),
    ),
    max_size=150,
)


def try_acquire(breaker: CircuitBreaker) -> Permit | None:
    try:
        return breaker.acquire()
    except BreakerOpen:
        return None


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, probes=st.integers(1, 3), minimum=st.integers(1, 5))
def test_random_use_never_leaks_probes_raises_only_breaker_open_or_wedges(
    ops: list[tuple[Any, ...]], probes: int, minimum: int
) -> None:
    """Any sequence keeps at most N live probes, raises only BreakerOpen, and recovers after."""
    clock = FakeClock()
    transitions: list[tuple[str, State, State]] = []
    breaker = make(clock, transitions, half_open_probes=probes, minimum_calls=minimum)
    held: list[Permit] = []
    live: dict[int, tuple[int, float]] = {}  # live probe permits: id -> (episode, lease end)
    for op in ops:
        if op[0] == "acquire":
            permit = try_acquire(breaker)
            if permit is not None:
                held.append(permit)
                if state_of(breaker) == "half_open":
                    live[id(permit)] = (len(transitions), clock.now + SMALL.probe_lease)
        elif op[0] in {"record", "abandon"}:
            if held:
                permit = held[op[1] % len(held)]
                if op[0] == "record":
                    permit.record(op[3], failed=op[2])
                else:
                    permit.abandon()
                live.pop(id(permit), None)
        elif op[0] == "advance":
            clock.advance(op[1])
        else:  # force_open, disable, reset
            getattr(breaker, op[0])()
        snapshot = breaker.snapshot()
        episode = len(transitions)
        out = sum(1 for e, end in live.values() if e == episode and end > clock.now)
        assert snapshot["probes_out"] == out  # exactly the probes neither reported nor expired
        assert out <= probes
        assert snapshot["state"] in {"closed", "open", "half_open", "forced_open", "disabled"}
    state: State = "closed"
    for _, old, new in transitions:  # a chain of real changes from the initial state
        assert old == state
        assert new != old
        state = new
    assert state_of(breaker) == state
    if state != "forced_open":  # every lease and open period over: it admits again
        clock.advance(SMALL.open_for + SMALL.probe_lease)
        breaker.acquire()
