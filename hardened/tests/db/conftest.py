"""Database fixtures for hardened.db tests: a fresh PostgreSQL database or SQLite file per test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from hardened.testing import temporary_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture
def pg_url(database_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database (async SQLAlchemy URL), dropped after the test."""
    with temporary_database(database_url, prefix="hardened") as url:
        yield url


@pytest.fixture
def sqlite_file_url(tmp_path: Path) -> str:
    """A SQLite database file (async SQLAlchemy URL) for one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test over SQLite and PostgreSQL."""
    name = "sqlite_file_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine over ``db_url``, disposed after the test."""
    eng = create_async_engine(db_url)
    yield eng
    await eng.dispose()
