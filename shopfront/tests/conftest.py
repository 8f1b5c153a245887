"""shopfront fixtures: settings, migrated databases (SQLite and PostgreSQL), clients."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from fake_crm import FakeCrm, running_fake_crm
from hardened.testing import temporary_database
from sf_storm import PrivateRedis
from sf_support import ShopDatabase, client_for, make_settings
from shopfront.app import create_app
from shopfront.migrate import DEFAULT_APP_ROLE, upgrade_async

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
    with temporary_database(database_url, prefix="shopfront", scheme=None) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def any_database_url(request: pytest.FixtureRequest) -> str:
    """The same test over SQLite and PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def app_factory() -> AsyncIterator[Callable[..., FastAPI]]:
    """Build apps from settings; their stores and engines are closed at teardown."""
    made: list[FastAPI] = []

    def factory(settings: Settings) -> FastAPI:
        app = create_app(settings)
        made.append(app)
        return app

    yield factory
    for app in made:
        await app.state.shopfront.aclose()


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


def app_role_url(owner_url: str, role: str = DEFAULT_APP_ROLE) -> str:
    """The same PostgreSQL database, reached as the app role (trust auth in tests)."""
    parts = urlsplit(owner_url)
    netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


async def migrated_postgres(owner_url: str) -> ShopDatabase:
    """Migrate as the owner, let the app role log in, return both URLs."""
    await upgrade_async(owner_url)
    admin = urlunsplit(urlsplit(owner_url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {DEFAULT_APP_ROLE} LOGIN")
    return ShopDatabase("postgres", app_role_url(owner_url), owner_url)


@pytest.fixture(params=["sqlite", "postgres"])
async def shop_db(request: pytest.FixtureRequest) -> ShopDatabase:
    """A migrated shop database on SQLite, or on PostgreSQL behind RLS."""
    if request.param == "sqlite":
        url = str(request.getfixturevalue("sqlite_url"))
        await upgrade_async(url)
        return ShopDatabase("sqlite", url, url)
    return await migrated_postgres(str(request.getfixturevalue("postgres_url")))


@pytest.fixture
async def pg_shop_db(postgres_url: str) -> ShopDatabase:
    """A migrated PostgreSQL shop database behind RLS."""
    return await migrated_postgres(postgres_url)


@pytest.fixture
async def shop_client(shop_db: ShopDatabase) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app on ``shop_db``."""
    application = create_app(make_settings(shop_db.url, migration_database_url=shop_db.owner_url))
    async with client_for(application) as c:
        yield c
    await application.state.shopfront.db.aclose()


@pytest.fixture
async def shop_client_pg(pg_shop_db: ShopDatabase) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app on the PostgreSQL shop database."""
    settings = make_settings(pg_shop_db.url, migration_database_url=pg_shop_db.owner_url)
    application = create_app(settings)
    async with client_for(application) as c:
        yield c
    await application.state.shopfront.db.aclose()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A running private Redis, stopped at the end."""
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def fake_crm() -> AsyncIterator[FakeCrm]:
    """A CRM fake on a free local port (each answer after 300 ms), stopped at the end."""
    async with running_fake_crm() as crm:
        yield crm
