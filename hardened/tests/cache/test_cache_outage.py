"""Redis gone, hung or back: the cache fails open, counts it, and loses no invalidation."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from cache_support import Source

from hardened.cache import Cache, CacheConfig
from hardened.errors import StoreUnavailable
from hardened.observability.metrics import fast_counter
from hardened.stores import RedisStore
from hardened.testing import PrivateRedis

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

LOOKUPS = fast_counter("cache_lookups_total", "")
EVENTS = fast_counter("cache_events_total", "")


def ns_name() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    """A Redis of this test's own, kept across restarts, so stopping it disturbs nobody."""
    redis = PrivateRedis(persistent=True)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


async def test_a_stopped_redis_serves_from_the_loader_and_the_cache_comes_back(
    server: PrivateRedis,
) -> None:
    """Redis stopped: every read is answered by the loader, counted; restarted: hits again."""
    store = RedisStore.from_url(server.url, timeout=0.5)
    cache = Cache(store, CacheConfig(outage_cooldown=0.1))
    ns = cache.namespace(ns_name(), ttl=3600)
    tenant = uuid.uuid4()
    source = Source("from the CRM")
    assert await ns.get_or_load("plans", source, tenant=tenant) == "from the CRM"
    server.stop()
    results = []
    for _ in range(5):
        results += await asyncio.gather(
            *(ns.get_or_load("plans", source, tenant=tenant) for _ in range(20))
        )
    assert results == ["from the CRM"] * 100
    assert LOOKUPS.value(ns.name, "bypass") == 100
    assert EVENTS.value(ns.name, "store_error") >= 1
    server.start()
    await asyncio.sleep(0.2)  # past the cooldown: the next read asks Redis again
    loads = source.calls
    for _ in range(10):
        assert await ns.get_or_load("plans", source, tenant=tenant) == "from the CRM"
    assert source.calls == loads  # the entry written before the outage is back (persisted)
    assert LOOKUPS.value(ns.name, "hit") == 10
    await store.aclose()


async def test_a_hung_redis_costs_one_timeout_per_cooldown(server: PrivateRedis) -> None:
    """Redis frozen: the first read waits out the store timeout, the rest skip the store."""
    store = RedisStore.from_url(server.url, timeout=0.2)
    cache = Cache(store, CacheConfig(outage_cooldown=3600))
    ns = cache.namespace(ns_name(), ttl=3600)
    source = Source("v")
    tenant = uuid.uuid4()
    await ns.get_or_load("k", source, tenant=tenant)
    server.freeze()
    try:
        for _ in range(20):
            assert await ns.get_or_load("k", source, tenant=tenant) == "v"
    finally:
        server.thaw()
    assert EVENTS.value(ns.name, "store_error") == 1
    assert LOOKUPS.value(ns.name, "bypass") == 20
    await store.aclose()


async def test_an_invalidation_refused_by_a_down_redis_is_applied_before_the_next_read(
    server: PrivateRedis,
) -> None:
    """invalidate() during an outage raises and is kept; once Redis is back it is sent first."""
    store = RedisStore.from_url(server.url, timeout=0.5)
    cache = Cache(store, CacheConfig(outage_cooldown=0))
    ns = cache.namespace(ns_name(), ttl=3600)
    tenant = uuid.uuid4()
    source = Source("before the write")
    await ns.get_or_load("k", source, tags=("catalog",), tenant=tenant)
    server.stop()
    source.value = "after the write"
    with pytest.raises(StoreUnavailable):
        await ns.invalidate("catalog", tenant=tenant)
    server.start()  # the entry loaded before the write survived the restart
    assert await ns.get_or_load("k", source, tags=("catalog",), tenant=tenant) == "after the write"
    assert await ns.get_or_load("k", source, tags=("catalog",), tenant=tenant) == "after the write"
    await store.aclose()
