"""Engine and session factory for PostgreSQL (psycopg 3) and SQLite (aiosqlite)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from hardened.db.tenancy import TenantSession
from hardened.db.transaction import sqlite_immediate_transactions

if TYPE_CHECKING:
    from shopfront.settings import Settings

__all__ = ["Database"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """The service's engine and its session factory."""

    def __init__(self, settings: Settings) -> None:
        url = settings.sqlalchemy_url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if not settings.is_sqlite:
            kwargs |= {"pool_size": 10, "max_overflow": 20, "pool_timeout": 5}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if settings.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            # One writer at a time, locked from BEGIN: concurrent writers queue on
            # the busy timeout instead of failing with "database is locked".
            sqlite_immediate_transactions(self.engine)
        # TenantSession scopes every statement to the session's tenant (and sets
        # app.tenant_id per transaction for PostgreSQL row-level security).
        self.sessions = async_sessionmaker(
            self.engine,
            expire_on_commit=False,
            class_=AsyncSession,
            sync_session_class=TenantSession,
        )

    async def ping(self) -> None:
        """Readiness probe: one trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        await self.engine.dispose()
