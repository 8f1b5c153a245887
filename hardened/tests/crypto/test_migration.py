"""Plaintext column → encrypted field: add columns, dual write, backfill, scrub, restore, drop."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from crypto_models import A, B, CryptoSession, crypto
from sqlalchemy import MetaData, String, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.crypto import (
    BatchConfig,
    BlindIndex,
    Encrypted,
    EncryptedField,
    PlaintextMigration,
    data_keys_table,
    encrypted,
    lookup,
)
from hardened.db.tenancy import TenantScoped, tenant_session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.anyio


class Legacy(DeclarativeBase):
    metadata = MetaData()


class Customer(TenantScoped, Legacy):
    """The table before the migration: the tax id in plain text."""

    __tablename__ = "customers"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tax_id: Mapped[str | None] = mapped_column(String(40))


class Migrated(DeclarativeBase):
    metadata = MetaData()


data_keys_table(Migrated.metadata)


class DualCustomer(TenantScoped, Encrypted, Migrated):
    """During the migration: dual write, reads fall back to the plaintext."""

    __tablename__ = "customers"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tax: EncryptedField[str | None] = encrypted(
        blind_index=BlindIndex(expected_rows=1000), plaintext_column="tax_id"
    )


async def test_the_migration_steps_are_idempotent_and_reversible(engine: AsyncEngine) -> None:
    """Backfill, dual write and scrub keep values readable, restore gives the plaintext back."""
    c = crypto()
    async with engine.begin() as conn:
        await conn.run_sync(Legacy.metadata.create_all)
        await conn.execute(
            Customer.__table__.insert(),
            [
                {"id": uuid.uuid4(), "tenant_id": (A, B)[i % 2], "tax_id": f"T{i:04}"}
                for i in range(40)
            ],
        )
    migration = PlaintextMigration(c, DualCustomer.tax, "tax_id")
    assert set(await migration.add_columns(engine)) == {"tax_ct", "tax_bidx", "key_version"}
    assert await migration.add_columns(engine) == []
    dual = async_sessionmaker(engine, sync_session_class=CryptoSession, expire_on_commit=False)
    async with tenant_session(dual, A) as s, s.begin():
        s.add(DualCustomer(tax="NEW-A"))  # dual write before the backfill
    async with tenant_session(dual, A) as s:
        found = (await s.execute(select(DualCustomer).order_by(DualCustomer.id))).scalars().all()
        assert {r.tax for r in found} >= {"T0000", "NEW-A"}  # unbackfilled rows read plaintext
    assert (await migration.status(engine)).plaintext_only == 40
    assert await migration.backfill(engine, config=BatchConfig(batch=9)) == 40
    assert await migration.backfill(engine) == 0
    status = await migration.status(engine)
    assert (status.plaintext_only, status.both) == (0, 41)
    async with tenant_session(dual, A) as s:
        assert [r.tax for r in await lookup(s, DualCustomer.tax, "T0002")] == ["T0002"]
    async with engine.connect() as conn:
        before = (await conn.execute(text("SELECT id, tax_id FROM customers ORDER BY id"))).all()
    with pytest.raises(RuntimeError):
        await migration.drop_plaintext(engine)  # not scrubbed yet
    assert await migration.scrub(engine) == 41
    async with tenant_session(dual, B) as s:  # reads now come from the ciphertext
        rows = (await s.execute(select(DualCustomer))).scalars().all()
        assert sorted(r.tax for r in rows if r.tax) == [f"T{i:04}" for i in range(1, 40, 2)]
    async with engine.connect() as conn:
        left = await conn.execute(text("SELECT count(*) FROM customers WHERE tax_id IS NOT NULL"))
        assert left.scalar_one() == 0
    assert await migration.restore(engine) == 41
    async with engine.connect() as conn:
        after = (await conn.execute(text("SELECT id, tax_id FROM customers ORDER BY id"))).all()
        cleared = await conn.execute(
            text("SELECT count(*) FROM customers WHERE tax_ct IS NOT NULL")
        )
        assert cleared.scalar_one() == 0
    assert after == before
    assert await migration.backfill(engine) == 41
    assert await migration.scrub(engine) == 41
    assert await migration.drop_plaintext(engine) is True
    assert await migration.drop_plaintext(engine) is False
