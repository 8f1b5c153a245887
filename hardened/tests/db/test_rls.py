"""PostgreSQL row-level security: with the ORM filter off, the database alone hides foreign rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import String, event, func, insert, make_url, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hardened.db.rls import (
    SETTING,
    app_role_statements,
    drop_rls_statements,
    rls_statements,
)
from hardened.db.tenancy import TenantScoped, install_tenancy, tenant_session

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.postgres

A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")


class Base(DeclarativeBase):
    pass


class Item(TenantScoped, Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class RlsOnlySession(Session):
    """Tenancy with the ORM read filter off: only PostgreSQL stands between tenants."""


ROWS = [
    {"id": 1, "tenant_id": A, "name": "a1"},
    {"id": 2, "tenant_id": A, "name": "a2"},
    {"id": 3, "tenant_id": B, "name": "b1"},
]


@dataclass
class Env:
    owner: AsyncEngine
    app: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    role: str
    statements: list[str]


def checked(sql: str) -> Any:
    """Raw SQL the author vouches for; RLS is what scopes it here."""
    return text(sql).execution_options(tenant_checked=True)


@pytest.fixture
async def env(pg_url: str) -> AsyncIterator[Env]:
    """Tenant rows under RLS, owned by postgres; the app connects as a fresh non-owner role."""
    install_tenancy(RlsOnlySession, orm_filter=False)
    role = f"app_{uuid.uuid4().hex[:8]}"
    owner = create_async_engine(pg_url)
    async with owner.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(insert(Item.__table__), ROWS)
        for statement in [*rls_statements("items"), *app_role_statements(role)]:
            await conn.execute(text(statement))  # as Alembic's op.execute would
        await conn.execute(text(f'ALTER ROLE "{role}" LOGIN'))
    app_url = make_url(pg_url).set(username=role)
    app = create_async_engine(app_url, pool_size=1, max_overflow=0)
    statements: list[str] = []

    @event.listens_for(app.sync_engine, "before_cursor_execute")
    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    sessions = async_sessionmaker(app, sync_session_class=RlsOnlySession, expire_on_commit=False)
    try:
        yield Env(owner, app, sessions, role, statements)
    finally:
        await app.dispose()
        async with owner.begin() as conn:
            await conn.execute(text(f'DROP OWNED BY "{role}"'))
            await conn.execute(text(f'DROP ROLE "{role}"'))
        await owner.dispose()


def test_statement_names_are_validated_and_quoted() -> None:
    """Identifiers outside [a-z_][a-z0-9_]* are refused; valid ones are double-quoted."""
    for bad in ("Items", "items; drop table x", "1items", 'it"ems', ""):
        with pytest.raises(ValueError, match="invalid"):
            rls_statements(bad)
    with pytest.raises(ValueError, match="invalid"):
        app_role_statements("app'; drop role postgres; --")
    with pytest.raises(ValueError, match="invalid"):
        drop_rls_statements("items", policy="Bad")
    create = rls_statements("shop.orders", column="shop_id")[-1]
    assert 'ON "shop"."orders"' in create
    assert f"\"shop_id\" = NULLIF(current_setting('{SETTING}', true), '')::uuid" in create
    assert "USING" in create
    assert "WITH CHECK" in create


@pytest.mark.anyio
async def test_app_role_is_unprivileged(env: Env) -> None:
    """The app role is no superuser, has no BYPASSRLS, owns nothing and gets future tables."""
    async with env.owner.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"),
                {"r": env.role},
            )
        ).one()
        assert tuple(row) == (False, False)
        owner = await conn.scalar(
            text("SELECT tableowner FROM pg_tables WHERE tablename = 'items'")
        )
        assert owner != env.role
        await conn.execute(text("CREATE TABLE later (id int)"))
        await conn.commit()
    async with env.app.connect() as conn:
        assert await conn.scalar(text("SELECT current_user")) == env.role
        assert await conn.scalar(text("SELECT count(*) FROM later")) == 0


@pytest.mark.anyio
async def test_tenant_sees_only_own_rows_without_orm_filter(env: Env) -> None:
    """With the ORM filter off, select, count, get and checked raw SQL see only A's rows."""
    async with tenant_session(env.sessions, A) as session:
        assert set(await session.scalars(select(Item.id))) == {1, 2}
        assert await session.scalar(select(func.count()).select_from(Item)) == 2
        assert await session.get(Item, 3) is None
        assert set(await session.scalars(checked("SELECT id FROM items"))) == {1, 2}
    orm_selects = [s for s in env.statements if s.startswith("SELECT items")]
    assert orm_selects
    assert not any("tenant_id =" in s for s in orm_selects)  # the ORM added nothing


@pytest.mark.anyio
async def test_postgres_refuses_writes_to_foreign_rows(env: Env) -> None:
    """WITH CHECK refuses a row carrying B's id; B's rows cannot be updated or deleted."""
    async with tenant_session(env.sessions, A) as session:
        session.add(Item(id=4, name="a3"))
        await session.commit()
        update = await session.execute(checked("UPDATE items SET name = 'x' WHERE id = 3"))
        delete = await session.execute(checked("DELETE FROM items WHERE id = 3"))
        assert (update.rowcount, delete.rowcount) == (0, 0)  # type: ignore[attr-defined]
        await session.commit()
        smuggle = checked("INSERT INTO items (id, tenant_id, name) VALUES (5, :t, 'b2')")
        with pytest.raises(DBAPIError, match="row-level security"):
            await session.execute(smuggle, {"t": B})
    async with env.owner.connect() as conn:
        rows = await conn.execute(text("SELECT id, tenant_id, name FROM items ORDER BY id"))
        assert [tuple(r) for r in rows] == [(1, A, "a1"), (2, A, "a2"), (3, B, "b1"), (4, A, "a3")]


@pytest.mark.anyio
async def test_no_tenant_sees_no_rows(env: Env) -> None:
    """A session or connection without a tenant sees zero rows, never all of them."""
    async with env.sessions() as session:
        assert await session.scalar(checked("SELECT count(*) FROM items")) == 0
    async with env.app.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM items")) == 0


@pytest.mark.anyio
async def test_pooled_connection_forgets_the_tenant(env: Env) -> None:
    """The tenant setting dies with its transaction; the same pooled connection has none."""
    async with tenant_session(env.sessions, A) as session:
        backend = await session.scalar(checked("SELECT pg_backend_pid()"))
        assert await session.scalar(checked("SELECT count(*) FROM items")) == 2
        await session.commit()
    async with env.sessions() as session:
        assert await session.scalar(checked("SELECT pg_backend_pid()")) == backend
        assert await session.scalar(checked("SELECT count(*) FROM items")) == 0
    async with env.app.connect() as conn:
        assert await conn.scalar(text("SELECT pg_backend_pid()")) == backend
        setting = await conn.scalar(text(f"SELECT current_setting('{SETTING}', true)"))
        assert setting in {None, ""}
        assert await conn.scalar(text("SELECT count(*) FROM items")) == 0


@pytest.mark.anyio
async def test_drop_rls_statements_remove_the_policy(env: Env) -> None:
    """The downgrade statements disable RLS, after which the role sees every row again."""
    async with env.owner.begin() as conn:
        for statement in drop_rls_statements("items"):
            await conn.execute(text(statement))
    async with env.app.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM items")) == 3
