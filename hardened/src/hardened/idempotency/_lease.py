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
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from hardened.idempotency._keys import key_hash_for_logs
from hardened.observability._metrics import counter

if TYPE_CHECKING:
    from hardened.idempotency._contracts import IdempotencyBackend

__all__ = ["HeldLease"]

_LEASE_LOST = counter(
    "idempotency_lease_lost_total", "Holders that found their lease taken over by another."
)
_RELEASES: set[asyncio.Future[bool | None]] = set()  # asyncio keeps only weak refs to tasks


def _log() -> Any:
    return structlog.get_logger("hardened.idempotency")  # per event: later configuration applies


class HeldLease:
    """A claimed key's token and lease, renewed every ``interval`` seconds until `stop`."""

    __slots__ = (
        "_backend",
        "_calling",
        "_handle",
        "_interval",
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
        self._stopped = self._calling = False
        self._task: asyncio.Task[None] | None = None
        self._handle = asyncio.get_running_loop().call_later(interval, self._start)

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
                alive = True
            finally:
                self._calling = False
            if not alive:
                self.mark_lost("heartbeat")
                return
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
        """Stop renewing; a beat already on the wire is awaited, never cancelled."""
        self._stopped = True
        self._handle.cancel()
        task = self._task
        if task is None or task.done():
            return
        if not self._calling:
            task.cancel()  # it is sleeping between beats
        await asyncio.wait((task,))

    async def release(self) -> bool | None:
        """Give the key back (fenced); None when the backend failed (logged: the lease lapses)."""
        task = asyncio.ensure_future(self._release())
        _RELEASES.add(task)
        task.add_done_callback(_RELEASES.discard)
        return await asyncio.shield(task)

    async def _release(self) -> bool | None:
        try:
            return await self._backend.release(self.key, self.token)
        except Exception:  # noqa: BLE001 - the holder's own outcome wins; the lease lapses anyway
            _log().warning("idempotency.release_failed", key_hash=self.key_hash)
            return None
