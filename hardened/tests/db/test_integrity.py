"""hardened.db.integrity over SQLite and PostgreSQL: storms that count, not assume."""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import CheckConstraint, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.db.integrity import (
    CROCKFORD32,
    Versioned,
    conditional_increment,
    constraint_name,
    human_number,
    insert_with_unique_number,
    integrity_errors,
    optimistic,
    update_versioned,
    upsert_increment,
)
from hardened.db.transaction import sqlite_immediate_transactions
from hardened.errors import ConcurrentModification, Conflict, NotFound

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


class Base(DeclarativeBase):
    pass


class Coupon(Versioned, Base):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(primary_key=True)
    shop_id: Mapped[int] = mapped_column(default=1)
    used: Mapped[int] = mapped_column(default=0)
    usage_limit: Mapped[int]


class CustomerUse(Base):
    __tablename__ = "coupon_customer_uses"

    coupon_id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(primary_key=True)
    uses: Mapped[int]


class Order(Versioned, Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("number", name="uq_orders_number"),
        UniqueConstraint("external_ref", name="uq_orders_external_ref"),
        CheckConstraint("total >= 0", name="ck_orders_total_nonneg"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="new")
    external_ref: Mapped[str | None] = mapped_column(String(40))
    total: Mapped[int] = mapped_column(default=0)


class Shipment(Base):
    __tablename__ = "shipments"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    revision: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": revision}  # noqa: RUF012


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A storm-sized engine with the tables; SQLite runs BEGIN IMMEDIATE with a long busy wait."""
    sqlite = db_url.startswith("sqlite")
    eng = create_async_engine(
        db_url, pool_size=20, max_overflow=0, connect_args={"timeout": 30} if sqlite else {}
    )
    if sqlite:
        sqlite_immediate_transactions(eng)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _retries(constraint: str) -> float:
    value = REGISTRY.get_sample_value(
        "hardened_db_unique_number_retries_total", {"constraint": constraint}
    )
    return value or 0.0


# --- the coupon pattern -----------------------------------------------------------------


@pytest.mark.anyio
async def test_conditional_increment_never_oversells_under_a_storm(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """200 concurrent redemptions of a coupon limited to 50: exactly 50 succeed, used = 50."""
    async with sessions.begin() as s:
        s.add(Coupon(id=1, usage_limit=50))

    async def redeem() -> int | None:
        async with sessions.begin() as s:
            return await conditional_increment(
                s, Coupon.used, where=[Coupon.id == 1], ceiling=Coupon.usage_limit
            )

    results = await asyncio.gather(*(redeem() for _ in range(200)))
    granted = sorted(r for r in results if r is not None)
    assert granted == list(range(1, 51))
    async with sessions() as s:
        assert await s.scalar(select(Coupon.used).where(Coupon.id == 1)) == 50


@pytest.mark.anyio
async def test_conditional_increment_refuses_by_where_floor_and_literal_ceiling(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A non-matching where, a floor or an int ceiling refuse with None and change nothing."""
    async with sessions.begin() as s:
        s.add(Coupon(id=1, shop_id=1, used=1, usage_limit=5))
    async with sessions.begin() as s:
        wrong_shop = [Coupon.id == 1, Coupon.shop_id == 2]
        assert await conditional_increment(s, Coupon.used, where=wrong_shop) is None
        assert (
            await conditional_increment(s, Coupon.used, where=[Coupon.id == 1], ceiling=1) is None
        )
        assert (
            await conditional_increment(s, Coupon.used, where=[Coupon.id == 1], amount=-1, floor=0)
            == 0
        )
        assert (
            await conditional_increment(s, Coupon.used, where=[Coupon.id == 1], amount=-1, floor=0)
            is None
        )
        assert await conditional_increment(s, Coupon.used, where=[Coupon.id == 1], amount=3) == 3
    with pytest.raises(ValueError, match="where"):
        async with sessions() as s:
            await conditional_increment(s, Coupon.used, where=[])


@pytest.mark.anyio
async def test_upsert_increment_caps_each_key_under_concurrency(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """40 concurrent uses per customer with a per-customer limit of 3: exactly 3 each."""

    async def use(customer: int) -> int | None:
        async with sessions.begin() as s:
            key = {"coupon_id": 7, "customer_id": customer}
            pin = [CustomerUse.coupon_id == 7]
            return await upsert_increment(
                s, CustomerUse, key=key, column="uses", ceiling=3, where=pin
            )

    customers = [1, 2] * 40
    results = await asyncio.gather(*(use(c) for c in customers))
    for customer in (1, 2):
        granted = sorted(r for c, r in zip(customers, results, strict=True) if c == customer and r)
        assert granted == [1, 2, 3]
    async with sessions() as s:
        rows = (await s.execute(select(CustomerUse.customer_id, CustomerUse.uses))).all()
    assert sorted(rows) == [(1, 3), (2, 3)]


@pytest.mark.anyio
async def test_upsert_increment_refuses_an_amount_above_the_ceiling_without_a_row(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """An amount larger than the ceiling is refused even for a key with no row yet."""
    async with sessions.begin() as s:
        key = {"coupon_id": 1, "customer_id": 1}
        assert (
            await upsert_increment(s, CustomerUse, key=key, column="uses", ceiling=2, amount=3)
            is None
        )
        table = CustomerUse.__table__
        assert await upsert_increment(s, table, key=key, column="uses", ceiling=2, amount=2) == 2  # type: ignore[arg-type]
        assert await s.scalar(select(func.count()).select_from(CustomerUse)) == 1


@pytest.mark.anyio
async def test_conditional_increment_keeps_statements_apart_per_column_and_bounds(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Cached statement shapes never leak across columns, tables or ceiling kinds."""
    async with sessions.begin() as s:
        s.add(Coupon(id=1, used=0, usage_limit=2))
        s.add(CustomerUse(coupon_id=1, customer_id=1, uses=0))
    async with sessions.begin() as s:
        assert await conditional_increment(s, Coupon.used, where=[Coupon.id == 1], ceiling=2) == 1
        assert (
            await conditional_increment(
                s, CustomerUse.uses, where=[CustomerUse.coupon_id == 1], ceiling=1
            )
            == 1
        )
        assert await conditional_increment(s, Coupon.version, where=[Coupon.id == 1]) == 2
        assert (
            await conditional_increment(
                s, Coupon.used, where=[Coupon.id == 1], ceiling=Coupon.usage_limit
            )
            == 2
        )
        assert (
            await conditional_increment(
                s, Coupon.used, where=[Coupon.id == 1], ceiling=Coupon.usage_limit
            )
            is None
        )
        assert (
            await conditional_increment(
                s, CustomerUse.uses, where=[CustomerUse.coupon_id == 1], ceiling=1
            )
            is None
        )


# --- optimistic locking -----------------------------------------------------------------


@pytest.mark.anyio
async def test_update_versioned_lets_exactly_one_of_two_concurrent_writers_win(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Two updates from the same version: one wins (version 2), the other gets a 409."""
    async with sessions.begin() as s:
        s.add(Order(id=1, number="N1"))
    both_read = asyncio.Barrier(2)

    async def transition(status: str) -> Order:
        async with sessions.begin() as s:
            seen = await s.scalar(select(Order.version).where(Order.id == 1))
        await both_read.wait()
        assert seen is not None
        async with sessions.begin() as s:
            return await update_versioned(s, Order, 1, seen, {"status": status})

    outcomes = await asyncio.gather(
        transition("paid"), transition("cancelled"), return_exceptions=True
    )
    winners = [o for o in outcomes if isinstance(o, Order)]
    losers = [o for o in outcomes if isinstance(o, ConcurrentModification)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert winners[0].version == 2
    assert losers[0].status == 409
    assert losers[0].context["expected_version"] == 1
    async with sessions() as s:
        row = (await s.execute(select(Order.status, Order.version))).one()
    assert tuple(row) == (winners[0].status, 2)


@pytest.mark.anyio
async def test_update_versioned_reports_absent_and_out_of_scope_rows_as_not_found(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """An absent row, or one outside extra_where, is NotFound with the caller's code."""
    async with sessions.begin() as s:
        s.add(Coupon(id=1, shop_id=1, usage_limit=5))
    async with sessions() as s:
        with pytest.raises(NotFound) as absent:
            await update_versioned(
                s, Coupon, 99, 1, {"usage_limit": 6}, not_found_code="coupon.not_found"
            )
        assert absent.value.code == "coupon.not_found"
        with pytest.raises(NotFound):
            await update_versioned(
                s, Coupon, 1, 1, {"usage_limit": 6}, extra_where=[Coupon.shop_id == 2]
            )
        with pytest.raises(ValueError, match="version"):
            await update_versioned(s, Coupon, 1, 1, {"version": 5})


@pytest.mark.anyio
async def test_update_versioned_refreshes_the_instance_already_in_the_session(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The returned object is the session's instance, carrying the new values and version."""
    async with sessions.begin() as s:
        s.add(Coupon(id=1, usage_limit=5))
    async with sessions.begin() as s:
        loaded = await s.get(Coupon, 1)
        assert loaded is not None
        updated = await update_versioned(
            s, Coupon, {"id": 1}, 1, {"usage_limit": 9}, conflict_code="coupon.changed"
        )
        assert updated is loaded
        assert (loaded.usage_limit, loaded.version) == (9, 2)
        with pytest.raises(ConcurrentModification) as stale:
            await update_versioned(
                s, Coupon, 1, 1, {"usage_limit": 10}, conflict_code="coupon.changed"
            )
        assert stale.value.code == "coupon.changed"


@pytest.mark.anyio
async def test_optimistic_maps_stale_data_from_version_id_col_to_409(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A flush against a version_id_col row changed meanwhile raises ConcurrentModification."""
    async with sessions.begin() as s:
        s.add(Shipment(id=1, status="created"))
    async with sessions() as late:
        async with late.begin():
            mine = await late.get(Shipment, 1)
        async with sessions.begin() as early:
            theirs = await early.get(Shipment, 1)
            assert theirs is not None
            theirs.status = "picked"
        assert mine is not None
        mine.status = "cancelled"
        with (
            pytest.raises(ConcurrentModification) as err,
            optimistic(code="shipment.version_conflict"),
        ):
            await late.commit()
        assert err.value.code == "shipment.version_conflict"


# --- unique human-facing numbers ----------------------------------------------------------


def _sequence(*numbers: str) -> Callable[[], str]:
    it = iter(numbers)
    return lambda: next(it)


@pytest.mark.anyio
async def test_insert_with_unique_number_retries_collisions_and_counts_them(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Two collisions with an existing number are retried in savepoints; the third number sticks."""
    async with sessions.begin() as s:
        s.add(Order(number="A"))
    before = _retries("uq_orders_number")
    async with sessions.begin() as s:
        order = await insert_with_unique_number(
            s,
            lambda n: Order(number=n),
            constraint="uq_orders_number",
            generate=_sequence("A", "A", "B"),
        )
    assert order.number == "B"
    assert _retries("uq_orders_number") - before == 2
    async with sessions() as s:
        assert sorted(await s.scalars(select(Order.number))) == ["A", "B"]


@pytest.mark.anyio
async def test_insert_with_unique_number_exhausts_into_a_conflict_and_keeps_the_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Collisions on every attempt give Conflict number.exhausted; the outer work still commits."""
    async with sessions.begin() as s:
        s.add(Order(number="A"))
    async with sessions.begin() as s:
        s.add(Order(number="Z", status="kept"))
        with pytest.raises(Conflict) as err:
            await insert_with_unique_number(
                s,
                lambda n: Order(number=n),
                constraint="uq_orders_number",
                generate=lambda: "A",
                attempts=3,
            )
        assert err.value.code == "number.exhausted"
    async with sessions() as s:
        assert sorted(await s.scalars(select(Order.number))) == ["A", "Z"]


@pytest.mark.anyio
async def test_insert_with_unique_number_does_not_swallow_other_violations(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A violation of another unique constraint propagates after a single attempt."""
    async with sessions.begin() as s:
        s.add(Order(number="A", external_ref="X"))
    calls = itertools.count()

    def generate() -> str:
        next(calls)
        return human_number()

    async with sessions() as s:
        with pytest.raises(IntegrityError):
            await insert_with_unique_number(
                s,
                lambda n: Order(number=n, external_ref="X"),
                constraint="uq_orders_number",
                generate=generate,
            )
    assert next(calls) == 1


@pytest.mark.anyio
async def test_insert_with_unique_number_accepts_a_column_hint(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A columns= hint matches SQLite's unnamed UNIQUE error like the constraint name does."""
    async with sessions.begin() as s:
        s.add(Order(number="A"))
    async with sessions.begin() as s:
        order = await insert_with_unique_number(
            s,
            lambda n: Order(number=n),
            constraint="uq_orders_number",
            columns=["orders.number"],
            generate=_sequence("A", "C"),
        )
    assert order.number == "C"


@pytest.mark.anyio
async def test_insert_with_unique_number_gives_500_concurrent_orders_distinct_numbers(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """500 concurrent inserts with the default generator: 500 rows, 500 distinct numbers."""

    async def create() -> str:
        async with sessions.begin() as s:
            order = await insert_with_unique_number(
                s, lambda n: Order(number=n), constraint="uq_orders_number"
            )
            return order.number

    numbers = await asyncio.gather(*(create() for _ in range(500)))
    assert len(set(numbers)) == 500
    async with sessions() as s:
        assert await s.scalar(select(func.count(func.distinct(Order.number)))) == 500


@pytest.mark.anyio
async def test_insert_with_unique_number_refuses_legacy_sqlite_savepoints(
    sqlite_file_url: str,
) -> None:
    """On SQLite without BEGIN IMMEDIATE the helper refuses, since RELEASE would commit early."""
    eng = create_async_engine(sqlite_file_url)
    try:
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with async_sessionmaker(eng)() as s:
            with pytest.raises(RuntimeError, match="sqlite_immediate_transactions"):
                await insert_with_unique_number(
                    s, lambda n: Order(number=n), constraint="uq_orders_number"
                )
    finally:
        await eng.dispose()


def test_human_number_draws_from_the_alphabet_with_prefix_and_groups() -> None:
    """Numbers have the prefix, the length, the grouping and only alphabet symbols."""
    number = human_number(prefix="ORD-", length=10, group=4)
    assert number.startswith("ORD-")
    groups = number.removeprefix("ORD-").split("-")
    assert [len(g) for g in groups] == [4, 4, 2]
    assert set("".join(groups)) <= set(CROCKFORD32)
    assert len({human_number() for _ in range(1000)}) == 1000
    with pytest.raises(ValueError, match="alphabet"):
        human_number(alphabet="AAAA")


# --- constraint names ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_integrity_errors_maps_violations_by_constraint_name(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Unique and check violations become the mapped errors; unmapped ones re-raise."""
    async with sessions.begin() as s:
        s.add(Order(number="A", external_ref="X"))
    shared = Conflict("Already imported.", code="order.duplicate_ref")
    mapping = {"uq_orders_external_ref": shared}
    async with sessions() as s:
        with pytest.raises(Conflict) as err, integrity_errors(mapping, metadata=Base.metadata):  # noqa: PT012
            s.add(Order(number="B", external_ref="X"))
            await s.flush()
        assert err.value.code == "order.duplicate_ref"
        assert err.value is not shared
    async with sessions() as s:
        with pytest.raises(IntegrityError), integrity_errors(mapping, metadata=Base.metadata):  # noqa: PT012
            s.add(Order(number="A"))
            await s.flush()
    async with sessions() as s:
        with pytest.raises(IntegrityError) as raw:  # noqa: PT012
            s.add(Order(number="C", total=-1))
            await s.flush()
        assert constraint_name(raw.value) == "ck_orders_total_nonneg"
    async with sessions() as s:
        factory = {"ck_orders_total_nonneg": lambda: Conflict(code="order.negative_total")}
        with pytest.raises(Conflict, match="Conflict") as neg, integrity_errors(factory):  # noqa: PT012
            s.add(Order(number="D", total=-5))
            await s.flush()
        assert neg.value.code == "order.negative_total"
