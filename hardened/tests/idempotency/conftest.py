"""Idempotency backends for the contract suite: one fixture, one entry per backend.

``BACKENDS`` maps a name to an async context manager factory taking the
pytest request and yielding an `IdemBackend`: the backend under test and how
to let time pass on its clock. Adding a backend (PostgreSQL, SQLite) is one
factory and one dict entry; the ``idem_backend`` fixture runs every test of
``test_idem_contract.py`` against each.

Time: the memory backend moves a `ManualClock`; backends on a server clock
(Redis ``TIME``, the database's ``now()``) sleep through short real leases.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from idem_sql_support import idem_pg_url, sql_env  # noqa: F401 - idem_pg_url: a fixture

from hardened.idempotency import StoreBackend
from hardened.stores import MemoryStore, RedisStore
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from hardened.idempotency import IdempotencyBackend


@dataclass
class IdemBackend:
    """A backend under test and a way to let ``seconds`` pass on its clock."""

    name: str
    backend: IdempotencyBackend
    advance: Callable[[float], Awaitable[None]]


async def drop_prefix(store: RedisStore, prefix: str) -> None:
    """Delete every key a test wrote under its private prefix."""
    keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await store.client.delete(*keys)


@asynccontextmanager
async def memory_backend(request: pytest.FixtureRequest) -> AsyncIterator[IdemBackend]:
    """`StoreBackend` on `MemoryStore` with a hand-moved clock."""
    clock = ManualClock()

    async def advance(seconds: float) -> None:
        clock.now += seconds

    yield IdemBackend("memory", StoreBackend(MemoryStore(clock=clock)), advance)


@asynccontextmanager
async def redis_backend(request: pytest.FixtureRequest) -> AsyncIterator[IdemBackend]:
    """`StoreBackend` on `RedisStore` under a private key prefix, cleaned up after."""
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(url, max_connections=20, timeout=2.0, prefix=prefix)
    try:
        yield IdemBackend("redis", StoreBackend(store), asyncio.sleep)
    finally:
        await drop_prefix(store, prefix)
        await store.aclose()


def sql_backend(
    dialect: str,
) -> Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[IdemBackend]]:
    """`SqlBackend` on a fresh table, PostgreSQL or SQLite (see ``idem_sql_support``)."""

    @asynccontextmanager
    async def factory(request: pytest.FixtureRequest) -> AsyncIterator[IdemBackend]:
        async with sql_env(request, dialect) as env:
            yield IdemBackend(dialect, env.backend, asyncio.sleep)

    return factory


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[IdemBackend]]]
BACKENDS = {
    "memory": memory_backend,
    "redis": redis_backend,
    "postgres": sql_backend("postgres"),
    "sqlite": sql_backend("sqlite"),
}


@pytest.fixture(params=list(BACKENDS))
async def idem_backend(request: pytest.FixtureRequest) -> AsyncIterator[IdemBackend]:
    """Each registered idempotency backend in turn (see ``BACKENDS``)."""
    async with BACKENDS[request.param](request) as backend:
        yield backend
