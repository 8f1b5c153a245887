"""Engines and the session factory for PostgreSQL (psycopg 3) and SQLite (aiosqlite).

Two pools per worker on PostgreSQL: the business pool (``DB_POOL_SIZE`` +
``DB_MAX_OVERFLOW`` connections, a request waits ``DB_POOL_TIMEOUT`` seconds
for one, then gets a 503 with ``Retry-After``) and a small one reserved for
idempotency records (``IDEMPOTENCY_POOL_SIZE``, opened at start-up), so a
request that failed because the business pool ran dry can still release its
Idempotency-Key for the client's retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from hardened.crypto import install_encryption
from hardened.db.tenancy import TenantSession
from hardened.db.transaction import sqlite_immediate_transactions

if TYPE_CHECKING:
    from hardened.crypto import Crypto
    from shopfront.settings import Settings

__all__ = ["Database"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _engine(settings: Settings, *, size: int, overflow: int) -> AsyncEngine:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if not settings.is_sqlite:
        kwargs |= {
            "pool_size": size,
            "max_overflow": overflow,
            "pool_timeout": settings.db_pool_timeout,
        }
    engine = create_async_engine(settings.sqlalchemy_url, **kwargs)
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # One writer at a time, locked from BEGIN: concurrent writers queue on
        # the busy timeout instead of failing with "database is locked".
        sqlite_immediate_transactions(engine)
    return engine


class Database:
    """The service's engines and its session factory."""

    def __init__(self, settings: Settings, crypto: Crypto | None = None) -> None:
        self.engine: AsyncEngine = _engine(
            settings, size=settings.db_pool_size, overflow=settings.db_max_overflow
        )
        self.records: AsyncEngine = _engine(
            settings, size=settings.idempotency_pool_size, overflow=0
        )
        self._reserved = 0 if settings.is_sqlite else settings.idempotency_pool_size
        # TenantSession scopes every statement to the session's tenant (and sets
        # app.tenant_id per transaction for PostgreSQL row-level security); the
        # subclass is this app's own, so its field encryption (its keyring) is too.
        session_class = type("ShopSession", (TenantSession,), {})
        self.sessions = async_sessionmaker(
            self.engine,
            expire_on_commit=False,
            class_=AsyncSession,
            sync_session_class=session_class,
        )
        self.crypto = crypto
        if crypto is not None:
            install_encryption(session_class, crypto)

    async def ping(self) -> None:
        """Readiness probe: one trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def reserve(self) -> None:
        """Open the records pool's connections now, while the database has room for them."""
        async with contextlib.AsyncExitStack() as opened:
            await asyncio.gather(
                *(opened.enter_async_context(self.records.connect()) for _ in range(self._reserved))
            )

    async def aclose(self) -> None:
        await self.engine.dispose()
        await self.records.dispose()
