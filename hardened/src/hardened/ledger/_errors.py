"""The ledger's refusals, each with a stable code a client can branch on."""

from __future__ import annotations

from hardened.errors import Conflict, NotFound, ValidationFailed

__all__ = [
    "AccountNotFound",
    "InsufficientCredits",
    "KeyReused",
    "OperationNotFound",
    "RefundExceedsCapture",
    "ReservationExpired",
    "ReservationNotFound",
    "ReservationNotHeld",
]


class InsufficientCredits(Conflict):
    """The wallet's available credits do not cover the operation; nothing was written."""

    code = "ledger.insufficient_credits"
    title = "Insufficient credits"


class KeyReused(ValidationFailed):
    """An idempotency key already used for a different operation or different arguments."""

    code = "ledger.key_reused"
    title = "Idempotency key reused with different arguments"


class AccountNotFound(NotFound):
    code = "ledger.account_not_found"
    title = "Account not found"


class ReservationNotFound(NotFound):
    code = "ledger.reservation_not_found"
    title = "Reservation not found"


class OperationNotFound(NotFound):
    code = "ledger.operation_not_found"
    title = "Operation not found"


class ReservationNotHeld(Conflict):
    """The reservation was already captured, released or expired."""

    code = "ledger.reservation_not_held"
    title = "Reservation is no longer held"


class ReservationExpired(ReservationNotHeld):
    """Past its expiry: it can be released, not captured."""

    code = "ledger.reservation_expired"
    title = "Reservation expired"


class RefundExceedsCapture(Conflict):
    """Refunds of an operation would exceed what it spent."""

    code = "ledger.refund_exceeds_capture"
    title = "Refund exceeds the amount spent"
