"""Database fixtures for hardened.db tests: a fresh PostgreSQL database or SQLite file per test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest
from sqlalchemy import make_url
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


class Admin:
    """A superuser connection that kills a test database's backends and waits until they exit."""

    def __init__(self, url: str) -> None:
        self.dbname = make_url(url).database
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.conn = psycopg.connect(dsn, autocommit=True)

    def app_pids(self) -> list[int]:
        """Client backends on the test database other than this one."""
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'",
            (self.dbname,),
        )
        return [row[0] for row in rows]

    def terminate(self, pid: int) -> None:
        """``pg_terminate_backend`` and wait (generously) until the backend is gone."""
        row = self.conn.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,)).fetchone()
        assert row is not None
        assert row[0], f"backend {pid} did not exit"


@pytest.fixture
def admin(pg_url: str) -> Iterator[Admin]:
    """The superuser side of a test on ``pg_url``."""
    admin = Admin(pg_url)
    yield admin
    admin.conn.close()
