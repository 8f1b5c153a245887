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
from hardened.stores import RedisStore, tagged
from hardened.stores._scripts import LEASE_ACQUIRE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        yield store
    finally:
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()


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
