"""Crypto test fixtures: a fresh PostgreSQL database or SQLite file with the test schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from crypto_models import Base
from sqlalchemy.ext.asyncio import create_async_engine

from hardened.testing import temporary_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture
def pg_url(database_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database (async SQLAlchemy URL), dropped after the test."""
    with temporary_database(database_url, prefix="hcrypto") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test over SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine over ``db_url`` with the test tables created."""
    eng = create_async_engine(db_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """A PostgreSQL engine with the test tables created."""
    eng = create_async_engine(pg_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()
