"""Cache test backends: the memory store on a hand-moved clock, and real Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from cache_support import Backend, Source

from hardened._context import tenant_id_var
from hardened.stores import MemoryStore
from hardened.testing import ManualClock, scratch_redis_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each cache test runs on both stores: same scripts, same answers."""
    if request.param == "memory":
        clock = ManualClock()

        async def advance_clock(seconds: float) -> None:
            clock.now += seconds

        yield Backend("memory", MemoryStore(clock=clock), advance_clock)
        return
    url: str = request.getfixturevalue("redis_url")
    async with scratch_redis_store(url, max_connections=20, timeout=5.0) as store:
        yield Backend("redis", store, asyncio.sleep)


@pytest.fixture
async def tenant() -> AsyncIterator[uuid.UUID]:
    """A fresh tenant in context for the test."""
    tid = uuid.uuid4()
    token = tenant_id_var.set(tid)
    yield tid
    tenant_id_var.reset(token)


@pytest.fixture
def source() -> Source:
    """A counting loader."""
    return Source()
