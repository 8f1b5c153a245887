"""Running Alembic migrations programmatically (no alembic.ini to ship)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from shopfront.settings import async_database_url

__all__ = ["DEFAULT_APP_ROLE", "alembic_config", "upgrade", "upgrade_async"]

_HERE = Path(__file__).parent


DEFAULT_APP_ROLE = "shopfront_app"


def alembic_config(database_url: str, *, app_role: str = DEFAULT_APP_ROLE) -> Config:
    """An Alembic config pointing at the packaged migrations and this (owner) database.

    ``app_role`` is the non-owner PostgreSQL role the service connects as; the
    migrations create it when missing and grant it data access only.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", async_database_url(database_url).replace("%", "%%"))
    cfg.attributes["app_role"] = app_role
    return cfg


def upgrade(database_url: str, revision: str = "head", *, app_role: str = DEFAULT_APP_ROLE) -> None:
    """Bring the database to ``revision`` (must not run inside an event loop)."""
    command.upgrade(alembic_config(database_url, app_role=app_role), revision)


async def upgrade_async(
    database_url: str, revision: str = "head", *, app_role: str = DEFAULT_APP_ROLE
) -> None:
    """`upgrade` from async code: the env script runs its own loop in a thread."""
    await asyncio.to_thread(upgrade, database_url, revision, app_role=app_role)
