"""What the cache sends to Redis, counted by the server: one command per hit, never KEYS/SCAN.

``INFO commandstats`` counts the commands a script runs as well as the
scripts; those inside (GET, HMGET, TIME, SET) are not round trips.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from cache_support import Source

from hardened.cache import Cache
from hardened.stores import RedisStore, hash_tag
from hardened.testing import PrivateRedis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server() -> AsyncIterator[PrivateRedis]:
    """A Redis of this test's own, so its command statistics are this test's alone."""
    redis = PrivateRedis()
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


async def commandstats(client: aioredis.Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in info.items()
        if name not in {"cmdstat_info", "cmdstat_config|resetstat"}
    }


# Connection set-up (a new pooled connection) and the commands the cache scripts run inside.
SET_UP = {"hello", "client|setinfo"}
INSIDE_SCRIPTS = {"get", "hmget", "time", "set", "incr", "hset", "pexpire", "del"}


async def test_a_hit_is_one_command_and_nothing_ever_scans(server: PrivateRedis) -> None:
    """400 hits are 400 EVALSHAs; misses, invalidations and drops never use KEYS or SCAN."""
    client = aioredis.from_url(server.url)
    store = RedisStore.from_url(server.url)
    cache = Cache(store)
    ns = cache.namespace("plans", ttl=3600)
    tenant = uuid.uuid4()
    source = Source({"plans": [1, 2, 3]})
    await ns.get_or_load("k", source, tags=("catalog", "plans"), tenant=tenant)
    await ns.invalidate("unused", tenant=tenant)  # every script loaded: no NOSCRIPT below
    await client.config_resetstat()
    for _ in range(200):
        await ns.get_or_load("k", source, tags=("catalog", "plans"), tenant=tenant)
    await asyncio.gather(
        *(ns.get_or_load("k", source, tags=("catalog", "plans"), tenant=tenant) for _ in range(200))
    )
    stats = await commandstats(client)
    assert stats["evalsha"] == 400  # one round trip per hit
    assert stats["hmget"] == 400  # each reads one entry
    assert stats.keys() - {"evalsha"} <= SET_UP | INSIDE_SCRIPTS
    assert source.calls == 1
    await ns.invalidate("plans", tenant=tenant)
    await ns.get_or_load("k", source, tags=("catalog", "plans"), tenant=tenant)
    await cache.drop_tenant(tenant)
    await asyncio.gather(
        *(ns.get_or_load(f"k{i}", source, tags=("catalog",), tenant=tenant) for i in range(50))
    )
    stats = await commandstats(client)
    assert not {"keys", "scan", "smembers", "sscan"} & stats.keys()
    # 400 hits, 2 bumps, 51 misses (a read and a write each)
    assert stats["evalsha"] == 400 + 2 + 2 * 51
    await store.aclose()
    await client.aclose()


async def test_every_key_of_a_tenant_shares_one_hash_tag(server: PrivateRedis) -> None:
    """Entries, tags and the generation of a tenant live in one Redis Cluster slot."""
    client = aioredis.from_url(server.url)
    store = RedisStore.from_url(server.url)
    cache = Cache(store)
    tenant = uuid.uuid4()
    for name in ("plans", "addons"):
        ns = cache.namespace(name, ttl=3600)
        await ns.get_or_load("a:{b}", Source(), tags=("catalog", "x:{y}"), tenant=tenant)
    keys = [k.decode() async for k in client.scan_iter(count=500)]
    assert len(keys) == 5  # two entries, two tags, the generation (leases freed after the loads)
    assert {hash_tag(k) for k in keys} == {f"cache:t:{tenant}"}
    await store.aclose()
    await client.aclose()
