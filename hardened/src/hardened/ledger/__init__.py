"""Prepaid credits: a double-entry journal moved only by idempotent operations.

Why: seed 003 double-debited credits when a job retried, debited without
sending (or sent without debiting), and leaked reservations that never
expired. Here each operation (top-up, reserve, capture, release, debit,
refund) carries an idempotency key recorded in the same transaction as its
effect, runs inside the caller's transaction (so a debit commits with the
message log or not at all), and the database refuses a negative balance even
if the code had a bug.

The model: each book (owner, unit) has a wallet, a funding account (source of
top-ups, the only one allowed below zero) and a revenue account (where spent
credits go and refunds come from). Every posted operation writes two journal
entries summing to zero. A reservation is a pending transfer, as in
TigerBeetle: it raises the wallet's ``reserved`` (``available = balance -
reserved``) and posts nothing until captured; a capture posts what it spends
and frees the rest; `Ledger.release_expired` frees holds past their expiry.
`Ledger.check_invariants` re-derives the books from the journal.

Put the tables in the service's own metadata with `ledger_tables`. On SQLite
the engine needs `hardened.db.sqlite_immediate_transactions`.
"""

from hardened._extras import missing_extra

try:
    import sqlalchemy  # noqa: F401 - the one guard for every module below
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.ledger", "postgres", "sqlite") from exc

from hardened.ledger._core import DEFAULT_RESERVATION_TTL, Ledger
from hardened.ledger._errors import (
    AccountNotFound,
    InsufficientCredits,
    KeyReused,
    OperationNotFound,
    RefundExceedsCapture,
    ReservationExpired,
    ReservationNotFound,
    ReservationNotHeld,
)
from hardened.ledger._schema import (
    AccountKind,
    LedgerTables,
    OperationKind,
    ReservationStatus,
    ledger_tables,
)
from hardened.ledger._sql import MAX_AMOUNT
from hardened.ledger._types import Balance, Executor, Operation, Reservation

__all__ = [
    "DEFAULT_RESERVATION_TTL",
    "MAX_AMOUNT",
    "AccountKind",
    "AccountNotFound",
    "Balance",
    "Executor",
    "InsufficientCredits",
    "KeyReused",
    "Ledger",
    "LedgerTables",
    "Operation",
    "OperationKind",
    "OperationNotFound",
    "RefundExceedsCapture",
    "Reservation",
    "ReservationExpired",
    "ReservationNotFound",
    "ReservationNotHeld",
    "ReservationStatus",
    "ledger_tables",
]
