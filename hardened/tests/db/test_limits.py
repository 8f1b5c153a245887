"""hardened.db.limits: caps enforced by pydantic and by the database itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import JSON, Column, ForeignKey, Integer, MetaData, Table, UniqueConstraint, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import CompileError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateTable

from hardened.db.integrity import constraint_name
from hardened.db.limits import (
    MAX_COLLECTION_ITEMS,
    BoundedList,
    bounded_list,
    cardinality_check,
    position_check,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine


class Base(DeclarativeBase):
    pass


class Zone(Base):
    __tablename__ = "zones"
    __table_args__ = (cardinality_check("postal_codes", 3),)

    id: Mapped[int] = mapped_column(primary_key=True)
    postal_codes: Mapped[list[str] | None] = mapped_column(
        JSON().with_variant(JSONB(), "postgresql")
    )


class ZoneLine(Base):
    __tablename__ = "zone_lines"
    __table_args__ = (
        UniqueConstraint("zone_id", "position", name="uq_zone_lines_position"),
        position_check("position", 3),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    zone_id: Mapped[int] = mapped_column(ForeignKey("zones.id"))
    position: Mapped[int]


class Carriers(DeclarativeBase):
    pass


class CarrierSet(Carriers):
    __tablename__ = "carrier_sets"
    __table_args__ = (cardinality_check("carriers", 2, kind="array"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    carriers: Mapped[list[int]] = mapped_column(ARRAY(Integer))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine over db_url with the zone tables created."""
    eng = create_async_engine(db_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


async def _insert(engine: AsyncEngine, model: type[Any], **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(model).values(**values))


@pytest.mark.anyio
async def test_position_check_with_unique_position_caps_children_per_parent(
    engine: AsyncEngine,
) -> None:
    """Positions unique per parent and within 1..3: a fourth child cannot be stored."""
    await _insert(engine, Zone, id=1, postal_codes=[])
    for position in (1, 2, 3):
        await _insert(engine, ZoneLine, zone_id=1, position=position)
    with pytest.raises(IntegrityError) as beyond:
        await _insert(engine, ZoneLine, zone_id=1, position=4)
    assert constraint_name(beyond.value) == "position_max_3"
    for position in (0, 2):
        with pytest.raises(IntegrityError):
            await _insert(engine, ZoneLine, zone_id=1, position=position)


@pytest.mark.anyio
async def test_cardinality_check_caps_a_json_array_column(engine: AsyncEngine) -> None:
    """A JSON array of 3 items fits a cap of 3; 4 items are rejected by the database."""
    await _insert(engine, Zone, id=1, postal_codes=["1000", "1010", "1020"])
    await _insert(engine, Zone, id=2, postal_codes=None)
    with pytest.raises(IntegrityError) as err:
        await _insert(engine, Zone, id=3, postal_codes=["1", "2", "3", "4"])
    assert constraint_name(err.value) == "postal_codes_max_3_items"


@pytest.mark.anyio
async def test_cardinality_check_caps_a_postgresql_array(pg_url: str) -> None:
    """On PostgreSQL an ARRAY column is capped with cardinality()."""
    eng = create_async_engine(pg_url)
    try:
        async with eng.begin() as conn:
            await conn.run_sync(Carriers.metadata.create_all)
        await _insert(eng, CarrierSet, id=1, carriers=[1, 2])
        with pytest.raises(IntegrityError):
            await _insert(eng, CarrierSet, id=2, carriers=[1, 2, 3])
    finally:
        await eng.dispose()


def test_cardinality_check_of_an_array_does_not_compile_for_sqlite() -> None:
    """SQLite has no arrays, so an array cap fails loudly at DDL time rather than silently."""
    table = Table("t", MetaData(), Column("tags", JSON), cardinality_check("tags", 2, kind="array"))
    with pytest.raises(CompileError, match="no array type"):
        CreateTable(table).compile(dialect=sqlite.dialect())


class Audience(BaseModel):
    phones: BoundedList[str]


def test_bounded_list_rejects_one_item_past_the_default_cap() -> None:
    """10,000 items validate; 10,001 raise a pydantic ValidationError (too_long)."""
    assert len(Audience(phones=["+30"] * MAX_COLLECTION_ITEMS).phones) == 10_000
    with pytest.raises(ValidationError) as err:
        Audience(phones=["+30"] * (MAX_COLLECTION_ITEMS + 1))
    assert err.value.errors()[0]["type"] == "too_long"


def test_bounded_list_helper_takes_a_custom_cap() -> None:
    """bounded_list(int, 3) accepts 3 items and rejects 4."""
    adapter: TypeAdapter[list[int]] = TypeAdapter(bounded_list(int, 3))
    assert adapter.validate_python([1, 2, 3]) == [1, 2, 3]
    with pytest.raises(ValidationError):
        adapter.validate_python([1, 2, 3, 4])


def test_limit_constructors_reject_bad_arguments() -> None:
    """Column names must be plain identifiers and caps at least 1."""
    with pytest.raises(ValueError, match="column name"):
        position_check("position; DROP TABLE x", 3)
    with pytest.raises(ValueError, match="max_items"):
        cardinality_check("tags", 0)
    with pytest.raises(ValueError, match="max_items"):
        bounded_list(int, 0)
