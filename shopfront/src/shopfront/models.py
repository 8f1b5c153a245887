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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from hardened.db.integrity import Versioned
from hardened.db.limits import position_check
from hardened.db.tenancy import TenantScoped
from hardened.idempotency import idempotency_table
from hardened.ledger import ledger_tables

__all__ = [
    "IDEMPOTENCY",
    "LEDGER",
    "MAX_ORDER_LINES",
    "NAMING",
    "ROLE_NAMES",
    "ApiKey",
    "Base",
    "CatalogItem",
    "Coupon",
    "CouponUsage",
    "Customer",
    "Invitation",
    "Order",
    "OrderLine",
    "OrderStatusChange",
    "PasswordReset",
    "Shipment",
    "SimActivation",
    "Tenant",
    "UTCDateTime",
    "User",
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
        Index("ix_users_tenant_role", "tenant_id", "role"),
    )

    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


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
        UniqueConstraint("token_hash"),
        CheckConstraint(_ROLE_CHECK, name="role"),
        Index("ix_invitations_tenant_created", "tenant_id", "created_at", "id"),
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

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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
