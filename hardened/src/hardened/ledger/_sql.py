"""Statement helpers shared by the ledger's operations and its audit.

Why separate: the operations read as business rules ("lock, replay or check,
record, post") when the SQL of each step lives here, once, for both backends.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import Row, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from hardened.db.integrity import integrity_errors
from hardened.db.transaction import require_immediate_transactions
from hardened.errors import ValidationFailed
from hardened.ledger._errors import (
    AccountNotFound,
    InsufficientCredits,
    KeyReused,
    RefundExceedsCapture,
)
from hardened.ledger._schema import KEY_MAX_LENGTH, AccountKind
from hardened.ledger._types import Operation, Reservation

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from contextlib import AbstractContextManager
    from datetime import datetime

    from sqlalchemy import Connection, Engine, Table
    from sqlalchemy.sql.dml import Insert

    from hardened.errors import HardenedError
    from hardened.ledger._schema import LedgerTables
    from hardened.ledger._types import Executor

__all__ = [
    "MAX_AMOUNT",
    "AnyRow",
    "Intent",
    "Wallet",
    "check_amount",
    "check_key",
    "dialect_name",
    "find_prior",
    "fingerprint",
    "insert_ignoring_conflicts",
    "lock_wallet",
    "map_constraint_errors",
    "post",
    "record_operation",
    "require_wallet",
    "to_operation",
    "to_reservation",
]

#: A result row of any shape (SQLAlchemy 2.1 types rows by their columns).
AnyRow: TypeAlias = Row[*tuple[Any, ...]]

#: Largest amount accepted: 2**53 - 1, the largest integer a JSON client reads exactly.
MAX_AMOUNT = 2**53 - 1


def check_amount(amount: int, *, name: str = "amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise ValidationFailed(
            f"{name} must be a whole number of credits between 1 and {MAX_AMOUNT}.",
            code="ledger.invalid_amount",
        )
    return amount


def check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= KEY_MAX_LENGTH:
        raise ValidationFailed(
            f"The idempotency key must be 1 to {KEY_MAX_LENGTH} characters.",
            code="ledger.invalid_key",
        )
    return key


def fingerprint(kind: str, *args: object) -> str:
    """What a repeat must match to be a replay: the kind and the arguments."""
    canonical = json.dumps([kind, *args], default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _bind(conn: Executor) -> Engine | Connection:
    return conn.sync_engine if isinstance(conn, AsyncConnection) else conn.get_bind()


def dialect_name(conn: Executor) -> str:
    return _bind(conn).dialect.name


def insert_ignoring_conflicts(conn: Executor, table: Table, columns: Sequence[str]) -> Insert:
    """``INSERT … ON CONFLICT (columns) DO NOTHING`` for the connection's dialect."""
    name = dialect_name(conn)
    if name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing(index_elements=list(columns))
    if name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(columns))
    msg = f"hardened.ledger is not implemented for {name}"
    raise NotImplementedError(msg)


class Wallet:
    """The locked wallet row, as read under the lock."""

    __slots__ = ("balance", "id", "owner", "reserved", "unit")

    def __init__(self, row: AnyRow) -> None:
        self.id: uuid.UUID = row.id
        self.owner: str = row.owner
        self.unit: str = row.unit
        self.balance: int = row.balance
        self.reserved: int = row.reserved

    @property
    def available(self) -> int:
        return self.balance - self.reserved


async def lock_wallet(
    conn: Executor, tables: LedgerTables, account: uuid.UUID, *, skip_locked: bool = False
) -> Wallet | None:
    """Lock the wallet row for the rest of the transaction; None if absent (or skipped).

    PostgreSQL: ``SELECT … FOR UPDATE`` (``SKIP LOCKED`` for the expiry job).
    SQLite: the transaction already holds the database's write lock, provided
    the engine runs `sqlite_immediate_transactions` (checked: without it two
    transactions read the same balance and one fails late with "locked").
    """
    require_immediate_transactions(_bind(conn), "hardened.ledger")
    a = tables.accounts
    stmt = (
        select(a.c.id, a.c.owner, a.c.unit, a.c.balance, a.c.reserved)
        .where(a.c.id == account, a.c.kind == AccountKind.WALLET)
        .with_for_update(skip_locked=skip_locked)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return None if row is None else Wallet(row)


async def require_wallet(conn: Executor, tables: LedgerTables, account: uuid.UUID) -> Wallet:
    wallet = await lock_wallet(conn, tables, account)
    if wallet is None:
        raise AccountNotFound("The account does not exist.", context={"account": str(account)})
    return wallet


@dataclass(frozen=True, slots=True)
class Intent:
    """One call of an operation: its kind, key and the fingerprint of its arguments."""

    kind: str
    key: str
    digest: str

    @classmethod
    def of(cls, kind: str, key: str, *args: object) -> Intent:
        return cls(kind, check_key(key), fingerprint(kind, *args))


async def find_prior(
    conn: Executor, tables: LedgerTables, account: uuid.UUID, intent: Intent
) -> AnyRow | None:
    """The operation this key already applied on this account, if the same; else `KeyReused`."""
    o = tables.operations
    stmt = select(o).where(o.c.account_id == account, o.c.idempotency_key == intent.key)
    row = (await conn.execute(stmt)).one_or_none()
    if row is not None and (row.kind != intent.kind or row.fingerprint != intent.digest):
        raise KeyReused(
            "This idempotency key was already used for a different operation.",
            context={"account": str(account), "kind": intent.kind, "prior_kind": row.kind},
        )
    return row


async def record_operation(
    conn: Executor,
    tables: LedgerTables,
    *,
    account: uuid.UUID,
    intent: Intent,
    amount: int,
    now: datetime,
    reservation_id: uuid.UUID | None = None,
    refund_of: uuid.UUID | None = None,
) -> AnyRow | None:
    """Insert the operation row; None when its key is already taken (a racing duplicate).

    It is the first write of every operation, so a duplicate leaves nothing
    behind and ``ON CONFLICT DO NOTHING`` keeps the transaction usable.
    """
    o = tables.operations
    values = {
        "id": uuid.uuid4(),
        "account_id": account,
        "kind": intent.kind,
        "idempotency_key": intent.key,
        "fingerprint": intent.digest,
        "amount": amount,
        "refunded": 0,
        "reservation_id": reservation_id,
        "refund_of": refund_of,
        "created_at": now,
    }
    stmt = insert_ignoring_conflicts(conn, o, ["account_id", "idempotency_key"])
    return (await conn.execute(stmt.values(values).returning(*o.c))).one_or_none()


@functools.cache
def _constraint_errors(tables: LedgerTables) -> Mapping[str, Callable[[], HardenedError]]:
    # Built once per LedgerTables: the constraint names are fixed when the tables are.
    errors: dict[str, Callable[[], HardenedError]] = {
        name: functools.partial(
            InsufficientCredits,
            "Not enough credits for this operation.",
            context={"constraint": name},
        )
        for name in tables.funds_checks
    }
    errors[tables.refund_check] = functools.partial(
        RefundExceedsCapture,
        "The refunds would exceed what the operation spent.",
        context={"constraint": tables.refund_check},
    )
    return errors


def map_constraint_errors(tables: LedgerTables) -> AbstractContextManager[None]:
    """The database's CHECKs are the last line: their violations become the same 409s."""
    return integrity_errors(_constraint_errors(tables))


async def post(
    conn: Executor,
    tables: LedgerTables,
    wallet: Wallet,
    operation_id: uuid.UUID,
    *,
    now: datetime,
    delta: int = 0,
    counter: str | None = None,
    reserved: int = 0,
) -> None:
    """Move ``delta`` into the wallet from its book's ``counter`` account, and adjust holds.

    Two journal entries (wallet ``+delta``, counter ``-delta``) and the two
    balances, or only the ``reserved`` change for holds (no entries).
    """
    a, e = tables.accounts, tables.entries
    with map_constraint_errors(tables):
        await conn.execute(
            update(a)
            .where(a.c.id == wallet.id)
            .values(balance=a.c.balance + delta, reserved=a.c.reserved + reserved)
        )
        if delta == 0:
            return
        if counter is None:  # pragma: no cover - programming error
            msg = "a balance change needs a counter account"
            raise ValueError(msg)
        counter_id = (
            await conn.execute(
                update(a)
                .where(a.c.owner == wallet.owner, a.c.unit == wallet.unit, a.c.kind == counter)
                .values(balance=a.c.balance - delta)
                .returning(a.c.id)
            )
        ).scalar_one()
    legs = ((wallet.id, delta), (counter_id, -delta))
    await conn.execute(
        e.insert().values(
            [
                {"operation_id": operation_id, "account_id": acc, "amount": amt, "created_at": now}
                for acc, amt in legs
            ]
        )
    )


def to_operation(row: AnyRow, *, replayed: bool = False) -> Operation:
    return Operation(
        id=row.id,
        account_id=row.account_id,
        kind=row.kind,
        amount=row.amount,
        refunded=row.refunded,
        reservation_id=row.reservation_id,
        refund_of=row.refund_of,
        created_at=row.created_at,
        replayed=replayed,
    )


def to_reservation(row: AnyRow, *, replayed: bool = False) -> Reservation:
    return Reservation(
        id=row.id,
        account_id=row.account_id,
        operation_id=row.operation_id,
        amount=row.amount,
        captured=row.captured,
        status=row.status,
        expires_at=row.expires_at,
        created_at=row.created_at,
        closed_at=row.closed_at,
        replayed=replayed,
    )
