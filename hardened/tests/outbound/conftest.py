"""Outbound test backends: Redis database 11 (flushed per test), the memory store, or both.

``cap_store`` runs a test on a `MemoryStore` (on a hand-moved clock) and on a
`RedisStore` alike; ``let_time_pass`` moves whichever clock that store uses.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from hardened.stores import MemoryStore, RedisStore
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from hardened.stores import Store

#: The Redis database the outbound tests own (every test that uses it flushes it).
REDIS_DB = 11


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio only (the library targets asyncio)."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url(redis_url: str) -> str:
    """The shared test Redis (skipped when absent), on the outbound tests' own database."""
    return urlunsplit(urlsplit(redis_url)._replace(path=f"/{REDIS_DB}"))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on database 11, flushed before and after the test."""
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
def manual_clock() -> ManualClock:
    """The clock of the test's memory store, moved by hand."""
    return ManualClock()


@pytest.fixture
def memory_store(manual_clock: ManualClock) -> MemoryStore:
    """A memory store on the hand-moved clock."""
    return MemoryStore(clock=manual_clock)


@pytest.fixture
async def redis_store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[RedisStore]:
    """A Redis store on database 11 (flushed), with a generous timeout for a busy machine."""
    store = RedisStore.from_url(redis_url, max_connections=20, timeout=5.0)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(params=["memory", "redis"])
def cap_store(request: pytest.FixtureRequest) -> Store:
    """Each test using it runs on both stores: one script, its Lua and its twin."""
    store: Store = request.getfixturevalue(f"{request.param}_store")
    return store


@pytest.fixture
def let_time_pass(
    cap_store: Store, manual_clock: ManualClock
) -> Callable[[float], Awaitable[None]]:
    """Let ``seconds`` pass on ``cap_store``'s clock: move the memory clock, or sleep for Redis."""

    async def advance(seconds: float) -> None:
        if isinstance(cap_store, MemoryStore):
            manual_clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    return advance
