"""What only the Redis backend has to prove: script caching, error mapping, the pool."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hardened.errors import StoreUnavailable
from hardened.stores import RedisStore, Script, tagged
from hardened.stores._scripts import LEASE_ACQUIRE
from hardened.testing import scratch_redis_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"

# Busy-waits ARGV[1] ms on the server clock, then returns ARGV[2]: holds a connection mid-reply.
SLOW_ECHO = Script(
    "test_slow_echo",
    "local t = redis.call('TIME')\n"
    "local start = t[1] * 1000000 + t[2]\n"
    "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= ARGV[1] * 1000\n"
    "return ARGV[2]\n",
    lambda state, keys, args, now: args[1],
)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    async with scratch_redis_store(redis_url) as store:
        yield store


def _errors(operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "hardened_store_errors_total", {"backend": "redis", "operation": operation}
    )
    return value or 0.0


async def test_script_runs_again_after_script_flush(store: RedisStore) -> None:
    """After SCRIPT FLUSH the store reloads the script on NOSCRIPT and the call succeeds."""
    key = tagged("test", "noscript")
    first = await store.acquire(key, "a", 30)
    assert first is not None
    await store.client.script_flush()
    assert await store.client.script_exists(LEASE_ACQUIRE.sha) == [False]
    second = await store.acquire(key, "a", 30)
    assert second is not None
    assert second > first
    assert await store.client.script_exists(LEASE_ACQUIRE.sha) == [True]


async def test_local_sha_matches_the_server(store: RedisStore) -> None:
    """The SHA1 computed locally is the one Redis assigns, so EVALSHA hits the cache."""
    assert await store.client.script_load(LEASE_ACQUIRE.source) == LEASE_ACQUIRE.sha


async def test_prefix_is_applied_to_every_key(store: RedisStore, redis_url: str) -> None:
    """Keys, counter keys and script keys all land under the store's prefix."""
    raw = Redis.from_url(redis_url)
    try:
        k = tagged("test", "prefixed")
        await store.set(k, b"v")
        await store.incr(k + ":n", ttl=30)
        await store.acquire(k + ":lease", "a", 30)
        prefix = store._prefix
        assert await raw.get(prefix + k) == b"v"
        assert await raw.get(prefix + k + ":n") == b"1"
        assert await raw.hget(prefix + k + ":lease", "owner") == b"a"
        assert await raw.exists(k) == 0
    finally:
        await raw.aclose()


async def test_closed_port_raises_store_unavailable_fast() -> None:
    """A refused connection surfaces as StoreUnavailable (chained), without retries."""
    store = RedisStore.from_url(CLOSED_PORT_URL, timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.get(tagged("test", "secret-key"))
        assert time.monotonic() - started < 1.0
        assert isinstance(caught.value.__cause__, RedisError)
        assert caught.value.context == {
            "backend": "redis",
            "operation": "get",
            "error": type(caught.value.__cause__).__name__,
        }
        assert "secret-key" not in repr(caught.value.context)
    finally:
        await store.aclose()


async def test_every_operation_maps_backend_errors() -> None:
    """Each contract method and ping raise StoreUnavailable, never a redis exception."""
    store = RedisStore.from_url(CLOSED_PORT_URL, timeout=0.2)
    k = tagged("test", "down")
    calls = [
        store.get(k),
        store.set(k, b"v", ttl=1, only_if_absent=True),
        store.delete(k),
        store.ttl(k),
        store.incr(k),
        store.incr(k, ttl=1),
        store.acquire(k, "a", 1),
        store.renew(k, "a", 1, 1),
        store.release(k, "a", 1),
        store.ping(),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await store.aclose()


async def test_store_errors_are_counted_per_operation() -> None:
    """Each mapped failure increments hardened_store_errors_total{backend, operation}."""
    store = RedisStore.from_url(CLOSED_PORT_URL, timeout=0.2)
    before_get, before_script = _errors("get"), _errors("lease_acquire")
    try:
        with pytest.raises(StoreUnavailable):
            await store.get(tagged("test", "counted"))
        with pytest.raises(StoreUnavailable):
            await store.acquire(tagged("test", "counted"), "a", 1)
    finally:
        await store.aclose()
    assert _errors("get") == before_get + 1
    assert _errors("lease_acquire") == before_script + 1


async def test_unresponsive_server_times_out_as_store_unavailable() -> None:
    """A server that accepts but never answers is cut off by the socket timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get(tagged("test", "silent"))
        assert time.monotonic() - started < 1.5
    finally:
        await store.aclose()
        server.close()


async def test_burst_wider_than_the_pool_waits_instead_of_failing(redis_url: str) -> None:
    """200 concurrent calls through a 5-connection blocking pool all succeed."""
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, max_connections=5, timeout=2.0, prefix=prefix)
    k = tagged("test", "burst")
    try:
        await asyncio.gather(*(store.incr(k) for _ in range(200)))
        assert await store.get(k) == b"200"
    finally:
        await store.delete(k)
        await store.aclose()


async def test_aclose_leaves_a_borrowed_client_open(redis_url: str) -> None:
    """A store built on a caller's client does not close it; from_url stores close theirs."""
    client = Redis.from_url(redis_url)
    try:
        store = RedisStore(client)
        await store.ping()
        await store.aclose()
        assert await client.ping() is True
    finally:
        await client.aclose()


@pytest.fixture
async def one_connection(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, max_connections=1, timeout=2.0)
    try:
        yield store
    finally:
        await store.aclose()


async def test_cancelled_call_never_hands_its_reply_to_the_next(
    one_connection: RedisStore,
) -> None:
    """A call cancelled while awaiting its reply drops its connection; the next reads its own."""
    store = one_connection
    first = asyncio.create_task(store.run(SLOW_ECHO, [], [150, "first"]))
    await asyncio.sleep(0.05)  # sent, the server is still busy with it
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await store.run(SLOW_ECHO, [], [0, "second"]) == b"second"


async def test_waiters_get_a_returned_connection(one_connection: RedisStore) -> None:
    """Calls queued on an exhausted pool proceed, in turn, when the connection comes back."""
    store = one_connection
    pool = store.client.connection_pool
    held = await pool.get_connection()
    try:
        waiting = [asyncio.create_task(store.run(SLOW_ECHO, [], [0, str(i)])) for i in range(3)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in waiting)
    finally:
        await pool.release(held)
    assert await asyncio.gather(*waiting) == [b"0", b"1", b"2"]


async def test_pool_wait_is_bounded_by_the_timeout(redis_url: str) -> None:
    """With every connection taken, a call fails as StoreUnavailable after `timeout`."""
    store = RedisStore.from_url(redis_url, max_connections=1, timeout=0.2)
    pool = store.client.connection_pool
    try:
        held = await pool.get_connection()
        try:
            with pytest.raises(StoreUnavailable):
                await store.run(SLOW_ECHO, [], [0, "late"])
        finally:
            await pool.release(held)
        assert await store.run(SLOW_ECHO, [], [0, "back"]) == b"back"
    finally:
        await store.aclose()


async def test_connection_closed_by_the_server_is_replaced(
    one_connection: RedisStore, redis_url: str
) -> None:
    """A pooled connection the server killed between calls is replaced, not an outage."""
    store = one_connection
    client_id = await store.client.client_id()
    admin = Redis.from_url(redis_url)
    try:
        assert await admin.client_kill_filter(_id=client_id) == 1
    finally:
        await admin.aclose()
    await asyncio.sleep(0.05)  # let the loop see the close
    assert await store.run(SLOW_ECHO, [], [0, "fresh"]) == b"fresh"
    assert await store.client.client_id() != client_id
