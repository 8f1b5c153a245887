"""Tenant scoping through the ORM, over SQLite and PostgreSQL: reads, writes and known holes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import (
    ForeignKey,
    String,
    Uuid,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from hardened.db.tenancy import (
    CrossTenantWrite,
    TenantContextMissing,
    TenantScoped,
    TenantSession,
    UnscopedBulkWrite,
    UnscopedRawSQL,
    current_tenant_id,
    install_tenancy,
    session_tenant,
    tenant_context,
    tenant_session,
)
from hardened.errors import problem_for

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Customer(TenantScoped, Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Parent(TenantScoped, Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    customer: Mapped[Customer | None] = relationship()
    children: Mapped[list[Child]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", order_by="Child.id"
    )


class Child(TenantScoped, Base):
    __tablename__ = "children"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    parent_id: Mapped[int] = mapped_column(ForeignKey("parents.id"))
    parent: Mapped[Parent] = relationship(back_populates="children")


# Rows planted by an admin connection (no session events): ids 1x belong to A, 2x to B.
# A's parent 11 points at B's customer 21 and has B's child 22 planted under it.
ROWS: dict[type[Base], list[dict[str, Any]]] = {
    Tenant: [{"id": A, "name": "a"}, {"id": B, "name": "b"}],
    Customer: [{"id": 11, "tenant_id": A, "name": "ca"}, {"id": 21, "tenant_id": B, "name": "cb"}],
    Parent: [
        {"id": 11, "tenant_id": A, "name": "pa", "customer_id": 21},
        {"id": 12, "tenant_id": A, "name": "pa2", "customer_id": 11},
        {"id": 21, "tenant_id": B, "name": "pb", "customer_id": 21},
    ],
    Child: [
        {"id": 11, "tenant_id": A, "name": "kid-a", "parent_id": 11},
        {"id": 22, "tenant_id": B, "name": "kid-b", "parent_id": 11},
    ],
}


@pytest.fixture
async def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Tables with A's and B's rows, and a session factory using TenantSession."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        for model, rows in ROWS.items():
            await conn.execute(insert(model.__table__), rows)
    return async_sessionmaker(engine, sync_session_class=TenantSession, expire_on_commit=False)


async def names(engine: AsyncEngine, model: type[Base]) -> dict[int, str]:
    """Every row's name as the admin sees it (no tenancy)."""
    async with engine.connect() as conn:
        table = model.__table__
        return {r.id: r.name for r in await conn.execute(select(table.c.id, table.c.name))}


async def move_to_b(engine: AsyncEngine, parent_id: int) -> None:
    async with engine.begin() as conn:
        table = Parent.__table__
        await conn.execute(update(table).where(table.c.id == parent_id).values(tenant_id=B))


def test_tenant_context_sets_and_resets() -> None:
    """The context manager sets the tenant for its block only; outside it is missing."""
    with pytest.raises(TenantContextMissing) as missing:
        current_tenant_id()
    assert (missing.value.status, missing.value.code) == (500, "tenant.context_missing")
    with tenant_context(A):
        assert current_tenant_id() == A
    with pytest.raises(TenantContextMissing):
        current_tenant_id()


def test_error_codes_are_stable() -> None:
    """Every tenancy refusal is a 500 with its documented code."""
    codes = {e.code for e in (CrossTenantWrite, UnscopedBulkWrite, UnscopedRawSQL)}
    assert codes == {"tenant.cross_tenant_write", "tenant.unscoped_bulk_write", "tenant.raw_sql"}
    assert {e.status for e in (CrossTenantWrite, UnscopedBulkWrite, UnscopedRawSQL)} == {500}


def test_mixin_adds_a_not_null_tenant_column_without_its_own_index() -> None:
    """TenantScoped gives each model its own NOT NULL uuid tenant_id, left to composite indexes."""
    for model in (Customer, Parent, Child):
        column = model.__table__.c.tenant_id
        assert not column.nullable
        assert not column.index
    assert Customer.__table__.c.tenant_id is not Parent.__table__.c.tenant_id


def test_refusals_do_not_leak_their_reason() -> None:
    """A refusal renders as a bare 500 problem; the reason stays in the logged context."""
    with pytest.raises(TenantContextMissing) as missing:
        current_tenant_id()
    problem = problem_for(missing.value)
    assert (problem.status, problem.code, problem.detail) == (500, "tenant.context_missing", None)
    assert missing.value.context["reason"]


def test_installing_on_session_itself_is_refused() -> None:
    """Tenancy never goes on the global Session class, where it would leak into other apps."""
    with pytest.raises(TypeError):
        install_tenancy(Session)
    with pytest.raises(TypeError):
        install_tenancy(async_sessionmaker())


def test_tenant_session_requires_an_installed_class() -> None:
    """A factory whose session class has no tenancy cannot hand out tenant sessions."""
    with pytest.raises(TypeError, match="no tenancy installed"):
        tenant_session(sessionmaker(), A)
    with pytest.raises(ValueError, match="already installed"):
        install_tenancy(TenantSession, orm_filter=False)
    install_tenancy(sessionmaker(class_=TenantSession))  # same options: a no-op


def test_tenant_session_uses_context_tenant() -> None:
    """Without an explicit tenant the session takes the context's, and needs one."""
    maker = sessionmaker(class_=TenantSession)
    with pytest.raises(TenantContextMissing):
        tenant_session(maker)
    with tenant_context(B), tenant_session(maker) as session:
        assert session_tenant(session) == B
    with pytest.raises(TypeError):
        tenant_session(maker, str(A))  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_select_returns_only_own_rows(sessions: async_sessionmaker[AsyncSession]) -> None:
    """A plain select and a count see only the session tenant's rows."""
    async with tenant_session(sessions, A) as session:
        assert set(await session.scalars(select(Parent.id))) == {11, 12}
        assert await session.scalar(select(func.count()).select_from(Parent)) == 2
    async with tenant_session(sessions, B) as session:
        assert set(await session.scalars(select(Parent.id))) == {21}


@pytest.mark.anyio
async def test_get_of_foreign_id_is_none(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Session.get of another tenant's primary key returns None."""
    async with tenant_session(sessions, A) as session:
        assert await session.get(Parent, 21) is None
        assert (await session.get(Parent, 11)) is not None


@pytest.mark.anyio
async def test_one_to_many_lazy_load_hides_foreign_children(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A lazy and a selectin collection load return only own children."""
    async with tenant_session(sessions, A) as session:
        parent = await session.get(Parent, 11)
        assert parent is not None
        assert [c.id for c in await parent.awaitable_attrs.children] == [11]
    async with tenant_session(sessions, A) as session:
        stmt = select(Parent).where(Parent.id == 11).options(selectinload(Parent.children))
        loaded = (await session.scalars(stmt)).one()
        assert [c.id for c in loaded.children] == [11]


@pytest.mark.anyio
async def test_many_to_one_to_foreign_row_is_none(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A many-to-one pointing at another tenant's row loads as None, own rows load."""
    async with tenant_session(sessions, A) as session:
        parent, other = await session.get(Parent, 11), await session.get(Parent, 12)
        assert parent is not None
        assert other is not None
        assert await parent.awaitable_attrs.customer is None
        assert (await other.awaitable_attrs.customer) is not None


@pytest.mark.anyio
async def test_lazy_load_from_a_new_object_is_scoped(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """An object created in the session (no loader options of its own) still loads scoped."""
    async with tenant_session(sessions, A) as session:
        parent = Parent(name="new", customer_id=21)
        session.add(parent)
        await session.flush()
        session.expire(parent, ["customer"])
        assert await parent.awaitable_attrs.customer is None


@pytest.mark.anyio
async def test_expired_refresh_is_scoped(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Refreshing an expired object that now belongs to another tenant finds no row."""
    async with tenant_session(sessions, A) as session:
        parent = await session.get(Parent, 12)
        assert parent is not None
        await session.commit()
        await move_to_b(engine, 12)
        session.expire(parent)
        with pytest.raises(InvalidRequestError):  # ObjectDeletedError is a subclass
            await parent.awaitable_attrs.name
        with pytest.raises(InvalidRequestError):
            await session.refresh(parent)


@pytest.mark.anyio
async def test_populate_existing_is_scoped(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """populate_existing re-selects under the tenant filter, even for identity-map objects."""
    async with tenant_session(sessions, A) as session:
        assert await session.get(Parent, 12) is not None
        await session.commit()
        await move_to_b(engine, 12)
        fresh = select(Parent).execution_options(populate_existing=True)
        assert {p.id for p in await session.scalars(fresh)} == {11}
        assert await session.get(Parent, 12, populate_existing=True) is None


@pytest.mark.anyio
async def test_aliased_entities_and_joins_are_scoped(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Aliases and join targets are filtered too, not only the main entity."""
    kid = aliased(Child)
    async with tenant_session(sessions, A) as session:
        pairs = await session.execute(select(Parent.id, kid.id).join(kid, Parent.children))
        assert [tuple(row) for row in pairs] == [(11, 11)]
        joined = select(Parent.id).join(Parent.customer)
        assert set(await session.scalars(joined)) == {12}
        other = aliased(Parent)
        assert set(await session.scalars(select(other.id))) == {11, 12}


@pytest.mark.anyio
async def test_bulk_update_without_tenant_predicate_is_refused(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A bulk UPDATE that does not pin the tenant is refused and changes nothing."""
    before = await names(engine, Parent)
    async with tenant_session(sessions, A) as session:
        with pytest.raises(UnscopedBulkWrite):
            await session.execute(update(Parent).values(name="x"))
        loose = or_(Parent.tenant_id == A, Parent.id > 0)
        with pytest.raises(UnscopedBulkWrite):
            await session.execute(update(Parent).where(loose).values(name="x"))
        with pytest.raises(UnscopedBulkWrite):
            await session.execute(update(Parent).where(Parent.tenant_id == B).values(name="x"))
        await session.commit()
    assert await names(engine, Parent) == before


@pytest.mark.anyio
async def test_bulk_update_with_tenant_predicate_changes_only_own_rows(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A bulk UPDATE pinned to the session's tenant runs and touches only that tenant."""
    async with tenant_session(sessions, A) as session:
        stmt = update(Parent).where(Parent.id > 0, Parent.tenant_id == A).values(name="x")
        await session.execute(stmt)
        await session.commit()
    assert await names(engine, Parent) == {11: "x", 12: "x", 21: "pb"}


@pytest.mark.anyio
async def test_bulk_update_cannot_move_rows_to_another_tenant(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A bulk UPDATE setting another tenant's id is a cross-tenant write."""
    async with tenant_session(sessions, A) as session:
        stmt = update(Parent).where(Parent.tenant_id == A).values(tenant_id=B)
        with pytest.raises(CrossTenantWrite):
            await session.execute(stmt)
    async with tenant_session(sessions, B) as session:
        assert set(await session.scalars(select(Parent.id))) == {21}


@pytest.mark.anyio
async def test_bulk_delete_needs_tenant_predicate(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A bulk DELETE without the tenant pin is refused; with it, only own rows go."""
    async with tenant_session(sessions, A) as session:
        with pytest.raises(UnscopedBulkWrite):
            await session.execute(delete(Child))
        await session.execute(delete(Child).where(Child.tenant_id == A))
        await session.commit()
    assert await names(engine, Child) == {22: "kid-b"}


@pytest.mark.anyio
async def test_raw_sql_needs_tenant_checked(sessions: async_sessionmaker[AsyncSession]) -> None:
    """text() and Core statements on tenant tables are refused unless marked tenant_checked."""
    async with tenant_session(sessions, A) as session:
        with pytest.raises(UnscopedRawSQL) as refused:
            await session.execute(text("SELECT id FROM parents"))
        assert refused.value.code == "tenant.raw_sql"
        with pytest.raises(UnscopedRawSQL):
            await session.execute(select(Parent.__table__))
        checked = (
            text("SELECT id FROM parents WHERE tenant_id = :t")
            .bindparams(bindparam("t", A, type_=Uuid()))
            .execution_options(tenant_checked=True)
        )
        assert set(await session.scalars(checked)) == {11, 12}
        vouched = select(Parent.id).execution_options(tenant_checked=True)
        assert set(await session.scalars(vouched)) == {11, 12}  # ORM statements stay filtered
        assert len((await session.execute(select(Tenant.__table__))).all()) == 2


@pytest.mark.anyio
async def test_unscoped_session_refuses_tenant_models(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A session without a tenant cannot read or write tenant models: never all rows."""
    async with sessions() as session:
        assert session_tenant(session) is None
        with pytest.raises(TenantContextMissing):
            await session.execute(select(Parent))
        with pytest.raises(TenantContextMissing):
            await session.get(Parent, 11)
        with pytest.raises(TenantContextMissing):
            await session.execute(select(Tenant.id).join(Parent, Parent.tenant_id == Tenant.id))
        session.add(Parent(name="orphan"))
        with pytest.raises(TenantContextMissing):
            await session.flush()


@pytest.mark.anyio
async def test_unscoped_session_uses_global_models(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Non-tenant models are read and written freely by an unscoped session."""
    new = uuid.uuid4()
    async with sessions() as session:
        assert len((await session.scalars(select(Tenant))).all()) == 2
        session.add(Tenant(id=new, name="c"))
        await session.commit()
    async with sessions() as session:
        assert (await session.get(Tenant, new)) is not None


@pytest.mark.anyio
async def test_new_rows_are_stamped(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """New objects and their cascaded children get the session's tenant on flush."""
    async with tenant_session(sessions, B) as session:
        parent = Parent(name="stamped", children=[Child(name="c1")])
        session.add(parent)
        await session.commit()
        assert parent.tenant_id == B
        assert parent.children[0].tenant_id == B
    async with tenant_session(sessions, A) as session:
        assert await session.get(Parent, parent.id) is None


@pytest.mark.anyio
async def test_flush_of_foreign_row_writes_nothing(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A new object carrying another tenant's id fails the flush before any SQL."""
    before = await names(engine, Parent)
    async with tenant_session(sessions, A) as session:
        session.add_all([Parent(name="mine"), Parent(name="theirs", tenant_id=B)])
        with pytest.raises(CrossTenantWrite) as refused:
            await session.flush()
        assert refused.value.code == "tenant.cross_tenant_write"
        await session.rollback()
    assert await names(engine, Parent) == before


@pytest.mark.anyio
async def test_changing_tenant_id_is_refused(sessions: async_sessionmaker[AsyncSession]) -> None:
    """An existing row cannot be moved to another tenant through the ORM."""
    async with tenant_session(sessions, A) as session:
        parent = await session.get(Parent, 11)
        assert parent is not None
        parent.tenant_id = B
        with pytest.raises(CrossTenantWrite):
            await session.flush()


@pytest.mark.anyio
async def test_merge_of_foreign_object_is_refused(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Merging another tenant's row is refused at flush; the foreign row is unchanged."""
    async with tenant_session(sessions, A) as session:
        await session.merge(Parent(id=21, tenant_id=B, name="hijacked"))
        with pytest.raises(CrossTenantWrite):
            await session.flush()
    assert (await names(engine, Parent))[21] == "pb"


@pytest.mark.anyio
async def test_detached_foreign_object_never_enters_identity_map(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Adding a detached object of another tenant is refused before get() could return it."""
    async with tenant_session(sessions, B) as other:
        foreign = await other.get(Parent, 21)
    assert foreign is not None
    async with tenant_session(sessions, A) as session:
        with pytest.raises(CrossTenantWrite):
            session.add(foreign)
        with pytest.raises(CrossTenantWrite):
            await session.merge(foreign, load=False)
        assert await session.get(Parent, 21) is None


@pytest.mark.anyio
async def test_detached_own_object_can_be_reattached(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A detached object of the session's own tenant is re-added and updated normally."""
    async with tenant_session(sessions, A) as first:
        own = await first.get(Parent, 12)
    assert own is not None
    async with tenant_session(sessions, A) as session:
        session.add(own)
        own.name = "renamed"
        await session.commit()
    assert (await names(engine, Parent))[12] == "renamed"


@pytest.mark.anyio
async def test_orm_insert_is_stamped_or_refused(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """ORM INSERT statements get the tenant when they omit it and are refused for another."""
    async with tenant_session(sessions, A) as session:
        await session.execute(insert(Customer), [{"id": 31, "name": "bulk"}])
        await session.execute(insert(Customer).values(id=32, name="single"))
        await session.execute(insert(Customer).values(id=33, name="own", tenant_id=A))
        with pytest.raises(CrossTenantWrite):
            await session.execute(insert(Customer), [{"id": 34, "name": "x", "tenant_id": B}])
        with pytest.raises(UnscopedBulkWrite):
            await session.execute(insert(Customer).values([{"id": 35, "name": "multi"}]))
        await session.commit()
    async with tenant_session(sessions, A) as session:
        assert set(await session.scalars(select(Customer.id))) == {11, 31, 32, 33}


@pytest.mark.anyio
async def test_upsert_must_pin_the_tenant(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """ON CONFLICT DO UPDATE needs the tenant in its WHERE, so a clash never updates B's row."""
    dialect_insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    clash = dialect_insert(Customer).values(id=21, name="hijacked")
    async with tenant_session(sessions, A) as session:
        loose = clash.on_conflict_do_update(index_elements=["id"], set_={"name": "hijacked"})
        with pytest.raises(UnscopedBulkWrite):
            await session.execute(loose)
        pinned = clash.on_conflict_do_update(
            index_elements=["id"], set_={"name": "hijacked"}, where=Customer.tenant_id == A
        )
        await session.execute(pinned)
        await session.commit()
    assert (await names(engine, Customer))[21] == "cb"
