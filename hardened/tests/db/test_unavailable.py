"""hardened.db.unavailable_error: real database failures become 503s, everything else stays."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, make_url, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.db import (
    ConnectionLost,
    DatabaseLocked,
    DatabaseUnavailable,
    PoolExhausted,
    StatementTimeout,
    TenantSession,
    run_transaction,
    sqlite_immediate_transactions,
    tenant_session,
    unavailable_error,
)
from hardened.errors import Conflict, DependencyUnavailable, problem_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from conftest import Admin

TENANT = uuid.UUID("bbbbbbbb-0000-4000-8000-00000000000b")


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "things"

    id: Mapped[int] = mapped_column(primary_key=True)


def _metric(reason: str) -> float:
    return REGISTRY.get_sample_value("hardened_db_unavailable_total", {"reason": reason}) or 0.0


def _all_reasons() -> float:
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "hardened_db_unavailable"
        for sample in family.samples
        if sample.name == "hardened_db_unavailable_total"
    )


def _translated(
    exc: BaseException, cls: type[DatabaseUnavailable], code: str
) -> DatabaseUnavailable:
    """``exc`` maps to a 503 ``cls`` with ``code``, whole-second Retry-After and no leak."""
    err = unavailable_error(exc)
    assert isinstance(err, cls)
    assert isinstance(err, DependencyUnavailable)
    problem = problem_for(err)
    assert (problem.status, problem.code) == (503, code)
    assert int(problem.headers["retry-after"]) >= 1
    body = json.loads(problem.body())
    assert body["code"] == code
    driver_message = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    assert driver_message not in problem.body().decode()
    return err


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """PostgreSQL with the things table; one pooled connection, a short pool timeout."""
    eng = create_async_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


@pytest.mark.anyio
async def test_pool_exhaustion_is_a_503_pool_exhausted(pg_engine: AsyncEngine) -> None:
    """With every pooled connection held past pool_timeout, the checkout error maps to 503."""
    sessions = async_sessionmaker(pg_engine)
    before = _metric("pool_exhausted")
    async with pg_engine.connect() as held:
        await held.execute(select(1))
        async with sessions() as s:
            with pytest.raises(PoolTimeout) as err:
                await s.execute(select(1))
        _translated(err.value, PoolExhausted, "db.pool_exhausted")
        assert _metric("pool_exhausted") - before == 1

        calls = 0

        async def fn(s: AsyncSession) -> None:
            nonlocal calls
            calls += 1
            await s.execute(select(1))

        with pytest.raises(PoolExhausted):  # run_transaction does not wait a second time
            await run_transaction(sessions, fn, base_delay=0.001)
        assert calls == 1


@pytest.mark.anyio
async def test_a_role_over_its_connection_limit_is_a_503_unavailable(
    pg_url: str, admin: Admin
) -> None:
    """A scratch role with CONNECTION LIMIT 1 refused a second connection: db.unavailable."""
    role = f"limited_{uuid.uuid4().hex[:8]}"
    admin.conn.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    eng = create_async_engine(make_url(pg_url).set(username=role), pool_size=2, max_overflow=0)
    before = _metric("too_many_connections")
    try:
        async with eng.connect() as first:
            await first.execute(select(1))
            with pytest.raises(OperationalError) as err:
                async with eng.connect() as second:
                    await second.execute(select(1))
        _translated(err.value, DatabaseUnavailable, "db.unavailable")
        assert _metric("too_many_connections") - before == 1
    finally:
        await eng.dispose()
        admin.conn.execute(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
        admin.conn.execute(f'DROP ROLE "{role}"')


@pytest.mark.anyio
async def test_a_refused_connection_is_a_503_unavailable(pg_url: str) -> None:
    """Nothing listening on the port: db.unavailable with a longer Retry-After."""
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    eng = create_async_engine(make_url(pg_url).set(port=port))
    before = _metric("unreachable")
    try:
        with pytest.raises(OperationalError) as err:
            async with eng.connect():
                pass
    finally:
        await eng.dispose()
    error = _translated(err.value, DatabaseUnavailable, "db.unavailable")
    assert error.headers["retry-after"] == "5"
    assert _metric("unreachable") - before == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER"
            " attribute",
            "too_many_connections",
        ),
        ("FATAL:  sorry, too many clients already", "too_many_connections"),
        ('FATAL:  too many connections for database "shop"', "too_many_connections"),
        ("FATAL:  the database system is starting up", "not_accepting"),
        ("FATAL:  the database system is shutting down", "not_accepting"),
        ('FATAL:  database "shop" is not currently accepting connections', "not_accepting"),
        ("timeout expired", "unreachable"),
    ],
)
def test_connect_time_refusals_are_recognised_by_libpq_message(message: str, reason: str) -> None:
    """Connect-time FATALs come without SQLSTATE; each known refusal still maps to 503."""
    driver = psycopg.OperationalError(f"connection failed: connection to server failed: {message}")
    exc = OperationalError(None, None, driver)
    err = unavailable_error(exc)
    assert isinstance(err, DatabaseUnavailable)
    assert (err.code, err.context["reason"]) == ("db.unavailable", reason)


@pytest.mark.anyio
async def test_a_backend_terminated_mid_transaction_is_a_503_connection_lost(
    pg_url: str, admin: Admin
) -> None:
    """Killing the backend of an open tenant transaction fails its next statement with a 503."""
    eng = create_async_engine(pg_url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    sessions = async_sessionmaker(eng, sync_session_class=TenantSession)
    before = _metric("connection_lost")

    async def request() -> None:
        async with tenant_session(sessions, TENANT) as s, s.begin():
            pid = await s.scalar(select(func.pg_backend_pid()))
            assert pid is not None
            admin.terminate(pid)
            await s.execute(select(1))

    try:
        with pytest.raises(DBAPIError) as err:
            await request()
        _translated(err.value, ConnectionLost, "db.connection_lost")
        assert _metric("connection_lost") - before == 1

        async with tenant_session(sessions, TENANT) as s:  # carrying on after the loss
            pid = await s.scalar(select(func.pg_backend_pid()))
            assert pid is not None
            admin.terminate(pid)
            with pytest.raises(DBAPIError):
                await s.execute(select(1))
            with pytest.raises(PendingRollbackError) as pending:
                await s.execute(select(1))
            _translated(pending.value, ConnectionLost, "db.connection_lost")

        async with tenant_session(sessions, TENANT) as s:  # the one pooled slot works again
            assert await s.scalar(select(func.pg_backend_pid())) not in (None, pid)
    finally:
        await eng.dispose()


@pytest.mark.anyio
async def test_a_statement_timeout_is_a_503_statement_timeout(pg_engine: AsyncEngine) -> None:
    """57014 outside run_transaction maps like inside it: db.statement_timeout."""
    before = _metric("statement_timeout")
    async with async_sessionmaker(pg_engine)() as s, s.begin():
        await s.execute(text("SET LOCAL statement_timeout = 20"))
        with pytest.raises(DBAPIError) as err:
            await s.execute(text("SELECT pg_sleep(10)"))
    _translated(err.value, StatementTimeout, "db.statement_timeout")

    async def slow(s: AsyncSession) -> None:
        await s.execute(text("SELECT pg_sleep(10)"))

    with pytest.raises(StatementTimeout) as inside:
        await run_transaction(async_sessionmaker(pg_engine), slow, statement_timeout=0.02)
    assert inside.value.context["statement_timeout"] == 0.02
    assert _metric("statement_timeout") - before == 2


@pytest.mark.anyio
async def test_sqlite_locked_past_its_busy_timeout_is_a_503_locked(sqlite_file_url: str) -> None:
    """Another writer holding SQLite's lock past the busy timeout gives db.locked."""
    eng = create_async_engine(sqlite_file_url, connect_args={"timeout": 0.01})
    sqlite_immediate_transactions(eng)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    holder = sqlite3.connect(urlsplit(sqlite_file_url).path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError) as err:
            async with async_sessionmaker(eng)() as s, s.begin():
                s.add(Thing(id=1))
    finally:
        holder.close()
        await eng.dispose()
    _translated(err.value, DatabaseLocked, "db.locked")


@pytest.mark.anyio
async def test_other_errors_are_left_alone(pg_engine: AsyncEngine) -> None:
    """Integrity, programming and serialization errors, our own errors and bugs map to None."""
    sessions = async_sessionmaker(pg_engine)
    seen: list[BaseException] = []
    async with sessions() as s:
        s.add(Thing(id=1))
        await s.commit()
    statements = [
        "INSERT INTO things (id) VALUES (1)",  # unique violation
        "SELEC 1",  # syntax error
        "SELECT missing FROM things",  # undefined column
        "DO $$ BEGIN RAISE EXCEPTION 'skew' USING ERRCODE = 'serialization_failure'; END $$",
        "DO $$ BEGIN RAISE EXCEPTION 'nowait' USING ERRCODE = 'lock_not_available'; END $$",
    ]
    for statement in statements:
        async with sessions() as s:
            with pytest.raises(DBAPIError) as err:
                await s.execute(text(statement))
            seen.append(err.value)
    assert isinstance(seen[0], IntegrityError)
    before = _all_reasons()
    for exc in [*seen, Conflict(), ValueError("bug"), asyncio.CancelledError()]:
        assert unavailable_error(exc) is None, exc
    assert _all_reasons() == before
