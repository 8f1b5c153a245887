"""Stampedes: one load for a thousand callers, in one process and across four; XFetch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cache_support import Backend, Source

from hardened.cache import Cache, CacheConfig
from hardened.observability.metrics import fast_counter
from hardened.testing import scratch_redis_store

pytestmark = pytest.mark.anyio

LOOKUPS = fast_counter("cache_lookups_total", "")
EVENTS = fast_counter("cache_events_total", "")
WORKER = Path(__file__).with_name("cache_worker.py")


def ns_name() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


async def test_a_thousand_concurrent_cold_calls_load_once(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """1,000 concurrent misses of one key: one load, every caller gets its value, nobody errors."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=3600)
    source = Source({"plans": 3}, delay=0.1)
    results = await asyncio.gather(
        *(ns.get_or_load("plans", source) for _ in range(1000)), return_exceptions=True
    )
    assert source.calls == 1
    assert results == [{"plans": 3}] * 1000


async def test_cancelling_the_first_caller_fails_nobody_else(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """The load is shielded: its first caller leaves, the others still get the value."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=3600)
    source = Source("value", delay=0.2)
    first = asyncio.create_task(ns.get_or_load("k", source))
    while not source.running:  # the first caller's load is under way
        await asyncio.sleep(0.005)
    others = [asyncio.create_task(ns.get_or_load("k", source)) for _ in range(100)]
    await asyncio.sleep(0)
    first.cancel()
    results = await asyncio.gather(*others, return_exceptions=True)
    assert first.cancelled()
    assert results == ["value"] * 100
    assert (source.calls, source.cancelled) == (1, 0)


async def test_the_load_is_cancelled_when_its_last_caller_leaves(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """Every waiter gone: the load is cancelled, its lease freed; the next caller loads at once."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=3600)
    source = Source("value", delay=30)
    callers = [asyncio.create_task(ns.get_or_load("k", source)) for _ in range(10)]
    while not source.running:
        await asyncio.sleep(0.005)
    for task in callers:
        task.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    while source.running:
        await asyncio.sleep(0.005)
    assert source.cancelled == 1
    await ns.cache.wait_idle()  # the lease release runs in the background
    source.delay = 0
    assert await ns.get_or_load("k", source) == "value"
    assert source.calls == 2


async def test_four_processes_of_250_cold_calls_load_once(redis_url: str) -> None:
    """4 processes x 250 concurrent cold calls on one key: one load across all of them."""
    prefix = f"test:{uuid.uuid4().hex}:"
    tenant = str(uuid.uuid4())
    control = aioredis.from_url(redis_url)
    command = [
        sys.executable,
        str(WORKER),
        f"--url={redis_url}",
        f"--prefix={prefix}",
        f"--tenant={tenant}",
    ]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)
    ]
    try:
        while int(await control.get(f"{prefix}ready") or 0) < 4:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            await asyncio.sleep(0.02)
        await control.set(f"{prefix}go", 1)
        outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
        assert int(await control.get(f"{prefix}loads") or 0) == 1
        assert [r["errors"] for r in reports] == [[]] * 4
        assert [r["values"] for r in reports] == [['{"plans": "loaded"}']] * 4
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        keys = [k async for k in control.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await control.delete(*keys)
        await control.aclose()


async def test_xfetch_readers_across_an_expiry_cause_at_most_two_loads_and_never_wait(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """1,000 readers across an expiry: <= 2 loads, and no reader awaited a load (0 misses)."""
    cache = Cache(backend.store)
    ns = cache.namespace(ns_name(), ttl=2.0, grace=3600)
    source = Source("v", delay=0.05)
    await ns.get_or_load("k", source)  # the one awaited load: the cold start
    misses = LOOKUPS.value(ns.name, "miss")
    for _ in range(40):  # 40 waves of 25 readers over ~4 s of store time: one expiry inside
        wave = await asyncio.gather(*(ns.get_or_load("k", source) for _ in range(25)))
        assert wave == ["v"] * 25
        await backend.advance(0.1)
    await cache.wait_idle()
    assert LOOKUPS.value(ns.name, "miss") == misses
    assert 1 <= source.calls - 1 <= 2


async def test_xfetch_refreshes_early_while_readers_keep_hitting(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """With a large beta a hit starts one background refresh; readers keep getting hits."""
    cache = Cache(backend.store, CacheConfig(beta=1e9))
    ns = cache.namespace(ns_name(), ttl=3600)
    source = Source("v1")
    await ns.get_or_load("k", source)  # records its load time (>= 1 ms)
    source.value, source.delay = "v2", 0.05
    readers = await asyncio.gather(*(ns.get_or_load("k", source) for _ in range(100)))
    assert readers == ["v1"] * 100
    await cache.wait_idle()
    assert source.calls == 2  # one early refresh, not one per reader
    assert EVENTS.value(ns.name, "early_refresh") >= 1
    assert await ns.get_or_load("k", source) == "v2"
    await cache.aclose()  # that hit started another early refresh


async def test_an_early_refresh_is_one_load_across_processes(redis_url: str) -> None:
    """Two caches (two processes' worth) refreshing early share the store's lease: one load."""
    async with scratch_redis_store(redis_url) as store:
        tenant = uuid.uuid4()
        name = ns_name()
        first = Cache(store, CacheConfig(beta=1e9)).namespace(name, ttl=3600)
        second = Cache(store, CacheConfig(beta=1e9)).namespace(name, ttl=3600)
        source = Source("v1")
        await first.get_or_load("k", source, tenant=tenant)
        source.delay = 0.2
        await asyncio.gather(
            *(
                ns.get_or_load("k", source, tenant=tenant)
                for ns in (first, second)
                for _ in range(50)
            )
        )
        await first.cache.wait_idle()
        await second.cache.wait_idle()
        assert source.calls == 2
