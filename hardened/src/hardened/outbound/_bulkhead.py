"""A lane's bulkhead: at most ``max_concurrent`` calls at once per process, a bounded FIFO queue.

Written on a deque of futures rather than `asyncio.Semaphore`, whose history of
lost and doubled wake-ups under cancellation is the reason this exists. The
count is a single number, ``in_flight``: permits taken, including one handed
to a waiter that has not resumed yet; ``available`` is what is left of
``max_concurrent``. Every transition happens in plain (non-awaiting) code on
the loop, so each one is atomic:

* ``release`` hands the permit straight to the oldest live waiter (``in_flight``
  unchanged, no barging: a newcomer cannot take it first) or, with no one
  waiting, decrements ``in_flight``.
* A waiter's timer refuses it only while its future is still pending (it is
  removed from the queue at once); once the permit was handed, the grant wins.
* A waiter cancelled (or hit by any exception) after the permit was handed to
  its future, but before it resumed, passes that permit on as ``release`` would;
  one cancelled before a grant only leaves the queue.

Hence a live waiter exists only while ``in_flight == max_concurrent``, which is
why the fast path needs no await. Not thread-safe: one event loop per bulkhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING

from hardened.outbound._errors import BulkheadFull

if TYPE_CHECKING:
    from collections.abc import Callable

    from hardened.outbound._config import BulkheadConfig

__all__ = ["Bulkhead"]


class Bulkhead:
    """Permits for one lane of one dependency; ``acquire`` then exactly one ``release``."""

    def __init__(
        self,
        name: str,
        config: BulkheadConfig,
        *,
        on_wait: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self._on_wait = on_wait
        self._clock = clock
        self._in_flight = 0
        # Pending futures are waiters; a done one is a cancelled waiter not yet cleaned up
        # (granted and expired futures leave the deque as they complete).
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def in_flight(self) -> int:
        """Permits taken (a permit handed to a waiter that has not resumed yet included)."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Callers waiting for a permit."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def available(self) -> int:
        """Permits free to take at once."""
        return self.config.max_concurrent - self._in_flight

    async def acquire(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - time left
        """Take a permit, waiting at most ``min(max_wait, timeout)`` in the queue.

        ``timeout`` is the caller's time left (None: only ``max_wait``); with no
        time left, or the queue full, it refuses with `BulkheadFull` at once.
        """
        config = self.config
        if self._in_flight < config.max_concurrent and not self._waiters:
            self._in_flight += 1  # no await on this path: nothing can slip in between
            return
        wait = config.max_wait if timeout is None else min(config.max_wait, timeout)
        if wait <= 0 or not self._has_room():
            raise BulkheadFull(dependency=self.name)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        began = self._clock()
        timer = loop.call_later(wait, self._expire, waiter)
        try:
            granted = await waiter
        except BaseException:
            if not waiter.done():  # an exception thrown in without cancelling the future
                waiter.cancel()
            if waiter.cancelled():
                self._forget(waiter)
            elif waiter.result():  # handed a permit before it could resume: pass it on
                self._in_flight -= 1
                self._hand_on()
            raise
        finally:
            timer.cancel()
        if not granted:
            raise BulkheadFull(dependency=self.name)
        if self._on_wait is not None:
            try:
                self._on_wait(self._clock() - began)
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        """Give a permit back: to the oldest live waiter, else to the free pool."""
        if self._in_flight <= 0:
            raise RuntimeError(f"bulkhead {self.name!r}: release() without a held permit")
        self._in_flight -= 1
        self._hand_on()

    def _hand_on(self) -> None:
        """One permit just left ``in_flight``: grant it to the oldest pending waiter if any."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # skip the cancelled ones still in the queue
                waiter.set_result(True)
                self._in_flight += 1
                return

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():  # a grant or a cancellation got there first: nothing to do
            self._forget(waiter)
            waiter.set_result(False)

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):  # already skipped by _hand_on
            self._waiters.remove(waiter)

    def _has_room(self) -> bool:
        """Fewer than ``max_queue`` live waiters (dead ones dropped once the deque looks full)."""
        limit = self.config.max_queue
        if len(self._waiters) < limit:
            return True
        live = [waiter for waiter in self._waiters if not waiter.done()]
        self._waiters = deque(live)
        return len(live) < limit
