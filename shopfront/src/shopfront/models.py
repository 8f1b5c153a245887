"""ORM models.

Every tenant table mixes in `TenantScoped` (rows filtered and stamped by the
session's tenant, and by PostgreSQL RLS underneath) and leads its indexes with
``tenant_id``, because every query of the service is per shop. Invariants the
seeds saw broken are constraints, not application checks: a coupon's ``used``
never exceeds its limit, an order has at most `MAX_ORDER_LINES` lines, an order
has at most one shipment, and the status history has one row per version.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from hardened.crypto import BlindIndex, Encrypted, EncryptedField, data_keys_table, encrypted
from hardened.db.integrity import Versioned
from hardened.db.limits import position_check
from hardened.db.tenancy import TenantScoped
from hardened.idempotency import idempotency_table
from hardened.ledger import ledger_tables

__all__ = [
    "DATA_KEYS",
    "EMAIL_TOKEN_PURPOSES",
    "IDEMPOTENCY",
    "KYC_STATUSES",
    "LEDGER",
    "MAX_ADDRESS_CHARS",
    "MAX_ORDER_LINES",
    "NAMING",
    "ROLE_NAMES",
    "ApiKey",
    "Base",
    "CatalogItem",
    "Coupon",
    "CouponUsage",
    "Customer",
    "EmailToken",
    "Integration",
    "Invitation",
    "KycRecord",
    "OAuthAccount",
    "Order",
    "OrderLine",
    "OrderStatusChange",
    "PasswordReset",
    "Shipment",
    "SimActivation",
    "Tenant",
    "UTCDateTime",
    "User",
    "digits_and_letters",
]

MAX_ORDER_LINES = 100
# The roles of a shop, least privileged first (what each grants: shopfront.permissions).
ROLE_NAMES = ("read_only", "staff", "admin", "owner")
_ROLE_CHECK = "role IN ({})".format(", ".join(f"'{r}'" for r in ROLE_NAMES))

# Deterministic constraint names, so migrations are the same on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores no offset and returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            msg = "naive datetimes are refused: pass an aware UTC datetime"
            raise ValueError(msg)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)  # noqa: S101
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


class Tenant(Base):
    """A shop. Its domain is normalised and unique across the platform."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200))
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class User(TenantScoped, Base):
    """A member of a shop with one role there; the password is only ever stored hashed."""

    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email"),
        CheckConstraint(_ROLE_CHECK, name="role"),
        CheckConstraint(
            "kyc_status IN ('none', 'pending', 'verified', 'rejected')", name="kyc_status"
        ),
        Index("ix_users_tenant_role", "tenant_id", "role"),
    )

    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    # When the member last proved they receive mail at ``email`` (None: never).
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set with the KYC record's status, in the same transaction (shopfront.kyc.verify).
    kyc_status: Mapped[str] = mapped_column(String(20), default="none", server_default="none")


class ApiKey(TenantScoped, Base):
    """A shop API key with a role; only its SHA-256 is stored (the key is 256 random bits).

    A rotated key keeps working until ``expires_at`` (the overlap) and names its
    successor in ``replaced_by``; a revoked key stops at once.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("key_hash"),
        CheckConstraint(_ROLE_CHECK, name="role"),
        Index("ix_api_keys_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replaced_by: Mapped[uuid.UUID | None] = mapped_column(Uuid())


class Invitation(TenantScoped, Base):
    """An invitation to join a shop with a role: single-use, expiring, stored as a keyed hash."""

    __tablename__ = "invitations"
    __table_args__ = (
        CheckConstraint(_ROLE_CHECK, name="role"),
        Index("ix_invitations_tenant_created", "tenant_id", "created_at", "id"),
        # Acceptance looks up pending invitations only (see `EmailToken` for why partial).
        Index(
            "ix_invitations_live",
            "tenant_id",
            "token_hash",
            unique=True,
            postgresql_where=text("accepted_at IS NULL"),
            sqlite_where=text("accepted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PasswordReset(TenantScoped, Base):
    """A single-use, expiring reset token, stored as a keyed hash."""

    __tablename__ = "password_resets"
    __table_args__ = (
        # A reset looks up unused tokens only (see `EmailToken` for why partial).
        Index(
            "ix_password_resets_live",
            "tenant_id",
            "token_hash",
            unique=True,
            postgresql_where=text("used_at IS NULL"),
            sqlite_where=text("used_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- Email verification and email change (shopfront.services.accounts) ---------------------

EMAIL_TOKEN_PURPOSES = ("verify", "change")


class EmailToken(TenantScoped, Base):
    """A single-use, expiring token mailed to ``email``, stored as a keyed hash.

    ``verify`` proves the member receives mail at their address; ``change``
    makes ``email`` (the new address, where the token was sent) theirs. Every
    lookup is of a live token, so the hash index covers only unused rows: it
    stays as small as the pending tokens however many used ones accumulate,
    and its uniqueness (per shop, among live tokens) is what makes a presented
    token match at most one row. A used row keeps its hash, unindexed, as a
    record. Deleting the member deletes their tokens.
    """

    __tablename__ = "email_tokens"
    __table_args__ = (
        CheckConstraint(
            "purpose IN ({})".format(", ".join(f"'{p}'" for p in EMAIL_TOKEN_PURPOSES)),
            name="purpose",
        ),
        Index(
            "ix_email_tokens_live",
            "tenant_id",
            "token_hash",
            unique=True,
            postgresql_where=text("used_at IS NULL"),
            sqlite_where=text("used_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(10))
    email: Mapped[str] = mapped_column(String(320))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- end of email tokens --------------------------------------------------------------------


class Customer(TenantScoped, Base):
    __tablename__ = "customers"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email"),
        Index("ix_customers_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class CatalogItem(TenantScoped, Base):
    """A plan, add-on or installation a shop sells."""

    __tablename__ = "catalog_items"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sku"),
        CheckConstraint("price_cents >= 0", name="price_not_negative"),
        CheckConstraint("kind IN ('plan', 'addon', 'installation')", name="kind"),
        Index("ix_catalog_items_tenant_kind", "tenant_id", "kind"),
    )

    id: Mapped[uuid.UUID] = _id()
    kind: Mapped[str] = mapped_column(String(20))
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class Coupon(TenantScoped, Base):
    """A discount code; ``used`` is only ever changed by a conditional increment."""

    __tablename__ = "coupons"
    __table_args__ = (
        UniqueConstraint("tenant_id", "code"),
        CheckConstraint("usage_limit > 0", name="limit_positive"),
        CheckConstraint("used >= 0 AND used <= usage_limit", name="used_within_limit"),
        CheckConstraint("percent_off BETWEEN 1 AND 100", name="percent_range"),
        CheckConstraint(
            "per_customer_limit IS NULL OR per_customer_limit > 0", name="per_customer_positive"
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    code: Mapped[str] = mapped_column(String(64))
    percent_off: Mapped[int] = mapped_column(Integer)
    usage_limit: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    per_customer_limit: Mapped[int | None] = mapped_column(Integer)
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class CouponUsage(TenantScoped, Base):
    """Redemptions of one coupon by one customer (the per-customer limit)."""

    __tablename__ = "coupon_usages"
    __table_args__ = (CheckConstraint("used >= 0", name="used_not_negative"),)

    coupon_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("coupons.id"), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0)


class Order(TenantScoped, Versioned, Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("tenant_id", "number"),
        UniqueConstraint("tenant_id", "external_ref"),
        CheckConstraint(
            "status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')", name="status"
        ),
        CheckConstraint("total_cents >= 0 AND discount_cents >= 0", name="amounts"),
        Index("ix_orders_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_orders_tenant_status", "tenant_id", "status"),
        Index("ix_orders_tenant_customer", "tenant_id", "customer_id"),
    )

    id: Mapped[uuid.UUID] = _id()
    number: Mapped[str] = mapped_column(String(32))
    external_ref: Mapped[str | None] = mapped_column(String(100))
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"))
    coupon_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("coupons.id"))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    # BIGINT: price (<= 10^8) x quantity (<= 1000) x lines (<= 100) passes 2^31.
    subtotal_cents: Mapped[int] = mapped_column(BigInteger)
    discount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    lines: Mapped[list[OrderLine]] = relationship(
        order_by="OrderLine.position", lazy="selectin", cascade="all, delete-orphan"
    )


class OrderLine(TenantScoped, Base):
    """One line; unique (order, position) with position in 1..MAX_ORDER_LINES caps lines in SQL."""

    __tablename__ = "order_lines"
    __table_args__ = (
        UniqueConstraint("order_id", "position"),
        position_check("position", MAX_ORDER_LINES),
        CheckConstraint("quantity BETWEEN 1 AND 1000", name="quantity_range"),
    )

    id: Mapped[uuid.UUID] = _id()
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("catalog_items.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)


class OrderStatusChange(TenantScoped, Base):
    """The status history; unique (order, version) makes a lost update impossible to record."""

    __tablename__ = "order_status_changes"
    __table_args__ = (UniqueConstraint("order_id", "version"),)

    id: Mapped[uuid.UUID] = _id()
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class Shipment(TenantScoped, Versioned, Base):
    __tablename__ = "shipments"
    __table_args__ = (
        UniqueConstraint("order_id"),
        CheckConstraint(
            "status IN ('label_created', 'in_transit', 'delivered', 'returned')", name="status"
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id"))
    carrier: Mapped[str] = mapped_column(String(50))
    tracking_number: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="label_created")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class SimActivation(TenantScoped, Base):
    """A SIM the shop activated at the provider, paid from its credits."""

    __tablename__ = "sim_activations"
    __table_args__ = (UniqueConstraint("tenant_id", "iccid"),)

    id: Mapped[uuid.UUID] = _id()
    iccid: Mapped[str] = mapped_column(String(22))
    plan: Mapped[str] = mapped_column(String(50))
    provider_ref: Mapped[str] = mapped_column(String(100))
    reservation_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    price: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


# Library tables in the service's metadata, so migrations and the schema check see them.
# The ledger is keyed by owner (the shop's id) rather than tenant_id: every route reaches
# it only through the authenticated shop's own wallet (see shopfront.routes.wallet).
LEDGER = ledger_tables(Base.metadata)
IDEMPOTENCY = idempotency_table(Base.metadata)
# Each shop's data keys, wrapped by ENCRYPTION_KEY (the encrypted models below use them).
DATA_KEYS = data_keys_table(Base.metadata, "data_keys")


# Personal data and credentials: every sensitive field is a `hardened.crypto` ciphertext
# bound to its cell under the shop's data key; national and tax ids carry blind indexes
# so staff find a record by number without the database ever holding the number.
KYC_STATUSES = ("pending", "verified", "rejected")
MAX_ADDRESS_CHARS = 500
# Sized for the largest shop we plan for; the bit rule keeps >= 2 rows per index value.
_EXPECTED_KYC_ROWS = 1_000_000


def digits_and_letters(value: str) -> str:
    """Ids compare without spaces, dashes or case ("ABCDE 1234 F" = "abcde1234f")."""
    return "".join(ch for ch in value.upper() if ch.isalnum())


class KycRecord(TenantScoped, Encrypted, Base):
    """A member's KYC record; one per member, verified by a provider."""

    __tablename__ = "kyc_records"
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id"),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in KYC_STATUSES)), name="status"
        ),
        Index("ix_kyc_records_tenant_status", "tenant_id", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    national_id: EncryptedField[str] = encrypted(
        blind_index=BlindIndex(_EXPECTED_KYC_ROWS, normalise=digits_and_letters)
    )
    tax_id: EncryptedField[str] = encrypted(
        blind_index=BlindIndex(_EXPECTED_KYC_ROWS, normalise=digits_and_letters)
    )
    bank_account: EncryptedField[str | None] = encrypted(nullable=True)
    address: EncryptedField[str | None] = encrypted(nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OAuthAccount(TenantScoped, Encrypted, Base):
    """A member's linked OAuth account (e.g. Google): the tokens only encrypted."""

    __tablename__ = "oauth_accounts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "provider", "subject"),
        Index("ix_oauth_accounts_tenant_user", "tenant_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    provider: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(255))
    access_token: EncryptedField[str] = encrypted()
    refresh_token: EncryptedField[str | None] = encrypted(nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class Integration(TenantScoped, Encrypted, Base):
    """A shop-platform integration (e.g. Shopify): the access token only encrypted."""

    __tablename__ = "integrations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "platform", "shop_domain"),
        Index("ix_integrations_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    platform: Mapped[str] = mapped_column(String(40))
    shop_domain: Mapped[str] = mapped_column(String(253))
    access_token: EncryptedField[str] = encrypted()
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
