"""The migrated table of the scale tests, shared by the tests and their worker process."""

from __future__ import annotations

import uuid

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.crypto import (
    BlindIndex,
    Crypto,
    Encrypted,
    EncryptedField,
    PlaintextMigration,
    encrypted,
)
from hardened.db.tenancy import TenantScoped

TAX_TABLE = "tax_records"
TAX_PLAINTEXT = "tax_id"


class ScaleBase(DeclarativeBase):
    metadata = MetaData()


class TaxRecord(TenantScoped, Encrypted, ScaleBase):
    """A tax id being moved from its plaintext column into an encrypted field."""

    __tablename__ = TAX_TABLE
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tax: EncryptedField[str | None] = encrypted(
        blind_index=BlindIndex(expected_rows=100_000), plaintext_column=TAX_PLAINTEXT
    )


def tax_migration(crypto: Crypto) -> PlaintextMigration:
    """The migration of ``tax_records.tax_id`` into `TaxRecord.tax`."""
    return PlaintextMigration(crypto, TaxRecord.tax, TAX_PLAINTEXT)
