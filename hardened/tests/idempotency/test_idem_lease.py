"""The shared lease of a held claim (`HeldLease`), over a real memory backend.

The backend is `StoreBackend(MemoryStore)` with its heartbeat slowed or failed
on purpose, so the cases the three holders rely on happen deterministically:
a beat on the wire when the holder stops, a beat the store cannot answer, and
a release whose caller is cancelled.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from hardened.errors import StoreUnavailable
from hardened.idempotency import Claimed, StoreBackend
from hardened.idempotency._lease import _BACKGROUND, HeldLease
from hardened.stores import MemoryStore

pytestmark = pytest.mark.anyio


class SlowBeats(StoreBackend):
    """Heartbeats that take ``delay`` seconds, or fail while ``failing`` is set; counted."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.delay = 0.0
        self.failing = False
        self.started = 0
        self.finished = 0
        self.on_wire = asyncio.Event()

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        self.started += 1
        self.on_wire.set()
        await asyncio.sleep(self.delay)
        if self.failing:
            raise StoreUnavailable(context={"backend": "test"})
        alive = await super().heartbeat(key, token, lease=lease)
        self.finished += 1
        return alive

    async def release(self, key: str, token: int) -> bool:
        await asyncio.sleep(self.delay)
        return await super().release(key, token)


async def _held(backend: SlowBeats, *, lease: float = 5.0, interval: float = 0.01) -> HeldLease:
    key = uuid.uuid4().hex
    claim = await backend.claim(key, b"fp", lease=lease, retention=60.0)
    assert isinstance(claim, Claimed)
    return HeldLease(backend, key, claim.token, lease=lease, interval=interval, log_key=key)


async def test_stop_waits_for_a_beat_on_the_wire_instead_of_cancelling_it() -> None:
    """A holder stopping mid-beat lets that beat finish: a statement is never cut in half."""
    backend = SlowBeats(MemoryStore())
    backend.delay = 0.1
    held = await _held(backend)
    await backend.on_wire.wait()
    await held.stop()
    assert (backend.started, backend.finished) == (1, 1)
    await asyncio.sleep(0.05)
    assert backend.started == 1  # and no beat after the stop


async def test_holder_done_within_one_interval_never_beats() -> None:
    """A short holder pays for a timer only: no heartbeat reaches the backend."""
    backend = SlowBeats(MemoryStore())
    held = await _held(backend, interval=0.2)
    await held.stop()
    await asyncio.sleep(0.3)
    assert backend.started == 0


async def test_failed_beats_are_retried_and_do_not_lose_the_lease() -> None:
    """A beat the store cannot answer is retried at the next interval; the lease is not lost."""
    backend = SlowBeats(MemoryStore())
    backend.failing = True
    held = await _held(backend)
    while backend.started < 3:
        await asyncio.sleep(0.01)
    backend.failing = False
    while backend.finished < 1:
        await asyncio.sleep(0.01)
    await held.stop()
    assert not held.lost


async def test_beat_finding_a_takeover_marks_the_lease_lost() -> None:
    """Once another holder has the key, the next beat marks this lease lost and stops beating."""
    backend = SlowBeats(MemoryStore())
    held = await _held(backend, lease=0.05, interval=0.6)
    await asyncio.sleep(0.1)  # the lease lapses well before the first beat
    taken = await backend.claim(held.key, b"fp", lease=5.0, retention=60.0)
    assert isinstance(taken, Claimed)
    while not held.lost:
        await asyncio.sleep(0.02)
    beats = backend.started
    await asyncio.sleep(0.3)
    assert backend.started == beats
    await held.stop()


async def test_release_survives_the_cancellation_of_its_caller() -> None:
    """A caller cancelled while releasing: the release still reaches the store."""
    backend = SlowBeats(MemoryStore())
    held = await _held(backend)
    await held.stop()
    backend.delay = 0.05
    releasing = asyncio.ensure_future(held.release())
    await asyncio.sleep(0.01)  # the release is under way
    releasing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await releasing
    await asyncio.sleep(0.1)
    again = await backend.claim(held.key, b"fp", lease=5.0, retention=60.0)
    assert isinstance(again, Claimed)
    assert again.token > held.token


class FailingReleases(StoreBackend):
    """A real memory backend whose releases fail ``failures`` times; attempts are counted."""

    def __init__(self, store: MemoryStore, failures: int) -> None:
        super().__init__(store)
        self.failures = failures
        self.attempts = 0
        self.landed = asyncio.Event()

    async def release(self, key: str, token: int) -> bool:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StoreUnavailable(context={"backend": "test"})
        released = await super().release(key, token)
        self.landed.set()
        return released


async def _until_no_release_pending() -> None:
    while _BACKGROUND:
        await asyncio.sleep(0.01)


async def test_failed_release_lands_later_without_the_caller_waiting() -> None:
    """A release that fails answers None at once; background tries free the key, then stop."""
    backend = FailingReleases(MemoryStore(), failures=3)
    held = await _held(backend, lease=60.0)
    await held.stop()
    assert await held.release() is None
    assert backend.attempts == 1
    await asyncio.wait_for(backend.landed.wait(), 30)
    await asyncio.wait_for(_until_no_release_pending(), 30)
    assert backend.attempts == 4
    again = await backend.claim(held.key, b"fp", lease=5.0, retention=60.0)
    assert isinstance(again, Claimed)


async def test_release_retries_end_when_the_lease_would_have_lapsed() -> None:
    """A store that never answers: the retries stop by the lease's end, so no task is left."""
    backend = FailingReleases(MemoryStore(), failures=10**9)
    held = await _held(backend, lease=0.5)
    await held.stop()
    assert await held.release() is None
    await asyncio.wait_for(_until_no_release_pending(), 30)
    assert backend.attempts > 1
    assert not backend.landed.is_set()
