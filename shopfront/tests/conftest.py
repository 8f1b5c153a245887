"""shopfront fixtures: settings, migrated databases (SQLite and PostgreSQL), clients."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from sf_support import client_for, make_settings
from shopfront.app import create_app
from shopfront.migrate import upgrade_async

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    import httpx
    from fastapi import FastAPI

    from shopfront.settings import Settings


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A file-backed SQLite database for one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"


@pytest.fixture
def postgres_url(database_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    parts = urlsplit(database_url)
    name = f"shopfront_{uuid.uuid4().hex[:12]}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def any_database_url(request: pytest.FixtureRequest) -> str:
    """The same test over SQLite and PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def app_factory() -> Iterator[Callable[..., FastAPI]]:
    """Build apps from settings; their engines are disposed at teardown."""
    made: list[FastAPI] = []

    def factory(settings: Settings) -> FastAPI:
        app = create_app(settings)
        made.append(app)
        return app

    yield factory
    # Engines are closed by the client fixture; nothing else holds resources.
    made.clear()


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[FastAPI]:
    """A migrated shopfront app on SQLite."""
    await upgrade_async(sqlite_url)
    application = create_app(make_settings(sqlite_url))
    yield application
    await application.state.shopfront.db.aclose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the SQLite app."""
    async with client_for(app) as c:
        yield c
