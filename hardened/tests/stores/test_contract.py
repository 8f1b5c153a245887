"""One contract suite, run against `MemoryStore` and `RedisStore` alike.

Time: the memory backend advances a fake clock; the Redis backend sleeps
through short TTLs, so both run the same assertions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from hardened.errors import StoreUnavailable
from hardened.stores import (
    MemoryState,
    MemoryStore,
    RedisStore,
    Script,
    ScriptError,
    Store,
    hash_tag,
    tagged,
)
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

pytestmark = pytest.mark.anyio

TTL = 0.2  # short enough to sleep through on Redis, long enough for a loaded CI
PAST_TTL = 0.3


@dataclass
class Backend:
    name: str
    store: Store
    advance: Callable[[float], Awaitable[None]]


async def _cleanup(store: RedisStore, prefix: str) -> None:
    keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await store.client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = ManualClock()

        async def advance_clock(seconds: float) -> None:
            clock.now += seconds

        yield Backend("memory", MemoryStore(clock=clock), advance_clock)
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    # from_url: a blocking pool smaller than the 200-wide burst below.
    store = RedisStore.from_url(url, max_connections=20, timeout=2.0, prefix=prefix)
    try:
        yield Backend("redis", store, asyncio.sleep)
    finally:
        await _cleanup(store, prefix)
        await store.aclose()


def key(*parts: str) -> str:
    return tagged("test", *parts, suffix="k")


# -- KeyValue -------------------------------------------------------------


async def test_get_missing_key_is_none(backend: Backend) -> None:
    """A key never written reads as None."""
    assert await backend.store.get(key("missing")) is None


async def test_set_then_get_returns_the_bytes_and_overwrites(backend: Backend) -> None:
    """Set stores bytes as given and a second set replaces them."""
    k = key("kv")
    assert await backend.store.set(k, b"\x00one") is True
    assert await backend.store.get(k) == b"\x00one"
    assert await backend.store.set(k, b"two") is True
    assert await backend.store.get(k) == b"two"


async def test_only_if_absent_writes_once(backend: Backend) -> None:
    """only_if_absent writes a missing key and refuses (False, value kept) an existing one."""
    k = key("nx")
    assert await backend.store.set(k, b"first", only_if_absent=True) is True
    assert await backend.store.set(k, b"second", only_if_absent=True) is False
    assert await backend.store.get(k) == b"first"


async def test_only_if_absent_succeeds_once_the_key_expired(backend: Backend) -> None:
    """An expired key counts as absent for only_if_absent."""
    k = key("nx-expiry")
    assert await backend.store.set(k, b"first", ttl=TTL, only_if_absent=True)
    await backend.advance(PAST_TTL)
    assert await backend.store.set(k, b"second", ttl=TTL, only_if_absent=True) is True
    assert await backend.store.get(k) == b"second"


async def test_value_expires_after_its_ttl(backend: Backend) -> None:
    """A value written with a TTL is readable before it and gone after it."""
    k = key("expiry")
    await backend.store.set(k, b"v", ttl=TTL)
    assert await backend.store.get(k) == b"v"
    await backend.advance(PAST_TTL)
    assert await backend.store.get(k) is None
    assert await backend.store.ttl(k) is None


async def test_ttl_reports_remaining_seconds_or_none(backend: Backend) -> None:
    """The ttl is the remaining seconds, None for a missing key and for a key without expiry."""
    store = backend.store
    await store.set(key("ttl"), b"v", ttl=30)
    remaining = await store.ttl(key("ttl"))
    assert remaining is not None
    assert 29 < remaining <= 30
    await store.set(key("forever"), b"v")
    assert await store.ttl(key("forever")) is None
    assert await store.ttl(key("nothing")) is None


async def test_set_without_ttl_clears_the_previous_ttl(backend: Backend) -> None:
    """Overwriting without a TTL makes the key persistent, as Redis SET does."""
    k = key("persist")
    await backend.store.set(k, b"v", ttl=TTL)
    await backend.store.set(k, b"w")
    await backend.advance(PAST_TTL)
    assert await backend.store.get(k) == b"w"
    assert await backend.store.ttl(k) is None


async def test_ttl_is_rounded_to_whole_milliseconds_of_at_least_one(backend: Backend) -> None:
    """A sub-millisecond TTL still writes (1 ms), then expires."""
    k = key("tiny")
    assert await backend.store.set(k, b"v", ttl=0.0001)
    await backend.advance(0.02)
    assert await backend.store.get(k) is None


async def test_delete_counts_only_existing_keys(backend: Backend) -> None:
    """Delete returns how many of the given keys existed, and zero for no keys."""
    store = backend.store
    await store.set(key("d1"), b"1")
    await store.set(key("d2"), b"2")
    assert await store.delete(key("d1"), key("d2"), key("d3")) == 2
    assert await store.get(key("d1")) is None
    assert await store.delete(key("d1")) == 0
    assert await store.delete() == 0


@pytest.mark.parametrize("ttl", [0, -1.0, float("inf"), float("nan")])
async def test_invalid_ttl_is_refused(backend: Backend, ttl: float) -> None:
    """Zero, negative and non-finite TTLs raise ValueError instead of writing."""
    with pytest.raises(ValueError, match="ttl"):
        await backend.store.set(key("bad-ttl"), b"v", ttl=ttl)
    assert await backend.store.get(key("bad-ttl")) is None


async def test_non_bytes_value_is_refused(backend: Backend) -> None:
    """Values are bytes on every backend; a str raises TypeError."""
    with pytest.raises(TypeError):
        await backend.store.set(key("str"), "text")  # type: ignore[arg-type]


# -- Counters -------------------------------------------------------------


async def test_incr_counts_from_zero_by_any_amount(backend: Backend) -> None:
    """Incrementing starts a missing counter at 0 and adds positive and negative amounts."""
    k = key("count")
    assert await backend.store.incr(k) == 1
    assert await backend.store.incr(k, 5) == 6
    assert await backend.store.incr(k, -10) == -4
    assert await backend.store.get(k) == b"-4"


async def test_incr_ttl_applies_only_when_the_counter_is_created(backend: Backend) -> None:
    """A window counter keeps its first TTL: later increments neither extend nor reset it."""
    store, k = backend.store, key("window")
    assert await store.incr(k, ttl=TTL) == 1
    assert await store.incr(k, ttl=30) == 2
    remaining = await store.ttl(k)
    assert remaining is not None
    assert remaining <= TTL
    await backend.advance(PAST_TTL)
    assert await store.incr(k, ttl=30) == 1
    remaining = await store.ttl(k)
    assert remaining is not None
    assert remaining > 29


async def test_incr_without_ttl_keeps_an_existing_ttl(backend: Backend) -> None:
    """Incrementing without a ttl leaves the counter's expiry as it was."""
    k = key("keep")
    await backend.store.incr(k, ttl=30)
    await backend.store.incr(k)
    remaining = await backend.store.ttl(k)
    assert remaining is not None
    assert remaining > 29


async def test_incr_of_a_non_integer_is_store_unavailable(backend: Backend) -> None:
    """Incrementing a non-integer value fails as StoreUnavailable on both backends."""
    k = key("text")
    await backend.store.set(k, b"01")
    with pytest.raises(StoreUnavailable):
        await backend.store.incr(k)
    with pytest.raises(StoreUnavailable):
        await backend.store.incr(k, ttl=1)


# -- AtomicScripts --------------------------------------------------------


def _echo(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    state.set(keys[0], args[0])
    return [len(keys), state.get(keys[0]), int(args[1]) * 2, None, list(args)]


ECHO = Script(
    "test_echo",
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "return {#KEYS, redis.call('GET', KEYS[1]), tonumber(ARGV[2]) * 2, false, ARGV}",
    _echo,
)


def _refuse(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    raise ScriptError(f"refused {args[0].decode()}")


REFUSE = Script("test_refuse", "return redis.error_reply('HARDENED refused ' .. ARGV[1])", _refuse)


def _clock(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    return b"%d" % int(now * 1000)


CLOCK = Script(
    "test_clock",
    "local t = redis.call('TIME')\n"
    "return string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))",
    _clock,
)


async def test_script_sees_keys_and_encoded_args_and_returns_redis_shapes(
    backend: Backend,
) -> None:
    """Scripts get KEYS and ARGV as bytes and reply with ints, bytes, None and lists alike."""
    k = key("script")
    result = await backend.store.run(ECHO, [k], ["héllo", 21, 1.5, b"raw"])
    assert result == [1, "héllo".encode(), 42, None, ["héllo".encode(), b"21", b"1.5", b"raw"]]
    assert await backend.store.get(k) == "héllo".encode()


async def test_script_refusal_is_script_error(backend: Backend) -> None:
    """A script refusing on purpose raises ScriptError with its message, not StoreUnavailable."""
    with pytest.raises(ScriptError, match=r"^refused now$"):
        await backend.store.run(REFUSE, [], ["now"])


async def test_script_bool_argument_is_refused(backend: Backend) -> None:
    """A bool is not a script argument (it would encode differently per client)."""
    with pytest.raises(TypeError):
        await backend.store.run(ECHO, [key("b")], [True, 1])


async def test_script_clock_is_unix_time_in_seconds(backend: Backend) -> None:
    """A script's now is Unix-epoch time on both backends (server TIME vs anchored clock)."""
    millis = int(await backend.store.run(CLOCK, [], []))
    assert abs(millis / 1000 - time.time()) < 5


async def test_wrong_type_is_store_unavailable(backend: Backend) -> None:
    """Reading a lease (a hash) as a string fails as StoreUnavailable, as WRONGTYPE does."""
    k = key("lease-as-string")
    assert await backend.store.acquire(k, "a", 30) is not None
    with pytest.raises(StoreUnavailable):
        await backend.store.get(k)


# -- Leases ---------------------------------------------------------------


async def test_lease_is_exclusive_until_released(backend: Backend) -> None:
    """A held lease refuses other owners (None) and is free again once released."""
    store, k = backend.store, key("lease")
    token = await store.acquire(k, "a", 30)
    assert token is not None
    assert await store.acquire(k, "b", 30) is None
    assert await store.release(k, "a", token) is True
    assert await store.release(k, "a", token) is False
    assert await store.acquire(k, "b", 30) is not None


async def test_fencing_tokens_increase_across_expiry_and_reacquisition(
    backend: Backend,
) -> None:
    """Every acquisition gets a strictly greater token, after expiry and on re-acquire too."""
    store, k = backend.store, key("fence")
    first = await store.acquire(k, "a", TTL)
    assert first is not None
    again = await store.acquire(k, "a", TTL)  # same owner: fresh token, old one fenced
    assert again is not None
    assert again > first
    assert await store.renew(k, "a", first, 30) is False
    await backend.advance(PAST_TTL)
    second = await store.acquire(k, "b", TTL)
    assert second is not None
    assert second > again
    await store.release(k, "b", second)
    # As if the fence had expired too: it outlives the last token by at least the
    # lease TTL, so time has moved on, and the time floor keeps tokens rising.
    await store.delete(f"{k}:fence")
    await backend.advance(0.01)
    third = await store.acquire(k, "c", TTL)
    assert third is not None
    assert third > second


async def test_renew_extends_only_the_current_holder(backend: Backend) -> None:
    """Renewing keeps the lease alive for the holder; a stale token or another owner fails."""
    store, k = backend.store, key("renew")
    token = await store.acquire(k, "a", TTL)
    assert token is not None
    assert await store.renew(k, "b", token, 30) is False
    assert await store.renew(k, "a", token + 1, 30) is False
    assert await store.renew(k, "a", token, 30) is True
    await backend.advance(PAST_TTL)
    assert await store.acquire(k, "b", 30) is None
    remaining = await store.ttl(k)
    assert remaining is not None
    assert remaining > 29


async def test_expired_lease_cannot_be_renewed_or_released(backend: Backend) -> None:
    """Once a lease expired and was taken over, the old holder's renew and release fail."""
    store, k = backend.store, key("stale")
    old = await store.acquire(k, "a", TTL)
    assert old is not None
    await backend.advance(PAST_TTL)
    assert await store.renew(k, "a", old, 30) is False
    new = await store.acquire(k, "b", 30)
    assert new is not None
    assert await store.release(k, "a", old) is False
    assert await store.renew(k, "a", old, 30) is False
    assert await store.acquire(k, "a", 30) is None


async def test_lease_key_without_hash_tag_is_refused(backend: Backend) -> None:
    """Lease keys must carry a hash tag so the lease and its fence share a cluster slot."""
    with pytest.raises(ValueError, match="hash tag"):
        await backend.store.acquire("plain-key", "a", 1)


async def test_lease_owner_must_not_be_empty(backend: Backend) -> None:
    """An empty owner is refused rather than matching another empty owner."""
    with pytest.raises(ValueError, match="owner"):
        await backend.store.acquire(key("owner"), "", 1)


async def test_concurrent_acquire_storm_has_exactly_one_winner(backend: Backend) -> None:
    """200 concurrent acquires of one lease yield one token; the pool waits, never fails."""
    k = key("storm")
    results = await asyncio.gather(*(backend.store.acquire(k, f"o{i}", 30) for i in range(200)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1


async def test_ping_answers_when_the_backend_is_up(backend: Backend) -> None:
    """A ping returns quietly on a healthy backend (health checks rely on it raising otherwise)."""
    await backend.store.ping()


# -- Keys -----------------------------------------------------------------


def test_tagged_builds_a_hash_tagged_key() -> None:
    """The tagged helper puts namespace and parts inside one hash tag and appends the suffix."""
    assert tagged("rl", "t1", "login") == "hardened:{rl:t1:login}"
    assert tagged("rl", "t1", suffix="tat") == "hardened:{rl:t1}:tat"
    assert hash_tag(tagged("rl", "t1", suffix="tat")) == "rl:t1"


def test_tagged_escapes_parts_so_keys_never_collide() -> None:
    """Separators and braces in user data are escaped: distinct parts give distinct keys."""
    assert tagged("t", "a:b", "c") != tagged("t", "a", "b:c")
    evil = tagged("t", "x}y{z", "%3A")
    assert hash_tag(evil) == "t:x%7Dy%7Bz:%253A"
    assert evil.count("{") == 1
    assert evil.count("}") == 1


def test_tagged_refuses_empty_namespace_and_braced_suffix() -> None:
    """An empty namespace or a suffix with braces would break the key scheme."""
    with pytest.raises(ValueError, match="namespace"):
        tagged("")
    with pytest.raises(ValueError, match="suffix"):
        tagged("n", suffix="{x}")


def test_hash_tag_follows_the_cluster_rule() -> None:
    """hash_tag is the text inside the first braces, and None for no or empty braces."""
    assert hash_tag("a{b}c{d}") == "b"
    assert hash_tag("plain") is None
    assert hash_tag("a{}b") is None
    assert hash_tag("a{b") is None
