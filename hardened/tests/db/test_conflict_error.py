"""hardened.db.conflict_error: real deadlocks and serialization failures become 409 db.conflict."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.db import DatabaseLocked, conflict_error, unavailable_error
from hardened.errors import Conflict, problem_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

    from sqlalchemy.ext.asyncio import AsyncEngine


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(default=0)
    on_call: Mapped[bool] = mapped_column(default=True)


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """PostgreSQL with two rows; a pool of two, and a short pool timeout."""
    eng = create_async_engine(pg_url, pool_size=2, max_overflow=0, pool_timeout=0.2)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with async_sessionmaker(eng).begin() as s:
        s.add_all([Row(id=1), Row(id=2)])
    yield eng
    await eng.dispose()


def _failures(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("hardened_db_transaction_failures_total", labels) or 0.0


def _assert_conflict(exc: BaseException, reason: str) -> None:
    """``exc`` translates to 409 db.conflict with Retry-After: 1, and the driver text stays out."""
    before = _failures(reason)
    err = conflict_error(exc)
    assert isinstance(err, Conflict)
    assert (err.status, err.code) == (409, "db.conflict")
    assert err.headers == {"retry-after": "1"}
    assert err.context == {"reason": reason}
    assert _failures(reason) - before == 1
    problem = problem_for(err)
    assert (problem.status, problem.code, problem.headers["retry-after"]) == (
        409,
        "db.conflict",
        "1",
    )
    body = problem.body().decode()
    assert json.loads(body)["code"] == "db.conflict"
    assert str(getattr(exc, "orig", exc)).splitlines()[0] not in body
    # Neither is it unavailability: the translators do not compete for it.
    assert unavailable_error(exc) is None


async def _failed(*attempts: Awaitable[None]) -> list[BaseException]:
    """Run the attempts concurrently (generous bound); the exceptions they raised."""
    outcomes = await asyncio.wait_for(asyncio.gather(*attempts, return_exceptions=True), 60)
    return [o for o in outcomes if isinstance(o, BaseException)]


@pytest.mark.anyio
async def test_a_real_deadlock_is_a_409_db_conflict(pg_engine: AsyncEngine) -> None:
    """Each session locks its row, then updates the other's: PostgreSQL aborts one with 40P01."""
    sessions = async_sessionmaker(pg_engine)
    locked = {1: asyncio.Event(), 2: asyncio.Event()}

    async def cross(mine: int, theirs: int) -> None:
        async with sessions() as s, s.begin():
            await s.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
            await s.execute(update(Row).where(Row.id == mine).values(value=Row.value + 1))
            locked[mine].set()
            await locked[theirs].wait()
            await s.execute(update(Row).where(Row.id == theirs).values(value=Row.value + 1))

    failed = await _failed(cross(1, 2), cross(2, 1))
    assert len(failed) == 1, failed
    (victim,) = failed
    assert isinstance(victim, DBAPIError)
    assert getattr(victim.orig, "sqlstate", None) == "40P01"
    _assert_conflict(victim, "deadlock")
    async with sessions() as s:  # the survivor committed both of its updates
        assert await s.scalar(select(func.sum(Row.value))) == 2


@pytest.mark.anyio
async def test_a_real_serialization_failure_is_a_409_db_conflict(pg_engine: AsyncEngine) -> None:
    """Write skew under SERIALIZABLE (both read, each writes): one side fails with 40001."""
    sessions = async_sessionmaker(pg_engine)
    read = {1: asyncio.Event(), 2: asyncio.Event()}

    async def go_off_call(me: int, other: int) -> None:
        async with sessions() as s, s.begin():
            await s.connection(execution_options={"isolation_level": "SERIALIZABLE"})
            on_call = await s.scalar(select(func.count()).where(Row.on_call))
            read[me].set()
            await read[other].wait()
            if on_call == 2:
                await s.execute(update(Row).where(Row.id == me).values(on_call=False))

    failed = await _failed(go_off_call(1, 2), go_off_call(2, 1))
    assert len(failed) >= 1, "SERIALIZABLE let write skew through"
    for exc in failed:
        assert isinstance(exc, DBAPIError), exc
        assert getattr(exc.orig, "sqlstate", None) == "40001"
        _assert_conflict(exc, "serialization")
    async with sessions() as s:
        assert (await s.scalar(select(func.count()).where(Row.on_call)) or 0) >= 1


@pytest.mark.anyio
async def test_an_integrity_error_is_not_a_conflict(pg_engine: AsyncEngine) -> None:
    """A duplicate primary key is the caller's data, not a race: conflict_error gives None."""
    sessions = async_sessionmaker(pg_engine)
    with pytest.raises(IntegrityError) as err:
        async with sessions() as s, s.begin():
            s.add(Row(id=1))
    assert conflict_error(err.value) is None


@pytest.mark.anyio
async def test_a_pool_timeout_is_left_to_unavailable_error(pg_engine: AsyncEngine) -> None:
    """Pool exhausted: conflict_error gives None, unavailable_error the 503."""
    async with pg_engine.connect() as one, pg_engine.connect() as two:
        await one.execute(select(1))
        await two.execute(select(1))
        with pytest.raises(PoolTimeout) as err:
            async with pg_engine.connect() as third:
                await third.execute(select(1))
    assert conflict_error(err.value) is None
    unavailable = unavailable_error(err.value)
    assert unavailable is not None
    assert unavailable.code == "db.pool_exhausted"


@pytest.mark.anyio
async def test_sqlite_database_locked_is_left_to_unavailable_error(sqlite_file_url: str) -> None:
    """SQLite "database is locked" is the 503 db.locked's, not a 409: conflict_error gives None."""
    holder = create_async_engine(sqlite_file_url)
    waiter = create_async_engine(sqlite_file_url, connect_args={"timeout": 0})
    try:
        async with holder.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with holder.connect() as conn:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            with pytest.raises(OperationalError) as err:
                async with waiter.begin() as other:
                    await other.execute(
                        text("INSERT INTO rows (id, value, on_call) VALUES (9, 0, 1)")
                    )
            await conn.rollback()
        assert "database is locked" in str(err.value.orig)
        assert conflict_error(err.value) is None
        assert isinstance(unavailable_error(err.value), DatabaseLocked)
    finally:
        await holder.dispose()
        await waiter.dispose()


def test_other_exceptions_are_not_conflicts() -> None:
    """Anything that is not a driver error (even a Conflict itself) is not translated."""
    assert conflict_error(ValueError("x")) is None
    assert conflict_error(Conflict("already one")) is None
    assert conflict_error(asyncio.CancelledError()) is None
