"""Dead pooled connections on real PostgreSQL: what did not commit is retried, nothing else.

Backends are killed with ``pg_terminate_backend(pid, timeout)`` from a superuser connection,
which returns once the backend is gone, so every case is deterministic: idle in the pool,
between the pool's pre-ping and the transaction's first statement (a ``checkout`` listener
runs after the ping), in the middle of a transaction, and during COMMIT.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import String, event, func, make_url, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.db import unavailable_error
from hardened.db.tenancy import TenantScoped, TenantSession, tenant_session
from hardened.db.transaction import run_transaction
from hardened.errors import ServiceUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from conftest import Admin

pytestmark = pytest.mark.postgres

TENANT = uuid.UUID("aaaaaaaa-0000-4000-8000-00000000000a")
POOL = 4


class Base(DeclarativeBase):
    pass


class Note(TenantScoped, Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(50))


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """A pooled engine (pre-ping on, as shopfront runs it) with the notes table."""
    eng = create_async_engine(pg_url, pool_size=POOL, max_overflow=0, pool_pre_ping=True)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


def _sessions(eng: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(eng, sync_session_class=TenantSession, expire_on_commit=False)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"hardened_{name}", labels) or 0.0


async def _fill_pool(sessions: async_sessionmaker[AsyncSession]) -> set[int]:
    """Check out POOL connections at once, so the pool holds that many; their backend pids."""
    seen: set[int] = set()
    everyone = asyncio.Event()

    async def hold() -> None:
        async with tenant_session(sessions, TENANT) as s:
            pid = await s.scalar(select(func.pg_backend_pid()))
            assert pid is not None
            seen.add(pid)
            if len(seen) == POOL:
                everyone.set()
            await everyone.wait()

    await asyncio.wait_for(asyncio.gather(*(hold() for _ in range(POOL))), 60)
    return seen


async def _write(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    """One request's work: flush-first (the first statement comes from the flush)."""
    async with tenant_session(sessions, TENANT) as s, s.begin():
        s.add(Note(id=n, body=f"note {n}"))


async def _count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with tenant_session(sessions, TENANT) as s:
        return await s.scalar(select(func.count()).select_from(Note)) or 0


@pytest.mark.anyio
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no_pre_ping"])
async def test_backends_killed_idle_in_the_pool_do_not_fail_the_next_transactions(
    pg_url: str, admin: Admin, pre_ping: bool
) -> None:
    """With every pooled backend terminated while idle, all of the next N transactions commit."""
    eng = create_async_engine(pg_url, pool_size=POOL, max_overflow=0, pool_pre_ping=pre_ping)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = _sessions(eng)
    try:
        pooled = await _fill_pool(sessions)
        assert set(admin.app_pids()) == pooled
        for pid in pooled:
            admin.terminate(pid)
        assert admin.app_pids() == []
        n = 3 * POOL
        outcomes = await asyncio.gather(
            *(_write(sessions, i) for i in range(n)), return_exceptions=True
        )
        assert [o for o in outcomes if o is not None] == []
        assert await _count(sessions) == n
    finally:
        await eng.dispose()


@pytest.mark.anyio
async def test_a_backend_killed_after_the_pre_ping_is_replaced_before_the_first_statement(
    engine: AsyncEngine, admin: Admin
) -> None:
    """Killed between pre-ping and set_config, the transaction moves to a fresh connection."""
    sessions = _sessions(engine)
    checkouts = 0

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def kill_every_other(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        nonlocal checkouts
        checkouts += 1
        if checkouts % 2 == 1 and checkouts <= 5:  # checkouts 1, 3 and 5: one per transaction
            admin.terminate(dbapi_connection.driver_connection.info.backend_pid)

    before = _metric("db_reconnects_total")
    await _write(sessions, 1)  # flush opens the transaction

    async with tenant_session(sessions, TENANT) as s, s.begin():  # explicit begin, then execute
        assert await s.scalar(select(func.count()).select_from(Note)) == 1

    async with tenant_session(sessions, TENANT) as s:  # isolation level survives the move
        await s.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        level = await s.scalar(
            text("SHOW transaction_isolation").execution_options(tenant_checked=True)
        )
        tenant = await s.scalar(
            text("SELECT current_setting('app.tenant_id')").execution_options(tenant_checked=True)
        )
        await s.commit()
    assert (level, tenant) == ("serializable", str(TENANT))
    assert checkouts == 6
    assert _metric("db_reconnects_total") - before == 3
    await _write(sessions, 2)
    assert await _count(sessions) == 2


@pytest.mark.anyio
@pytest.mark.filterwarnings("error")  # e.g. SAWarning: transaction already deassociated
async def test_a_replacement_that_cannot_connect_fails_cleanly_and_the_pool_recovers(
    engine: AsyncEngine, admin: Admin, pg_url: str
) -> None:
    """Dead connection, and the database refusing new ones: the error surfaces, nothing sticks."""
    sessions = _sessions(engine)
    await _write(sessions, 1)
    refused = False
    other = make_url(pg_url).set(drivername="postgresql", database="postgres")
    gate = psycopg.connect(other.render_as_string(hide_password=False), autocommit=True)

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def kill_and_lock_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        nonlocal refused
        if not refused:
            refused = True
            gate.execute(f'ALTER DATABASE "{admin.dbname}" ALLOW_CONNECTIONS false')
            admin.terminate(dbapi_connection.driver_connection.info.backend_pid)

    try:
        with pytest.raises(OperationalError) as err:
            await _write(sessions, 2)
        unavailable = unavailable_error(err.value)
        assert unavailable is not None
        assert (unavailable.code, unavailable.context["reason"]) == (
            "db.unavailable",
            "not_accepting",
        )
    finally:
        gate.execute(f'ALTER DATABASE "{admin.dbname}" ALLOW_CONNECTIONS true')
        gate.close()
    event.remove(engine.sync_engine.pool, "checkout", kill_and_lock_out)
    await _write(sessions, 3)
    async with tenant_session(sessions, TENANT) as s:
        assert list(await s.scalars(select(Note.id).order_by(Note.id))) == [1, 3]


@pytest.mark.anyio
async def test_a_connection_killed_mid_transaction_leaves_the_session_and_pool_usable(
    pg_url: str, admin: Admin
) -> None:
    """The failed statement raises; after rollback the same session and the next one work."""
    eng = create_async_engine(pg_url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    sessions = _sessions(eng)
    try:
        async with tenant_session(sessions, TENANT) as s:
            pid = await s.scalar(select(func.pg_backend_pid()))
            assert pid is not None
            admin.terminate(pid)
            with pytest.raises(DBAPIError) as err:
                await s.scalar(select(func.pg_backend_pid()))
            assert err.value.connection_invalidated
            await s.rollback()
            assert await s.scalar(select(func.pg_backend_pid())) not in (None, pid)
        async with tenant_session(sessions, TENANT) as s:
            assert await s.scalar(select(func.count()).select_from(select(1).subquery())) == 1
    finally:
        await eng.dispose()


# --- run_transaction ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_transaction_retries_a_disconnect_before_commit_on_a_fresh_session(
    engine: AsyncEngine, admin: Admin
) -> None:
    """A connection lost after fn's first write: that attempt rolls back and fn runs again."""
    sessions = _sessions(engine)
    attempts = 0
    before = _metric("db_transaction_retries_total", reason="disconnect")

    async def fn(s: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        s.add(Note(id=attempts, body="written"))
        await s.flush()
        if attempts == 1:
            pid = await s.scalar(select(func.pg_backend_pid()))
            assert pid is not None
            admin.terminate(pid)
        return await s.scalar(select(func.count()).select_from(Note)) or 0

    with_tenant = lambda: tenant_session(sessions, TENANT)  # noqa: E731
    assert await run_transaction(with_tenant, fn, base_delay=0.001) == 1
    assert attempts == 2
    assert _metric("db_transaction_retries_total", reason="disconnect") - before == 1
    async with tenant_session(sessions, TENANT) as s:
        assert list(await s.scalars(select(Note.id))) == [2]


@pytest.mark.anyio
async def test_run_transaction_does_not_retry_a_disconnect_during_commit(
    engine: AsyncEngine, admin: Admin
) -> None:
    """A connection lost in COMMIT may have committed: 503 db.connection_lost, fn ran once."""
    sessions = _sessions(engine)
    calls = 0

    @event.listens_for(engine.sync_engine, "commit")
    def kill_before_commit(conn: Any) -> None:
        admin.terminate(conn.connection.driver_connection.info.backend_pid)

    async def fn(s: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        s.add(Note(id=1, body="maybe"))

    with pytest.raises(ServiceUnavailable) as err:
        await run_transaction(lambda: tenant_session(sessions, TENANT), fn, base_delay=0.001)
    event.remove(engine.sync_engine, "commit", kill_before_commit)
    assert (err.value.status, err.value.code, calls) == (503, "db.connection_lost", 1)
    assert int(err.value.headers["retry-after"]) >= 1


@pytest.mark.anyio
async def test_run_transaction_gives_up_on_repeated_disconnects_with_a_503(
    engine: AsyncEngine, admin: Admin
) -> None:
    """A connection lost on every attempt is the database failing: 503, not 409."""
    sessions = _sessions(engine)
    calls = 0

    async def fn(s: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        pid = await s.scalar(select(func.pg_backend_pid()))
        assert pid is not None
        admin.terminate(pid)
        await s.execute(select(1))

    with pytest.raises(ServiceUnavailable) as err:
        await run_transaction(
            lambda: tenant_session(sessions, TENANT), fn, retries=2, base_delay=0.001
        )
    assert (err.value.status, err.value.code, calls) == (503, "db.connection_lost", 3)
