"""What only the memory backend has to prove: bounded memory and its clock."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from hardened.errors import StoreUnavailable
from hardened.stores import MemoryState, MemoryStore, Script, tagged
from hardened.stores._state import MemoryDataError
from hardened.stores.memory import SWEEP_EVERY
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import Sequence

START = 50.0

pytestmark = pytest.mark.anyio


async def test_expired_keys_nobody_reads_are_swept_by_later_writes() -> None:
    """Expired keys are reclaimed by the bounded sweep on writes, without being read."""
    clock = ManualClock(START)
    store = MemoryStore(clock=clock, sweep_batch=16)
    for i in range(1000):
        await store.set(tagged("t", str(i)), b"v", ttl=1)
    assert len(store.state) == 1000
    clock.now += 2
    for _ in range(100):
        await store.set(tagged("t", "live"), b"v")
    assert len(store.state) == 1


async def test_sweep_does_a_bounded_batch_of_work_per_write() -> None:
    """Writes reclaim at most sweep_batch expired keys each, in batches: none pays the backlog."""
    clock = ManualClock(START)
    store = MemoryStore(clock=clock, sweep_batch=2)
    for i in range(SWEEP_EVERY * 20):
        await store.set(tagged("t", str(i)), b"v", ttl=1)
    clock.now += 2
    for _ in range(SWEEP_EVERY - 1):
        await store.set(tagged("t", "live"), b"v")
    assert len(store.state) == SWEEP_EVERY * 20 + 1  # no sweep yet
    await store.set(tagged("t", "live"), b"v")
    assert len(store.state) == SWEEP_EVERY * 20 + 1 - SWEEP_EVERY * 2
    for _ in range(SWEEP_EVERY):
        await store.incr(tagged("t", "count"))
    assert len(store.state) == SWEEP_EVERY * 20 + 2 - 2 * SWEEP_EVERY * 2


async def test_scripts_sweep_too() -> None:
    """Script runs count as writes for the sweep, so a limiter alone keeps memory bounded."""
    clock = ManualClock(START)
    store = MemoryStore(clock=clock, sweep_batch=64)
    for i in range(100):
        await store.set(tagged("t", str(i)), b"v", ttl=1)
    clock.now += 2
    for _ in range(SWEEP_EVERY):
        await store.incr(tagged("t", "hits"), ttl=60)  # a script on this backend
    assert len(store.state) == 1


async def test_rewriting_one_key_keeps_the_expiry_heap_bounded() -> None:
    """Re-setting a key with a TTL many times does not grow the deadline heap without bound."""
    store = MemoryStore(clock=ManualClock(START))
    for _ in range(20_000):
        await store.set(tagged("t", "hot"), b"v", ttl=300)
    assert len(store.state._heap) <= 2 * 1 + 1024 + 1


async def test_script_now_is_wall_time_that_follows_the_injected_clock() -> None:
    """now() starts at wall time and advances exactly with the TTL clock."""
    clock = ManualClock(START)
    store = MemoryStore(clock=clock)
    start = store.now()
    assert abs(start - time.time()) < 1
    clock.now += 3600
    assert store.now() == pytest.approx(start + 3600)


async def test_fence_expiry_keeps_tokens_increasing() -> None:
    """Once the fence itself expired (after its retention), the next token is still greater."""
    clock = ManualClock(START)
    store = MemoryStore(clock=clock)
    k = tagged("t", "lease")
    token = await store.acquire(k, "a", 1)
    assert token is not None
    clock.now += 2 * 3600
    assert await store.get(f"{k}:fence") is None
    later = await store.acquire(k, "b", 1)
    assert later is not None
    assert later > token


@pytest.mark.parametrize(
    "raw", [b"", b" 1", b"+1", b"01", b"1.0", b"1_000", b"9223372036854775808"]
)
def test_incrby_parses_integers_as_strictly_as_redis(raw: bytes) -> None:
    """INCRBY accepts only canonical 64-bit integers, like Redis string2ll."""
    state = MemoryState(ManualClock(START))
    state.set("k", raw)
    with pytest.raises(MemoryDataError):
        state.incrby("k", 1)


def test_incrby_overflow_is_refused() -> None:
    """An increment past the 64-bit range fails instead of growing a Python int."""
    state = MemoryState(ManualClock(START))
    state.set("k", b"9223372036854775807")
    with pytest.raises(MemoryDataError, match="overflow"):
        state.incrby("k", 1)


def test_emptied_hashes_and_sets_disappear() -> None:
    """Removing the last field or member deletes the key, as in Redis."""
    state = MemoryState(ManualClock(START))
    state.hset("h", {b"f": b"1"})
    state.sadd("s", b"m")
    assert state.hdel("h", b"f") == 1
    assert state.srem("s", b"m") == 1
    assert not state.exists("h")
    assert not state.exists("s")
    assert state.hset("h", {}) == 0
    assert state.sadd("s") == 0
    assert len(state) == 0


def test_hset_and_incrby_keep_the_ttl_but_set_clears_it() -> None:
    """Only SET resets a TTL; HSET and INCRBY leave it in place."""
    state = MemoryState(ManualClock(START))
    state.hset("h", {b"f": b"1"})
    state.pexpire("h", 5000)
    state.hset("h", {b"g": b"2"})
    state.set("n", b"1", px=5000)
    state.incrby("n", 1)
    assert state.pttl("h") == 5000
    assert state.pttl("n") == 5000
    state.set("n", b"0")
    assert state.pttl("n") == -1
    assert state.pttl("missing") == -2


async def test_wrong_type_is_counted_as_a_store_error() -> None:
    """A data error on the memory backend is StoreUnavailable with backend and operation."""
    store = MemoryStore()
    k = tagged("t", "hash")
    await store.acquire(k, "a", 1)
    with pytest.raises(StoreUnavailable) as caught:
        await store.get(k)
    assert caught.value.context["backend"] == "memory"
    assert caught.value.context["operation"] == "get"


def _argv(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    return list(args)


ARGV = Script("test_memory_argv", "return ARGV", _argv)


async def test_pre_encoded_args_are_reused_and_others_still_encoded() -> None:
    """A reused all-bytes tuple passes as is; other argument sequences are encoded or refused."""
    store = MemoryStore()
    encoded = (b"1", b"two")
    assert await store.run(ARGV, [], encoded) == [b"1", b"two"]
    assert await store.run(ARGV, [], encoded) == [b"1", b"two"]
    assert await store.run(ARGV, [], (b"1", 2)) == [b"1", b"2"]
    mutable = [b"a"]
    assert await store.run(ARGV, [], mutable) == [b"a"]
    mutable.append(3)  # type: ignore[arg-type]  # a list is checked on every run
    assert await store.run(ARGV, [], mutable) == [b"a", b"3"]
    with pytest.raises(TypeError):
        await store.run(ARGV, [], (b"1", True))
    assert await store.run(ARGV, [], encoded) == [b"1", b"two"]
