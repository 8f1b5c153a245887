"""hardened.db.transaction: real serialization failures, deadlocks, timeouts and locks."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.db.transaction import (
    advisory_key,
    advisory_lock,
    has_immediate_transactions,
    run_transaction,
    sqlite_immediate_transactions,
    transient_reason,
)
from hardened.errors import Conflict, ServiceUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


class Base(DeclarativeBase):
    pass


class Doctor(Base):
    __tablename__ = "doctors"

    id: Mapped[int] = mapped_column(primary_key=True)
    on_call: Mapped[bool]


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int] = mapped_column(default=0)


async def _engine(url: str, *, sqlite_timeout: float = 30) -> AsyncEngine:
    sqlite = url.startswith("sqlite")
    connect_args = {"timeout": sqlite_timeout} if sqlite else {}
    eng = create_async_engine(url, pool_size=20, max_overflow=0, connect_args=connect_args)
    if sqlite:
        sqlite_immediate_transactions(eng)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return eng


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine with the tables; SQLite runs BEGIN IMMEDIATE with a long busy wait."""
    eng = await _engine(db_url)
    yield eng
    await eng.dispose()


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """A PostgreSQL engine with the tables."""
    eng = await _engine(pg_url)
    yield eng
    await eng.dispose()


_RAISE_40001 = "DO $$ BEGIN RAISE EXCEPTION 'skew' USING ERRCODE = 'serialization_failure'; END $$"


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"hardened_{name}", labels) or 0.0


# --- run_transaction ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_transaction_retries_a_real_serialization_failure(pg_engine: AsyncEngine) -> None:
    """Write skew under SERIALIZABLE aborts one side with 40001; its retry sees the truth."""
    sessions = async_sessionmaker(pg_engine)
    async with sessions.begin() as s:
        s.add_all([Doctor(id=1, on_call=True), Doctor(id=2, on_call=True)])
    read = {1: asyncio.Event(), 2: asyncio.Event()}
    done = {1: asyncio.Event(), 2: asyncio.Event()}
    attempts = {1: 0, 2: 0}
    before = _metric("db_transaction_retries_total", reason="serialization")

    async def go_off_call(me: int, other: int) -> int:
        async def fn(s: AsyncSession) -> int:
            attempts[me] += 1
            if attempts[me] > 1:
                # A retry overlapping the winner's commit would be aborted again on a busy
                # machine; the retry's claim is that it sees the committed truth.
                await done[other].wait()
            on_call = await s.scalar(select(func.count()).where(Doctor.on_call))
            read[me].set()
            await read[other].wait()
            if on_call is not None and on_call >= 2:
                await s.execute(update(Doctor).where(Doctor.id == me).values(on_call=False))
            return on_call or 0

        try:
            return await run_transaction(
                sessions, fn, isolation_level="SERIALIZABLE", base_delay=0.001
            )
        finally:
            done[me].set()

    await asyncio.gather(go_off_call(1, 2), go_off_call(2, 1))
    assert sorted(attempts.values()) == [1, 2]
    assert _metric("db_transaction_retries_total", reason="serialization") - before == 1
    async with sessions() as s:
        assert await s.scalar(select(func.count()).where(Doctor.on_call)) == 1


@pytest.mark.anyio
async def test_run_transaction_retries_a_real_deadlock(pg_engine: AsyncEngine) -> None:
    """Two transactions locking two rows in opposite order deadlock; the victim is retried."""
    sessions = async_sessionmaker(pg_engine)
    async with sessions.begin() as s:
        s.add_all([Account(id=1), Account(id=2)])
    locked = {1: asyncio.Event(), 2: asyncio.Event()}
    before = _metric("db_transaction_retries_total", reason="deadlock")

    async def touch_both(first: int, second: int) -> None:
        async def fn(s: AsyncSession) -> None:
            await s.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
            for account in (first, second):
                await s.execute(
                    update(Account).where(Account.id == account).values(balance=Account.balance + 1)
                )
                locked[account].set()
                await locked[second].wait()

        await run_transaction(sessions, fn, base_delay=0.001)

    await asyncio.wait_for(asyncio.gather(touch_both(1, 2), touch_both(2, 1)), 20)
    assert _metric("db_transaction_retries_total", reason="deadlock") - before == 1
    async with sessions() as s:
        assert list(await s.scalars(select(Account.balance).order_by(Account.id))) == [2, 2]


@pytest.mark.anyio
async def test_run_transaction_maps_a_statement_timeout_to_503(pg_engine: AsyncEngine) -> None:
    """A statement over statement_timeout is cancelled and surfaces as 503 db.statement_timeout."""
    sessions = async_sessionmaker(pg_engine)

    async def slow(s: AsyncSession) -> None:
        await s.execute(text("SELECT pg_sleep(5)"))

    with pytest.raises(ServiceUnavailable) as err:
        await run_transaction(sessions, slow, statement_timeout=0.05)
    assert (err.value.status, err.value.code) == (503, "db.statement_timeout")


@pytest.mark.anyio
async def test_run_transaction_gives_up_with_a_409_after_its_retries(db_url: str) -> None:
    """A conflict on every attempt ends in Conflict conflict.retry_exhausted with Retry-After."""
    sqlite = db_url.startswith("sqlite")
    eng = await _engine(db_url, sqlite_timeout=0.01)
    holder = None
    if sqlite:  # another process-like connection holds SQLite's write lock throughout
        holder = sqlite3.connect(urlsplit(db_url).path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    calls = 0

    async def always_conflicts(s: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        if sqlite:
            await s.execute(select(Account.id))
        else:
            await s.execute(text(_RAISE_40001))

    try:
        with pytest.raises(Conflict) as err:
            await run_transaction(
                async_sessionmaker(eng), always_conflicts, retries=2, base_delay=0.001
            )
    finally:
        if holder is not None:
            holder.close()
        await eng.dispose()
    assert calls == 3
    assert (err.value.status, err.value.code) == (409, "conflict.retry_exhausted")
    assert err.value.headers["retry-after"] == "1"
    assert transient_reason(err.value.__cause__) == ("locked" if sqlite else "serialization")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_run_transaction_commits_once_and_propagates_other_errors(
    engine: AsyncEngine,
) -> None:
    """Success commits and returns fn's value; any other error rolls back and is not retried."""
    sessions = async_sessionmaker(engine)

    async def add(s: AsyncSession) -> int:
        s.add(Account(id=1, balance=5))
        return 5

    assert await run_transaction(sessions, add) == 5
    calls = 0

    async def broken(s: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        s.add(Account(id=2))
        await s.flush()
        msg = "boom"
        raise ValueError(msg)

    with pytest.raises(ValueError, match="boom"):
        await run_transaction(sessions, broken)
    assert calls == 1
    async with sessions() as s:
        assert list(await s.scalars(select(Account.id))) == [1]


@pytest.mark.anyio
async def test_sqlite_immediate_transactions_serialise_read_modify_write(
    sqlite_file_url: str,
) -> None:
    """On SQLite with BEGIN IMMEDIATE, 30 concurrent read-then-write transactions lose nothing."""
    eng = await _engine(sqlite_file_url)
    sessions = async_sessionmaker(eng)
    async with sessions.begin() as s:
        s.add(Account(id=1, balance=0))

    async def bump(s: AsyncSession) -> None:
        async with advisory_lock(s, "account", 1):
            balance = await s.scalar(select(Account.balance).where(Account.id == 1))
            await asyncio.sleep(0)
            await s.execute(
                update(Account).where(Account.id == 1).values(balance=(balance or 0) + 1)
            )

    try:
        await asyncio.gather(*(run_transaction(sessions, bump, retries=0) for _ in range(30)))
        async with sessions() as s:
            assert await s.scalar(select(Account.balance)) == 30
    finally:
        await eng.dispose()


@pytest.mark.anyio
async def test_sqlite_immediate_transactions_is_checked_and_only_for_sqlite(
    sqlite_file_url: str, pg_url: str
) -> None:
    """advisory_lock refuses an unconfigured SQLite engine; the recipe refuses PostgreSQL."""
    plain = create_async_engine(sqlite_file_url)
    pg = create_async_engine(pg_url)
    try:
        assert not has_immediate_transactions(plain)
        async with async_sessionmaker(plain)() as s, s.begin():
            with pytest.raises(RuntimeError, match="sqlite_immediate_transactions"):
                async with advisory_lock(s, "ns", 1):
                    pass
        with pytest.raises(RuntimeError, match="first connection"):
            sqlite_immediate_transactions(plain)
        with pytest.raises(ValueError, match="SQLite"):
            sqlite_immediate_transactions(pg)
    finally:
        await plain.dispose()
        await pg.dispose()


# --- advisory locks -----------------------------------------------------------------------


def test_advisory_key_is_stable_signed_and_type_tagged() -> None:
    """Keys are deterministic signed 64-bit ints; ("a", 1), ("a", "1") and ("b", 1) differ."""
    key = advisory_key("campaign", 1)
    assert key == advisory_key("campaign", 1)
    assert -(2**63) <= key < 2**63
    assert len({key, advisory_key("campaign", "1"), advisory_key("campaig", "n1")}) == 3
    ident = uuid.uuid4()
    assert advisory_key("x", ident) == advisory_key("x", uuid.UUID(str(ident)))


async def _waiting_advisory_locks(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        for _ in range(500):
            waiting = int((await conn.execute(query)).scalar_one())
            if waiting:
                return waiting
            await asyncio.sleep(0.01)
    return 0


@pytest.mark.anyio
async def test_advisory_lock_serialises_holders_of_the_same_key(pg_engine: AsyncEngine) -> None:
    """The second holder of (ns, key) waits in PostgreSQL until the first transaction ends."""
    sessions = async_sessionmaker(pg_engine)
    first_holds, release = asyncio.Event(), asyncio.Event()
    events: list[str] = []

    async def first() -> None:
        async with sessions() as s, s.begin(), advisory_lock(s, "campaign", 42):
            events.append("first acquired")
            first_holds.set()
            await release.wait()
            events.append("first releasing")

    async def second() -> bool:
        await first_holds.wait()
        async with sessions() as s, s.begin(), advisory_lock(s, "campaign", 42):
            events.append("second acquired")
            return release.is_set()

    tasks = asyncio.gather(first(), second())
    await first_holds.wait()
    assert await _waiting_advisory_locks(pg_engine) == 1
    release.set()
    _, second_saw_release = await asyncio.wait_for(tasks, 10)
    assert second_saw_release
    assert events == ["first acquired", "first releasing", "second acquired"]


@pytest.mark.anyio
async def test_advisory_lock_on_other_keys_does_not_block(pg_engine: AsyncEngine) -> None:
    """While (ns, 1) is held, (ns, 2) and (other, 1) are acquired at once."""
    sessions = async_sessionmaker(pg_engine)
    holds, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with sessions() as s, s.begin(), advisory_lock(s, "campaign", 1):
            holds.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await holds.wait()
    for namespace, key in (("campaign", 2), ("import", 1)):
        async with (
            sessions() as s,
            s.begin(),
            asyncio.timeout(10),
            advisory_lock(s, namespace, key) as lock_id,
        ):
            assert lock_id == advisory_key(namespace, key)
    assert not release.is_set()
    release.set()
    await task


@pytest.mark.anyio
async def test_advisory_lock_without_waiting_refuses_a_busy_key(pg_engine: AsyncEngine) -> None:
    """wait=False on a held key raises Conflict lock.busy; outside a transaction it refuses."""
    sessions = async_sessionmaker(pg_engine)
    async with sessions() as holder, holder.begin(), advisory_lock(holder, "campaign", "c-9"):
        async with sessions() as s, s.begin():
            with pytest.raises(Conflict) as err:
                async with advisory_lock(s, "campaign", "c-9", wait=False):
                    pass
        assert err.value.code == "lock.busy"
    async with sessions() as s, s.begin(), advisory_lock(s, "campaign", "c-9", wait=False):
        pass
    async with sessions() as s:
        with pytest.raises(RuntimeError, match="inside a transaction"):
            async with advisory_lock(s, "campaign", "c-9"):
                pass
