"""SQL idempotency backends for tests: one PostgreSQL database per session, tables per test.

Each test gets its own uniquely named idempotency table and an ``effects``
table (the business rows), in a database created for this session (or a
SQLite file per test), so parallel runs never share rows.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from hardened.db import sqlite_immediate_transactions
from hardened.idempotency import SqlBackend, idempotency_table
from hardened.testing import temporary_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

DIALECTS = ("postgres", "sqlite")


@pytest.fixture(scope="session")
def idem_pg_url(database_url: str) -> Iterator[str]:
    """A PostgreSQL database (async URL) for this session's SQL idempotency tests."""
    with temporary_database(database_url, prefix="hardened_idem") as url:
        yield url


@dataclass
class SqlEnv:
    """An engine, the backend on a fresh table, and a table for business rows."""

    dialect: str
    engine: AsyncEngine
    backend: SqlBackend
    effects: Table

    async def effect_count(self, phase: str | None = None) -> int:
        """How many business rows were committed (for one phase, or all)."""
        query = select(func.count()).select_from(self.effects)
        if phase is not None:
            query = query.where(self.effects.c.phase == phase)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


@asynccontextmanager
async def sql_env(request: pytest.FixtureRequest, dialect: str) -> AsyncIterator[SqlEnv]:
    """A `SqlEnv` on PostgreSQL or SQLite; its tables are dropped afterwards."""
    if dialect == "postgres":
        url: str = request.getfixturevalue("idem_pg_url")
        engine = create_async_engine(url, pool_size=10, max_overflow=20)
    else:
        tmp: Path = request.getfixturevalue("tmp_path")
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{tmp / 'idem.db'}", connect_args={"timeout": 30}
        )
        sqlite_immediate_transactions(engine)
    metadata = MetaData()
    suffix = uuid.uuid4().hex[:12]
    table = idempotency_table(metadata, f"idem_{suffix}")
    effects = Table(
        f"effects_{suffix}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key", Text, nullable=False),
        Column("phase", Text, nullable=False),
    )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield SqlEnv(dialect, engine, SqlBackend(engine, table), effects)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()
