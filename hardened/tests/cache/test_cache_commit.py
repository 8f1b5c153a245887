"""Invalidation after a SQLAlchemy commit: after COMMIT, never before, and not on rollback."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from cache_support import Source
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from hardened.cache import Cache, invalidate_after_commit
from hardened.stores import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.anyio
TAGS = ("catalog",)


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    """An async engine on SQLite and on PostgreSQL (the hook must work on both)."""
    if request.param == "sqlite":
        url = "sqlite+aiosqlite://"
    else:
        url = request.getfixturevalue("database_url").replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
    engine = create_async_engine(url)
    yield engine
    await engine.dispose()


async def test_tags_are_bumped_when_commit_returns_and_not_before(
    engine: AsyncEngine, tenant: uuid.UUID
) -> None:
    """Inside the transaction the old entry still hits; once commit() returns, it is a miss."""
    ns = Cache(MemoryStore()).namespace("items", ttl=3600)
    source = Source("old")
    await ns.get_or_load("list", source, tags=TAGS)
    async with AsyncSession(engine) as session:
        async with session.begin():
            await session.execute(text("select 1"))
            invalidate_after_commit(session, ns, "catalog")
            source.value = "new"
            assert await ns.get_or_load("list", source, tags=TAGS) == "old"
        assert await ns.get_or_load("list", source, tags=TAGS) == "new"
    assert source.calls == 2


async def test_a_rollback_drops_the_pending_invalidation(
    engine: AsyncEngine, tenant: uuid.UUID
) -> None:
    """Rolled back: nothing changed, so nothing is invalidated, and a later commit bumps nothing."""
    ns = Cache(MemoryStore()).namespace("items", ttl=3600)
    source = Source("kept")
    await ns.get_or_load("list", source, tags=TAGS)
    async with AsyncSession(engine) as session:
        transaction = await session.begin()
        invalidate_after_commit(session, ns, "catalog")
        await transaction.rollback()
        async with session.begin():
            await session.execute(text("select 1"))
    assert await ns.get_or_load("list", source, tags=TAGS) == "kept"
    assert source.calls == 1


async def test_a_savepoint_rollback_keeps_the_outer_transactions_invalidation(
    engine: AsyncEngine, tenant: uuid.UUID
) -> None:
    """A nested savepoint rolled back does not cancel what the outer commit invalidates."""
    ns = Cache(MemoryStore()).namespace("items", ttl=3600)
    source = Source("old")
    await ns.get_or_load("list", source, tags=TAGS)
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(text("select 1"))
        invalidate_after_commit(session, ns, "catalog")
        nested = await session.begin_nested()
        await nested.rollback()
    source.value = "new"
    assert await ns.get_or_load("list", source, tags=TAGS) == "new"


async def test_the_tenant_is_the_one_in_context_when_registered(engine: AsyncEngine) -> None:
    """The hook invalidates the tenant it was registered under, not whoever commits later."""
    ns = Cache(MemoryStore()).namespace("items", ttl=3600)
    a, b = uuid.uuid4(), uuid.uuid4()
    source_a, source_b = Source("a"), Source("b")
    await ns.get_or_load("list", source_a, tags=TAGS, tenant=a)
    await ns.get_or_load("list", source_b, tags=TAGS, tenant=b)
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(text("select 1"))
        invalidate_after_commit(session, ns, "catalog", tenant=a)
    await ns.get_or_load("list", source_a, tags=TAGS, tenant=a)
    await ns.get_or_load("list", source_b, tags=TAGS, tenant=b)
    assert (source_a.calls, source_b.calls) == (2, 1)
