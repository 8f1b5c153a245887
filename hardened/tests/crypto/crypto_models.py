"""Models and helpers shared by the crypto tests and their worker processes."""

from __future__ import annotations

import uuid

from sqlalchemy import MetaData, String
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hardened.crypto import (
    BlindIndex,
    Crypto,
    Encrypted,
    EncryptedField,
    Keyring,
    LocalKeyProvider,
    data_keys_table,
    encrypted,
    install_encryption,
)
from hardened.db.tenancy import TenantScoped, install_tenancy

A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")
K1 = "k1:BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY="
K2 = "k2:ZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCg4Q="


def digits(value: str) -> str:
    """National ids compare without spaces or dashes."""
    return "".join(ch for ch in value if ch.isdigit())


class Base(DeclarativeBase):
    metadata = MetaData()


DATA_KEYS = data_keys_table(Base.metadata)


class Kyc(TenantScoped, Encrypted, Base):
    """A KYC record: national id (indexed) and bank account encrypted."""

    __tablename__ = "kyc"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    national_id: EncryptedField[str] = encrypted(
        blind_index=BlindIndex(expected_rows=100_000, normalise=digits)
    )
    bank_account: EncryptedField[str | None] = encrypted(nullable=True)


class CryptoSession(Session):
    """Tenancy and encryption, as an application installs them."""


install_tenancy(CryptoSession)


def crypto(keyring: str = K1) -> Crypto:
    """A `Crypto` over ``keyring`` (first entry primary), installed on `CryptoSession`."""
    c = Crypto(DATA_KEYS, LocalKeyProvider(Keyring.parse(keyring)))
    install_encryption(CryptoSession, c)
    return c


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions with tenancy and encryption on ``engine``."""
    return async_sessionmaker(engine, sync_session_class=CryptoSession, expire_on_commit=False)
