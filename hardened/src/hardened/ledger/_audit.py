"""The invariant checker: the books re-derived from the journal and compared, in SQL.

Why every check and not just "sum of journal = balances": a double debit can
keep the sums equal (two operations, each balanced), so each operation is
also checked to move exactly its own amount, each reservation to be closed by
exactly one operation, and each refund total to match its refunds. Storm tests
run it afterwards; a service can run it nightly (it scans all four tables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import and_, case, func, or_, select

from hardened.ledger._schema import AccountKind, OperationKind, ReservationStatus

if TYPE_CHECKING:
    from sqlalchemy import Select

    from hardened.ledger._schema import LedgerTables
    from hardened.ledger._types import Executor

__all__ = ["check_invariants"]

_POSTED = (OperationKind.TOP_UP, OperationKind.CAPTURE, OperationKind.DEBIT, OperationKind.REFUND)
_HOLDS = (OperationKind.RESERVE, OperationKind.RELEASE, OperationKind.EXPIRE)
_CLOSING = {
    ReservationStatus.CAPTURED: OperationKind.CAPTURE,
    ReservationStatus.RELEASED: OperationKind.RELEASE,
    ReservationStatus.EXPIRED: OperationKind.EXPIRE,
}


def _balances(tables: LedgerTables) -> Select[tuple[object, ...]]:
    a, e = tables.accounts, tables.entries
    journal = (
        select(e.c.account_id, func.sum(e.c.amount).label("total"))
        .group_by(e.c.account_id)
        .subquery()
    )
    total = func.coalesce(journal.c.total, 0)
    return (
        select(a.c.id, a.c.kind, a.c.balance, total)
        .select_from(a.outerjoin(journal, journal.c.account_id == a.c.id))
        .where(a.c.balance != total)
    )


def _unbalanced_operations(tables: LedgerTables) -> Select[tuple[object, ...]]:
    e = tables.entries
    total = func.sum(e.c.amount)
    return select(e.c.operation_id, total).group_by(e.c.operation_id).having(total != 0)


def _moved(tables: LedgerTables) -> Select[tuple[object, ...]]:
    o, e = tables.operations, tables.entries
    legs = (
        select(
            e.c.operation_id,
            func.sum(case((e.c.amount > 0, e.c.amount), else_=0)).label("moved"),
            func.count().label("legs"),
        )
        .group_by(e.c.operation_id)
        .subquery()
    )
    moved, count = func.coalesce(legs.c.moved, 0), func.coalesce(legs.c.legs, 0)
    return (
        select(o.c.id, o.c.kind, o.c.amount, moved, count)
        .select_from(o.outerjoin(legs, legs.c.operation_id == o.c.id))
        .where(
            or_(
                and_(o.c.kind.in_(_POSTED), or_(moved != o.c.amount, count != 2)),
                and_(o.c.kind.in_(_HOLDS), count != 0),
            )
        )
    )


def _out_of_bounds(tables: LedgerTables) -> Select[tuple[object, ...]]:
    a = tables.accounts
    return select(a.c.id, a.c.kind, a.c.balance, a.c.reserved).where(
        or_(
            and_(a.c.kind != AccountKind.FUNDING, a.c.balance < 0),
            a.c.reserved < 0,
            and_(a.c.kind == AccountKind.WALLET, a.c.reserved > a.c.balance),
            and_(a.c.kind != AccountKind.WALLET, a.c.reserved != 0),
        )
    )


def _books(tables: LedgerTables) -> Select[tuple[object, ...]]:
    a = tables.accounts
    total = func.sum(a.c.balance)
    return select(a.c.owner, a.c.unit, total).group_by(a.c.owner, a.c.unit).having(total != 0)


def _cross_book(tables: LedgerTables) -> Select[tuple[object, ...]]:
    a, e = tables.accounts, tables.entries
    return (
        select(e.c.operation_id)
        .select_from(e.join(a, a.c.id == e.c.account_id))
        .group_by(e.c.operation_id)
        .having(or_(func.count(a.c.owner.distinct()) > 1, func.count(a.c.unit.distinct()) > 1))
    )


def _reserved(tables: LedgerTables) -> Select[tuple[object, ...]]:
    a, r = tables.accounts, tables.reservations
    held = (
        select(r.c.account_id, func.sum(r.c.amount).label("total"))
        .where(r.c.status == ReservationStatus.HELD)
        .group_by(r.c.account_id)
        .subquery()
    )
    total = func.coalesce(held.c.total, 0)
    return (
        select(a.c.id, a.c.reserved, total)
        .select_from(a.outerjoin(held, held.c.account_id == a.c.id))
        .where(a.c.kind == AccountKind.WALLET, a.c.reserved != total)
    )


def _closings(tables: LedgerTables) -> Select[tuple[object, ...]]:
    r, o = tables.reservations, tables.operations
    closers = o.c.kind.in_(tuple(_CLOSING.values()))
    matching = func.sum(
        case(
            *((and_(r.c.status == s, o.c.kind == k), 1) for s, k in _CLOSING.items()),
            else_=0,
        )
    )
    count = func.count(o.c.id)
    spent = func.coalesce(
        func.sum(case((o.c.kind == OperationKind.CAPTURE, o.c.amount), else_=0)), 0
    )
    return (
        select(r.c.id, r.c.status, r.c.captured, count, spent)
        .select_from(r.outerjoin(o, and_(o.c.reservation_id == r.c.id, closers)))
        .group_by(r.c.id, r.c.status, r.c.captured)
        .having(
            or_(
                and_(r.c.status == ReservationStatus.HELD, count != 0),
                and_(r.c.status != ReservationStatus.HELD, or_(count != 1, matching != 1)),
                r.c.captured != spent,
            )
        )
    )


def _refunds(tables: LedgerTables) -> Select[tuple[object, ...]]:
    o = tables.operations
    refunds = (
        select(o.c.refund_of, func.sum(o.c.amount).label("total"))
        .where(o.c.kind == OperationKind.REFUND)
        .group_by(o.c.refund_of)
        .subquery()
    )
    total = func.coalesce(refunds.c.total, 0)
    return (
        select(o.c.id, o.c.amount, o.c.refunded, total)
        .select_from(o.outerjoin(refunds, refunds.c.refund_of == o.c.id))
        .where(or_(o.c.refunded != total, o.c.refunded > o.c.amount))
    )


def _duplicate_keys(tables: LedgerTables) -> Select[tuple[object, ...]]:
    o = tables.operations
    count = func.count()
    return (
        select(o.c.account_id, o.c.idempotency_key, count)
        .where(o.c.idempotency_key.is_not(None))
        .group_by(o.c.account_id, o.c.idempotency_key)
        .having(count > 1)
    )


_CHECKS = (
    (_balances, "account {0} ({1}): balance {2} but its journal sums to {3}"),
    (_unbalanced_operations, "operation {0}: entries sum to {1}, not 0"),
    (_moved, "operation {0} ({1}) of {2}: journal moved {3} in {4} entries"),
    (_out_of_bounds, "account {0} ({1}): balance {2}, reserved {3} out of bounds"),
    (_books, "book {0}/{1}: balances sum to {2}, not 0"),
    (_cross_book, "operation {0}: entries span several books"),
    (_reserved, "wallet {0}: reserved {1} but held reservations sum to {2}"),
    (_closings, "reservation {0} ({1}, captured {2}): {3} closing operations capturing {4}"),
    (_refunds, "operation {0} of {1}: refunded {2} but its refunds sum to {3}"),
    # The key itself stays out of the sentence: findings get logged, keys only as hashes.
    (_duplicate_keys, "account {0}: one idempotency key used {2} times"),
)


async def check_invariants(conn: Executor, tables: LedgerTables, *, limit: int = 100) -> list[str]:
    """Every violation found, one sentence each; empty when the books are sound."""
    found: list[str] = []
    for query, sentence in _CHECKS:
        rows = (await conn.execute(query(tables).limit(limit))).all()
        found.extend(sentence.format(*row) for row in rows)
    return found
