"""The lease of a held claim: its settings, renewal, fenced and shielded release.

`LeaseConfig` is the one set of lease settings (and their validation) that the
HTTP middleware's and internal operations' configs build on. `HeldLease` is one
implementation for the three holders (the HTTP middleware,
`Idempotent.operation()` and `run_phases`), so they agree on what a missed
beat, a takeover and a cancelled caller mean:

* Renewal starts as an entry in a shared schedule, and becomes a task only
  when its first beat is due. Leases of one interval on one loop come due in
  the order they started, so one timer, armed for the oldest, serves them
  all: a holder that finishes within one interval, almost every HTTP request,
  costs a dict insert and a pop, not a timer of its own.
* A beat the backend could not answer (`StoreUnavailable`, or a database
  error on `SqlBackend`) is logged and retried at the next interval: the
  lease may still stand, and the fenced writes decide in the end.
* A beat that finds the lease gone marks it lost (logged and counted in
  ``hardened_idempotency_lease_lost_total``) and stops; the holder then
  refuses to publish without asking the store.
* `stop` never cancels a beat on the wire (a SQL statement cancelled
  mid-flight costs its connection); it waits for it, and cancels only the
  sleep between beats.
* `release` runs in its own task and is awaited through ``shield``: a caller
  cancelled by a timeout or a shutdown still gives its key back.
* A release the backend could not answer is retried in the background, with
  backoff, until it lands or the lease would have lapsed anyway (then a retry
  can take the key over, and the fenced release no longer matters). The
  caller does not wait for those tries: a 5xx is answered at once, and its key
  is free again as soon as the backend is, not at the end of the lease.
* A complete the backend could not answer (the effect happened, its result is
  not stored) is retried the same way, by the same loop, but for up to
  ``retry_for`` seconds, and the lease is renewed meanwhile: a retry of the
  operation finds it in flight (409), then replays the result, instead of
  taking the key over when the lease would have lapsed and running again. The
  caller does not wait: it has its answer. The background work owns the lease
  from then on (the holder's `stop` leaves it alone) and stops renewing when
  the result lands, the lease turns out lost, or it gives up: then it logs
  ``idempotency.complete_abandoned`` at error level, counts it in
  ``hardened_idempotency_complete_abandoned_total``, and the lease lapses, so
  a retry may run the operation again. The same can happen sooner if the
  backend was away for longer than the lease: the lease lapsed on its clock,
  and a retry that reaches it before this holder's next try takes over (the
  fenced complete then refuses: lease lost). Pending results live in this
  process only; a process that exits drops them, as a crash would.
"""

from __future__ import annotations

import asyncio
import math
import random
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from hardened.idempotency._keys import key_hash_for_logs
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from hardened.idempotency._contracts import IdempotencyBackend

__all__ = ["DEFAULT_COMPLETE_RETRY_FOR", "FIRST_POLL", "MAX_POLL", "HeldLease", "LeaseConfig"]

DEFAULT_COMPLETE_RETRY_FOR = 300.0
"""Seconds a failed complete is retried: rides out a failover or a database restart."""

# A caller waiting for a live holder asks again after FIRST_POLL seconds, doubling up to MAX_POLL.
FIRST_POLL = 0.02
MAX_POLL = 0.5


def _positive(name: str, value: float) -> None:
    # inf or nan would pass a "> 0" check and then fail in every claim's TTL.
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """How long a claim is held and its result kept, in seconds.

    ``lease`` (5 s) is how soon a crashed holder's key can be taken over. The
    heartbeat renews it every ``heartbeat`` seconds (default a third of the
    lease, so two beats can fail before a slow holder loses its claim); it must
    be shorter than the lease, or the lease lapses between beats. The
    trade-off: a holder whose event loop stalls longer than the lease loses
    its claim to a retry. Fencing then stops it from storing its result, and
    in the transactional mode (`SqlBackend.complete_in`) from committing its
    effect; an effect outside the database (a provider call) could be done
    twice. Raise the lease for work that makes such calls on a loop that may
    stall.

    ``retention`` is how long a result is replayed. ``complete_retry_for``
    (300 s) bounds the background retries of a result the backend could not
    store: long enough to ride out a failover or a database restart, short
    enough that a long outage does not keep results and tasks in memory
    without end (0: give up at once).
    """

    lease: float = 5.0
    heartbeat: float | None = None
    retention: float = 86_400.0
    complete_retry_for: float = DEFAULT_COMPLETE_RETRY_FOR

    def __post_init__(self) -> None:
        _positive("lease", self.lease)
        _positive("retention", self.retention)
        if self.heartbeat is not None and not 0 < self.heartbeat < self.lease:
            msg = f"heartbeat must be in (0, lease) seconds, got {self.heartbeat!r}"
            raise ValueError(msg)
        if not (self.complete_retry_for >= 0 and math.isfinite(self.complete_retry_for)):
            retry_for = self.complete_retry_for
            raise ValueError(f"complete_retry_for must be >= 0 finite seconds, got {retry_for!r}")

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between lease renewals: ``heartbeat``, else a third of the lease."""
        return self.lease / 3 if self.heartbeat is None else self.heartbeat


_LEASE_LOST = counter(
    "idempotency_lease_lost_total", "Holders that found their lease taken over by another."
)
_ABANDONED = counter(
    "idempotency_complete_abandoned_total",
    "Results never stored after the effect happened: the operation may run again.",
)
# Releases under way, and retries of releases and completes: asyncio keeps only weak
# references to tasks.
_BACKGROUND: set[asyncio.Future[Any]] = set()
_RETRY_FIRST = 0.05  # seconds before the first retry of a failed write, doubling up to
_RETRY_MAX = 1.0
T = TypeVar("T")


def _log() -> Any:
    return structlog.get_logger("hardened.idempotency")  # per event: later configuration applies


class _FirstBeats:
    """The first beat of every lease with one interval on one loop, from one timer."""

    __slots__ = ("_due", "_interval", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = weakref.ref(loop)  # held by the loop's timer, so never strongly back
        self._interval = interval
        self._due: dict[HeldLease, float] = {}  # insertion order is due order
        self._timer: asyncio.TimerHandle | None = None

    def serves(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._loop() is loop

    def closed(self) -> bool:
        loop = self._loop()
        return loop is None or loop.is_closed()

    def add(self, lease: HeldLease, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + self._interval
        self._due[lease] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._fire)

    def discard(self, lease: HeldLease) -> None:
        self._due.pop(lease, None)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop()
        if loop is None:
            return
        due, now = self._due, loop.time()
        while due:
            lease, at = next(iter(due.items()))
            if at > now + _EARLY:
                self._timer = loop.call_at(at, self._fire)
                return
            del due[lease]
            lease._start()


_EARLY = 0.001  # a first beat this much early is harmless; re-arming for it is not
_SCHEDULES: dict[tuple[int, float], _FirstBeats] = {}


def _first_beats(loop: asyncio.AbstractEventLoop, interval: float) -> _FirstBeats:
    key = (id(loop), interval)
    beats = _SCHEDULES.get(key)
    if beats is None or not beats.serves(loop):  # new, or a dead loop's id reused
        for old in [k for k, v in _SCHEDULES.items() if v.closed()]:
            del _SCHEDULES[old]  # schedules of loops that are gone (a new loop is rare)
        beats = _SCHEDULES[key] = _FirstBeats(loop, interval)
    return beats


class HeldLease:
    """A claimed key's token and lease, renewed every ``interval`` seconds until `stop`."""

    __slots__ = (
        "_backend",
        "_calling",
        "_completing",
        "_first",
        "_handle",
        "_interval",
        "_lapses_at",
        "_lease",
        "_log_key",
        "_stopped",
        "_task",
        "key",
        "lost",
        "token",
    )

    def __init__(
        self,
        backend: IdempotencyBackend,
        key: str,
        token: int,
        *,
        lease: float,
        interval: float,
        log_key: str,
    ) -> None:
        """``key`` is the backend's key; ``log_key`` the client's, logged only as a hash."""
        self._backend = backend
        self.key, self.token, self._log_key = key, token, log_key
        self._lease, self._interval = lease, interval
        self.lost = False
        self._stopped = self._calling = self._completing = False
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        # When the lease lapses at the latest: the claim was made before this.
        self._lapses_at = loop.time() + lease
        self._handle: asyncio.TimerHandle | None = None
        self._first: _FirstBeats | None = _first_beats(loop, interval)
        self._first.add(self, loop)

    @property
    def key_hash(self) -> str:
        """`key_hash_for_logs` of the client's key (computed when something is logged)."""
        return key_hash_for_logs(self._log_key)

    def _start(self) -> None:
        self._first = None
        if not self._stopped:
            self._task = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        while True:
            self._calling = True
            try:
                alive = await self._backend.heartbeat(self.key, self.token, lease=self._lease)
            except Exception:  # noqa: BLE001 - a missed beat is retried; fenced writes decide
                _log().warning("idempotency.heartbeat_failed", key_hash=self.key_hash)
                alive = None
            finally:
                self._calling = False
            if alive is False:
                # While a complete is retried, False may mean that it landed: its answer decides.
                if not self._completing:
                    self.mark_lost("heartbeat")
                return
            if alive:
                self._lapses_at = asyncio.get_running_loop().time() + self._lease
            if self._stopped:
                return
            await asyncio.sleep(self._interval)

    def mark_lost(self, during: str) -> None:
        """Record a takeover found ``during`` a beat or a fenced write (once per holder)."""
        if not self.lost:
            self.lost = True
            _LEASE_LOST.inc()
            _log().warning("idempotency.lease_lost", key_hash=self.key_hash, during=during)

    async def stop(self) -> None:
        """Stop renewing; a beat already on the wire is awaited, never cancelled.

        Once a failed complete went to the background, renewal is its to stop.
        """
        if not self._completing and (task := self._unschedule()) is not None:
            await self._wait_out(task)

    async def _halt(self) -> None:
        if (task := self._unschedule()) is not None:
            await self._wait_out(task)

    def _unschedule(self) -> asyncio.Task[None] | None:
        """Stop future beats; the renewal task still to wait for, if one runs."""
        self._stopped = True
        if self._first is not None:
            self._first.discard(self)
            self._first = None
        if self._handle is not None:
            self._handle.cancel()
        task = self._task
        return None if task is None or task.done() else task

    async def _wait_out(self, task: asyncio.Task[None]) -> None:
        if not self._calling:
            task.cancel()  # it is sleeping between beats
        await asyncio.wait((task,))

    async def release(self) -> bool | None:
        """Give the key back (fenced); None when the backend failed (retried in the background)."""
        return await asyncio.shield(_keep(self._release()))

    async def _release(self) -> bool | None:
        try:
            return await self._backend.release(self.key, self.token)
        except Exception:  # noqa: BLE001 - the holder's own outcome wins; retried below
            _log().warning("idempotency.release_failed", key_hash=self.key_hash)
        _keep(self._release_later())
        return None

    async def _release_later(self) -> None:
        released, attempts = await self._retry(
            lambda: self._backend.release(self.key, self.token), lambda: self._lapses_at
        )
        if released is None:
            _log().warning(
                "idempotency.release_abandoned", key_hash=self.key_hash, attempts=attempts
            )
            return
        _log().info(
            "idempotency.release_retried",
            key_hash=self.key_hash,
            attempts=attempts,
            lease_lost=not released,
        )

    async def complete(self, result: bytes, *, retention: float, retry_for: float) -> bool | None:
        """Store ``result`` (fenced) and end the lease; False if it was lost (marked).

        None when the backend failed: the effect happened, so the key must not be
        released; the store is retried in the background while the lease is renewed.
        """
        if not self._stopped:
            await self.stop()
        try:
            stored = await self._backend.complete(self.key, self.token, result, retention=retention)
        except Exception:  # noqa: BLE001 - the holder has its answer; retried below
            _log().warning(
                "idempotency.complete_failed", key_hash=self.key_hash, retry_for=retry_for
            )
            self._complete_later(result, retention, retry_for)
            return None
        if not stored:
            self.mark_lost("complete")
        return stored

    def _complete_later(self, result: bytes, retention: float, retry_for: float) -> None:
        self._completing, self._stopped = True, False
        loop = asyncio.get_running_loop()
        # Beats resume on their schedule: at once if the last ones failed.
        due = self._lapses_at - self._lease + self._interval - loop.time()
        self._handle = loop.call_later(max(due, 0.0), self._start)
        deadline = loop.time() + retry_for

        async def store() -> bool:
            return await self._backend.complete(self.key, self.token, result, retention=retention)

        async def retry() -> None:
            try:
                stored, attempts = await self._retry(store, lambda: deadline)
            finally:
                await self._halt()
            if stored is None:
                _ABANDONED.inc()
                _log().error(
                    "idempotency.complete_abandoned", key_hash=self.key_hash, attempts=attempts
                )
                return
            if not stored:
                self.mark_lost("complete")
            _log().info(
                "idempotency.complete_retried",
                key_hash=self.key_hash,
                attempts=attempts,
                lease_lost=not stored,
            )

        _keep(retry())

    async def _retry(
        self, attempt: Callable[[], Awaitable[bool]], until: Callable[[], float]
    ) -> tuple[bool | None, int]:
        """Try a failed write again, with jittered backoff, until it answers or ``until()``.

        Returns its answer (None: still failing at the end) and how many tries it took.
        """
        loop = asyncio.get_running_loop()
        delay, attempts = _RETRY_FIRST, 1
        while (left := until() - loop.time()) > 0:
            await asyncio.sleep(min(left, delay * (0.5 + random.random() / 2)))  # noqa: S311
            attempts += 1
            try:
                return await attempt(), attempts
            except Exception:  # noqa: BLE001 - tried again until the bound
                delay = min(delay * 2, _RETRY_MAX)
        return None, attempts


def _keep(work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task
