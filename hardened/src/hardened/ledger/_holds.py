"""Reservations: read, closed, and released when past their expiry.

Expiry is done two ways. Why both: seed 003's reservations "expired" after 24 h only on paper, since
nothing gave the credits back. `release_expired` is the periodic job; and an
operation that finds a wallet short releases that wallet's due holds first,
so a late job never refuses a customer credits that are theirs again.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from hardened.ledger._errors import ReservationNotFound
from hardened.ledger._schema import OperationKind, ReservationStatus
from hardened.ledger._sql import fingerprint, lock_wallet
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from datetime import datetime

    from hardened.ledger._schema import LedgerTables
    from hardened.ledger._sql import AnyRow, Wallet
    from hardened.ledger._types import Executor

__all__ = ["close_reservation", "expire_holds", "release_expired", "reservation_row"]

_EXPIRED = counter("ledger_reservations_expired_total", "Reservations released by expiry.")


async def reservation_row(
    conn: Executor,
    tables: LedgerTables,
    reservation_id: uuid.UUID,
    account: uuid.UUID | None = None,
) -> AnyRow:
    """The reservation, if it exists (and belongs to ``account`` when given)."""
    r = tables.reservations
    stmt = select(r).where(r.c.id == reservation_id)
    if account is not None:
        stmt = stmt.where(r.c.account_id == account)
    row = (await conn.execute(stmt)).one_or_none()
    if row is None:
        raise ReservationNotFound(
            "The reservation does not exist.", context={"reservation": str(reservation_id)}
        )
    return row


async def close_reservation(
    conn: Executor,
    tables: LedgerTables,
    reservation_id: uuid.UUID,
    status: str,
    now: datetime,
    *,
    captured: int = 0,
) -> None:
    r = tables.reservations
    await conn.execute(
        update(r)
        .where(r.c.id == reservation_id, r.c.status == ReservationStatus.HELD)
        .values(status=status, captured=captured, closed_at=now)
    )


async def release_expired(conn: Executor, tables: LedgerTables, now: datetime, limit: int) -> int:
    """Release up to ``limit`` holds due at ``now``, wallet by wallet; the number released.

    Each wallet is locked with ``SKIP LOCKED`` on PostgreSQL: a wallet busy
    with live traffic is left for the next run, and two runners never wait
    for each other. The lock order (wallet, then its reservations) is the
    operations' own, so the job cannot deadlock with them.
    """
    r = tables.reservations
    due = (
        select(r.c.account_id)
        .where(r.c.status == ReservationStatus.HELD, r.c.expires_at <= now)
        .group_by(r.c.account_id)
        .order_by(func.min(r.c.expires_at))
        .limit(limit)
    )
    released = 0
    for account in (await conn.execute(due)).scalars().all():
        wallet = await lock_wallet(conn, tables, account, skip_locked=True)
        if wallet is not None:
            count, _ = await expire_holds(conn, tables, wallet, now, limit - released)
            released += count
        if released >= limit:
            break
    return released


async def expire_holds(
    conn: Executor, tables: LedgerTables, wallet: Wallet, now: datetime, limit: int
) -> tuple[int, int]:
    """Expire the locked wallet's due holds: (how many, credits freed)."""
    r, o = tables.reservations, tables.operations
    due = (
        await conn.execute(
            select(r.c.id, r.c.amount)
            .where(
                r.c.account_id == wallet.id,
                r.c.status == ReservationStatus.HELD,
                r.c.expires_at <= now,
            )
            .order_by(r.c.expires_at)
            .limit(limit)
        )
    ).all()
    if not due:
        return 0, 0
    kind = OperationKind.EXPIRE
    await conn.execute(
        o.insert().values(
            [
                {
                    "id": uuid.uuid4(),
                    "account_id": wallet.id,
                    "kind": kind,
                    "idempotency_key": None,
                    "fingerprint": fingerprint(kind, str(hold.id)),
                    "amount": hold.amount,
                    "refunded": 0,
                    "reservation_id": hold.id,
                    "refund_of": None,
                    "created_at": now,
                }
                for hold in due
            ]
        )
    )
    await conn.execute(
        update(r)
        .where(r.c.id.in_([hold.id for hold in due]), r.c.status == ReservationStatus.HELD)
        .values(status=ReservationStatus.EXPIRED, closed_at=now)
    )
    freed = sum(hold.amount for hold in due)
    a = tables.accounts
    await conn.execute(update(a).where(a.c.id == wallet.id).values(reserved=a.c.reserved - freed))
    _EXPIRED.inc(len(due))
    return len(due), freed
