"""Ledger fixtures: the ledger's tables under a unique prefix, on SQLite or PostgreSQL.

A unique prefix per test (not a database per test) keeps tests fast and lets
parallel runs share the PostgreSQL test database without seeing each other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from hardened.db import sqlite_immediate_transactions
from hardened.ledger import Ledger, LedgerTables, ledger_tables
from hardened.testing import ManualClock, temporary_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


@dataclass
class Books:
    """Everything a ledger test needs, on one backend."""

    backend: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    metadata: MetaData
    tables: LedgerTables
    ledger: Ledger
    clock: ManualClock


@pytest.fixture(scope="session")
def ledger_pg_url(database_url: str) -> Iterator[str]:
    """One fresh PostgreSQL database for the ledger tests (async URL), dropped at the end."""
    with temporary_database(database_url, prefix="hardened_ledger") as url:
        yield url


async def open_books(url: str, backend: str) -> Books:
    sqlite = backend == "sqlite"
    engine = create_async_engine(
        url, pool_size=20, max_overflow=0, connect_args={"timeout": 30} if sqlite else {}
    )
    if sqlite:
        sqlite_immediate_transactions(engine)
    metadata = MetaData()
    tables = ledger_tables(metadata, prefix=f"t{uuid.uuid4().hex[:10]}_")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    clock = ManualClock(start=1_700_000_000.0)
    return Books(
        backend=backend,
        engine=engine,
        sessions=async_sessionmaker(engine, expire_on_commit=False),
        metadata=metadata,
        tables=tables,
        ledger=Ledger(tables, clock=clock),
        clock=clock,
    )


async def close_books(books: Books) -> None:
    async with books.engine.begin() as conn:
        await conn.run_sync(books.metadata.drop_all)
    await books.engine.dispose()


@pytest.fixture
async def pg_books(ledger_pg_url: str) -> AsyncIterator[Books]:
    """The ledger on PostgreSQL (a pool of 20), tables dropped afterwards."""
    books = await open_books(ledger_pg_url, "postgres")
    yield books
    await close_books(books)


@pytest.fixture(params=["sqlite", "postgres"])
async def books(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Books]:
    """The same test on a SQLite file (BEGIN IMMEDIATE) and on PostgreSQL."""
    if request.param == "postgres":
        url = str(request.getfixturevalue("ledger_pg_url"))
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    opened = await open_books(url, request.param)
    yield opened
    await close_books(opened)
