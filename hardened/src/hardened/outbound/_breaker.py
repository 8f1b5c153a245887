"""A per-process circuit breaker, as resilience4j's, for one event loop (no locks, all sync).

The window is a ring of ``buckets`` counters keyed by ``int(now / width)``;
moving to a new bucket zeroes the ones time skipped (at most ``buckets``
steps, usually none), and running totals make the rate check two divisions.
``acquire`` in the closed state reads no clock and allocates one slotted
`Permit`; ``record`` reads the clock once.

Every state change starts a new generation. A permit remembers the
generation it was issued in, so a result from an earlier one (a closed-state
call finishing after the breaker opened, a probe from before a reset) counts
for nothing. Half-open probes are leased: a probe neither recorded nor
abandoned within ``probe_lease`` is dropped from the set of probes out (seen
lazily, on the next ``acquire``, ``state`` or ``record``), so its slot comes
back and its late result is ignored. A lost probe counts as neither success
nor failure: the attempt timeout, not the lease, is what reports a hang.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

from hardened.outbound._errors import BreakerOpen

if TYPE_CHECKING:
    from collections.abc import Callable

    from hardened.outbound._config import BreakerConfig

__all__ = ["CircuitBreaker", "Permit", "State"]

State = Literal["closed", "open", "half_open", "forced_open", "disabled"]


class Permit:
    """One admitted attempt: the first ``record`` or ``abandon`` counts, later calls are no-ops."""

    __slots__ = ("_breaker", "_done", "_generation", "_lease")

    def __init__(self, breaker: CircuitBreaker, generation: int, lease: float | None) -> None:
        self._breaker = breaker
        self._generation = generation
        self._lease = lease  # a probe's deadline to report by; None outside half-open
        self._done = False

    def record(self, duration: float, *, failed: bool) -> None:
        """Count the attempt (slow from ``slow_call_duration`` on); stale permits count nothing."""
        if self._done:
            return
        self._done = True
        breaker = self._breaker
        if self._generation == breaker._generation:
            breaker._record(self, duration, failed)

    def abandon(self) -> None:
        """The attempt never ran or was cut off: nothing counted, a probe's slot comes back."""
        if self._done:
            return
        self._done = True
        if self._lease is not None:
            self._breaker._probes.discard(self)


class CircuitBreaker:
    """One dependency's breaker: ``acquire`` per attempt, then ``record`` or ``abandon`` the permit.

    ``on_transition(name, old, new)`` is called after every state change,
    including the lazy open → half-open one seen by ``state`` or ``acquire``.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[str, State, State], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._state: State = "closed" if config.mode == "normal" else config.mode
        self._generation = 0
        self._open_until = 0.0
        # The closed state's window.
        n = config.buckets
        self._n = n
        self._per_second = n / config.window  # buckets per second: key = int(now * this)
        self._slow_after = config.slow_call_duration
        self._minimum = config.minimum_calls
        self._failure_rate = config.failure_rate
        self._slow_rate = config.slow_call_rate
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._head = 0  # the newest bucket's key
        self._slot = 0  # its index in the ring
        self._total = self._total_failures = self._total_slow = 0
        # The half-open state's probes.
        self._probes: set[Permit] = set()
        self._probe_results = 0
        self._probe_failures = 0
        self._clear_window()

    # -- the hot path -----------------------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit for one attempt, or `BreakerOpen` (with the wait until probes, when known)."""
        state = self._state
        if state in {"closed", "disabled"}:
            return Permit(self, self._generation, None)
        now = self._clock()
        if state == "open":
            if now < self._open_until:
                raise BreakerOpen(dependency=self.name, retry_after=self._open_until - now)
            self._move("half_open")
            state = self._state
        if state == "half_open":
            self._reap(now)
            if len(self._probes) + self._probe_results < self.config.half_open_probes:
                permit = Permit(self, self._generation, now + self.config.probe_lease)
                self._probes.add(permit)
                return permit
        raise BreakerOpen(dependency=self.name, retry_after=None)

    def _record(self, permit: Permit, duration: float, failed: bool) -> None:
        """One result of the current generation (`Permit.record` checked it)."""
        state = self._state
        if state == "closed":
            key = int(self._clock() * self._per_second)
            if key != self._head:
                self._roll(key)
            slot = self._slot
            self._calls[slot] += 1
            total = self._total = self._total + 1
            if failed:
                self._failures[slot] += 1
                self._total_failures += 1
            if duration >= self._slow_after:
                self._slow[slot] += 1
                self._total_slow += 1
            if total >= self._minimum and (
                self._total_failures / total >= self._failure_rate
                or self._total_slow / total >= self._slow_rate
            ):
                self._trip()
        elif state == "half_open":
            self._reap(self._clock())
            if permit not in self._probes:
                return  # its lease ran out: the slot was given back, the result is too late
            self._probes.discard(permit)
            self._probe_results += 1
            if failed or duration >= self._slow_after:
                self._probe_failures += 1
            if self._probe_results >= self.config.half_open_probes:
                if self._probe_failures / self._probe_results >= self._failure_rate:
                    self._trip()
                else:
                    self._move("closed")
        # open, forced_open, disabled: nothing to count

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The state now: an open breaker whose ``open_for`` has passed reads as half-open."""
        state = self._state
        if state in {"open", "half_open"}:
            now = self._clock()
            if state == "open" and now >= self._open_until:
                self._move("half_open")
            else:
                self._reap(now)
        return self._state

    def retry_after(self) -> float | None:
        """Seconds until probes are admitted while open; None in any other state."""
        if self.state != "open":
            return None
        return max(0.0, self._open_until - self._clock())

    def force_open(self) -> None:
        """Refuse every call until `reset` (or `disable`)."""
        self._move("forced_open")

    def disable(self) -> None:
        """Admit every call and count none until `reset` (or `force_open`)."""
        self._move("disabled")

    def reset(self) -> None:
        """Back to closed and normal mode with an empty window; permits out become stale."""
        if self._state == "closed":
            self._clear_window()
            self._generation += 1
        else:
            self._move("closed")

    def snapshot(self) -> dict[str, object]:
        """The state and the window's counts (closed-state calls; probes while half-open)."""
        state = self.state
        if self._total:
            self._roll(int(self._clock() * self._per_second))
        total = self._total
        return {
            "state": state,
            "calls": total,
            "failures": self._total_failures,
            "slow_calls": self._total_slow,
            "failure_rate": self._total_failures / total if total else 0.0,
            "slow_call_rate": self._total_slow / total if total else 0.0,
            "retry_after": self.retry_after(),
            "probes_out": len(self._probes),
            "probe_results": self._probe_results,
            "probe_failures": self._probe_failures,
        }

    # -- internals ---------------------------------------------------------------------------

    def _trip(self) -> None:
        """Open for a new ``open_for`` period (from closed, or from half-open on failed probes)."""
        self._open_until = self._clock() + self.config.open_for
        self._move("open")

    def _move(self, new: State) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes = set()
        self._probe_results = self._probe_failures = 0
        if new == "closed":
            self._clear_window()
        if old != new and self._on_transition is not None:
            self._on_transition(self.name, old, new)

    def _reap(self, now: float) -> None:
        """Give back the slots of probes whose lease ran out."""
        if self._probes:
            lost = [p for p in self._probes if p._lease is not None and p._lease <= now]
            self._probes.difference_update(lost)

    def _roll(self, key: int) -> None:
        """Make ``key`` the newest bucket, zeroing those that fell out of the window."""
        head = self._head
        if key <= head:
            return  # the clock went back (only an injected one can): count in the newest bucket
        n = self._n
        if key - head >= n:
            self._clear_window(key)
            return
        calls, failures, slow = self._calls, self._failures, self._slow
        for k in range(head + 1, key + 1):
            slot = k % n
            if calls[slot]:
                self._total -= calls[slot]
                self._total_failures -= failures[slot]
                self._total_slow -= slow[slot]
                calls[slot] = failures[slot] = slow[slot] = 0
        self._head = key
        self._slot = key % n

    def _clear_window(self, key: int | None = None) -> None:
        if key is None:
            key = int(self._clock() * self._per_second)
        n = self._n
        self._calls[:] = [0] * n
        self._failures[:] = [0] * n
        self._slow[:] = [0] * n
        self._total = self._total_failures = self._total_slow = 0
        self._head = key
        self._slot = key % n
