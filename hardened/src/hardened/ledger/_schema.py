"""The ledger's tables, built into the service's own `MetaData` (and so its migrations).

Why a function and not models: a service owns its schema and its Alembic
history, so it calls `ledger_tables` on its metadata (with its own prefix or
schema) and autogenerate picks the tables up like any others. Constraint names
are fixed (wrapped in `conv`, so a metadata naming convention does not rename
them) because the ledger maps violations back to errors by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.sql.elements import conv

if TYPE_CHECKING:
    from sqlalchemy import Dialect, MetaData

__all__ = [
    "KEY_MAX_LENGTH",
    "AccountKind",
    "LedgerTables",
    "OperationKind",
    "ReservationStatus",
    "UtcDateTime",
    "ledger_tables",
]

KEY_MAX_LENGTH = 255


class AccountKind:
    """Account kinds: one of each per book (owner, unit)."""

    WALLET = "wallet"  # the customer's credits: never negative
    FUNDING = "funding"  # where top-ups come from: as negative as all credits ever issued
    REVENUE = "revenue"  # where spent credits go, and refunds come from: never negative


class OperationKind:
    TOP_UP = "top_up"
    RESERVE = "reserve"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRE = "expire"
    DEBIT = "debit"
    REFUND = "refund"


class ReservationStatus:
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC ``datetime`` on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime given to the ledger; pass an aware one"
            raise ValueError(msg)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers return datetimes
            msg = f"unexpected timestamp {value!r}"
            raise TypeError(msg)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class LedgerTables:
    """The four tables and the constraint names the ledger maps to errors."""

    accounts: Table
    operations: Table
    entries: Table
    reservations: Table
    #: CHECK constraints that, when violated, mean "not enough credits".
    funds_checks: frozenset[str]
    #: The unique constraint on (account, idempotency key).
    key_unique: str
    #: CHECK constraint bounding an operation's refunds by its amount.
    refund_check: str


def _enum_check(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def ledger_tables(
    metadata: MetaData, *, prefix: str = "ledger_", schema: str | None = None
) -> LedgerTables:
    """Add the ledger's tables to ``metadata`` (names ``{prefix}accounts`` and so on).

    ``accounts``: one wallet, one funding and one revenue account per book
    (owner, unit); ``balance`` is posted credits and ``reserved`` the sum of
    held reservations, with ``balance >= 0`` and ``reserved <= balance``
    checked by the database on every account except funding. ``operations``:
    one row per applied operation, unique per (account, idempotency key).
    ``entries``: the journal; each operation's entries sum to zero.
    ``reservations``: holds with their expiry.
    """
    p = prefix
    fk = f"{schema}." if schema else ""
    kinds = (AccountKind.WALLET, AccountKind.FUNDING, AccountKind.REVENUE)
    nonnegative = f"ck_{p}accounts_nonnegative"
    covered = f"ck_{p}accounts_reserved_covered"
    accounts = Table(
        f"{p}accounts",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("owner", String(255), nullable=False),
        Column("unit", String(32), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("balance", BigInteger, nullable=False, server_default=text("0")),
        Column("reserved", BigInteger, nullable=False, server_default=text("0")),
        Column("created_at", UtcDateTime, nullable=False),
        UniqueConstraint("owner", "unit", "kind", name=conv(f"uq_{p}accounts_book")),
        CheckConstraint(_enum_check("kind", kinds), name=conv(f"ck_{p}accounts_kind")),
        CheckConstraint("kind = 'funding' OR balance >= 0", name=conv(nonnegative)),
        CheckConstraint("reserved >= 0", name=conv(f"ck_{p}accounts_reserved_nonnegative")),
        CheckConstraint("kind = 'wallet' OR reserved = 0", name=conv(f"ck_{p}accounts_holds")),
        CheckConstraint("kind <> 'wallet' OR reserved <= balance", name=conv(covered)),
        schema=schema,
    )
    op_kinds = (
        OperationKind.TOP_UP,
        OperationKind.RESERVE,
        OperationKind.CAPTURE,
        OperationKind.RELEASE,
        OperationKind.EXPIRE,
        OperationKind.DEBIT,
        OperationKind.REFUND,
    )
    key_unique = f"uq_{p}operations_key"
    refund_check = f"ck_{p}operations_refunded"
    operations = Table(
        f"{p}operations",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("account_id", Uuid, ForeignKey(f"{fk}{p}accounts.id"), nullable=False),
        Column("kind", String(16), nullable=False),
        # NULL only for system operations (expiry), which are made once by their
        # reservation's status change instead.
        Column("idempotency_key", String(KEY_MAX_LENGTH), nullable=True),
        Column("fingerprint", String(64), nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("refunded", BigInteger, nullable=False, server_default=text("0")),
        Column("reservation_id", Uuid, nullable=True),
        Column("refund_of", Uuid, ForeignKey(f"{fk}{p}operations.id"), nullable=True),
        Column("created_at", UtcDateTime, nullable=False),
        UniqueConstraint("account_id", "idempotency_key", name=conv(key_unique)),
        CheckConstraint(_enum_check("kind", op_kinds), name=conv(f"ck_{p}operations_kind")),
        CheckConstraint("amount > 0", name=conv(f"ck_{p}operations_amount")),
        CheckConstraint("refunded >= 0 AND refunded <= amount", name=conv(refund_check)),
        CheckConstraint(
            "idempotency_key IS NOT NULL OR kind = 'expire'",
            name=conv(f"ck_{p}operations_keyed"),
        ),
        Index(conv(f"ix_{p}operations_reservation"), "reservation_id"),
        Index(conv(f"ix_{p}operations_refund_of"), "refund_of"),
        schema=schema,
    )
    entries = Table(
        f"{p}entries",
        metadata,
        Column(
            "id",
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("operation_id", Uuid, ForeignKey(f"{fk}{p}operations.id"), nullable=False),
        Column("account_id", Uuid, ForeignKey(f"{fk}{p}accounts.id"), nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        CheckConstraint("amount <> 0", name=conv(f"ck_{p}entries_amount")),
        Index(conv(f"ix_{p}entries_account"), "account_id"),
        Index(conv(f"ix_{p}entries_operation"), "operation_id"),
        schema=schema,
    )
    statuses = (
        ReservationStatus.HELD,
        ReservationStatus.CAPTURED,
        ReservationStatus.RELEASED,
        ReservationStatus.EXPIRED,
    )
    held = text("status = 'held'")
    reservations = Table(
        f"{p}reservations",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("account_id", Uuid, ForeignKey(f"{fk}{p}accounts.id"), nullable=False),
        Column("operation_id", Uuid, ForeignKey(f"{fk}{p}operations.id"), nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("captured", BigInteger, nullable=False, server_default=text("0")),
        Column("status", String(16), nullable=False),
        Column("expires_at", UtcDateTime, nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        Column("closed_at", UtcDateTime, nullable=True),
        CheckConstraint("amount > 0", name=conv(f"ck_{p}reservations_amount")),
        CheckConstraint(
            "captured >= 0 AND captured <= amount", name=conv(f"ck_{p}reservations_captured")
        ),
        CheckConstraint(_enum_check("status", statuses), name=conv(f"ck_{p}reservations_status")),
        # The expiry job's scan: only live holds, oldest deadline first.
        Index(
            conv(f"ix_{p}reservations_expiry"),
            "expires_at",
            postgresql_where=held,
            sqlite_where=held,
        ),
        Index(conv(f"ix_{p}reservations_account"), "account_id"),
        schema=schema,
    )
    return LedgerTables(
        accounts=accounts,
        operations=operations,
        entries=entries,
        reservations=reservations,
        funds_checks=frozenset({nonnegative, covered}),
        key_unique=key_unique,
        refund_check=refund_check,
    )
