"""Running Alembic migrations programmatically (no alembic.ini to ship)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from shopfront.settings import async_database_url

__all__ = ["alembic_config", "upgrade", "upgrade_async"]

_HERE = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and this database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", async_database_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (must not run inside an event loop)."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """`upgrade` from async code: the env script runs its own loop in a thread."""
    await asyncio.to_thread(upgrade, database_url, revision)
