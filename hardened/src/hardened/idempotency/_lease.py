"""The lease of a held claim: renewed in the background, released fenced and shielded.

One implementation for the three holders (the HTTP middleware,
`Idempotent.operation()` and `run_phases`), so they agree on what a missed
beat, a takeover and a cancelled caller mean:

* Renewal starts as a timer, and becomes a task only when the timer fires. A
  holder that finishes within one interval, almost every HTTP request, pays
  for one ``call_later`` and nothing else.
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
import random
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from hardened.idempotency._keys import key_hash_for_logs
from hardened.observability._metrics import counter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from hardened.idempotency._contracts import IdempotencyBackend

__all__ = ["DEFAULT_COMPLETE_RETRY_FOR", "HeldLease"]

DEFAULT_COMPLETE_RETRY_FOR = 300.0
"""Seconds a failed complete is retried: rides out a failover or a database restart."""

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


class HeldLease:
    """A claimed key's token and lease, renewed every ``interval`` seconds until `stop`."""

    __slots__ = (
        "_backend",
        "_calling",
        "_completing",
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
        self._handle = loop.call_later(interval, self._start)

    @property
    def key_hash(self) -> str:
        """`key_hash_for_logs` of the client's key (computed when something is logged)."""
        return key_hash_for_logs(self._log_key)

    def _start(self) -> None:
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
        if not self._completing:
            await self._halt()

    async def _halt(self) -> None:
        self._stopped = True
        self._handle.cancel()
        task = self._task
        if task is None or task.done():
            return
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
