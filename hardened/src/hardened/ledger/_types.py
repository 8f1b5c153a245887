"""What the ledger returns: plain frozen values, safe to use after the session closes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

if TYPE_CHECKING:
    import uuid
    from datetime import datetime

__all__ = ["Balance", "Executor", "Operation", "Reservation"]

#: Where ledger statements run: the caller's session or connection, inside its transaction.
Executor: TypeAlias = AsyncSession | AsyncConnection


@dataclass(frozen=True, slots=True)
class Balance:
    """A wallet's credits: ``balance`` posted, ``reserved`` held, ``available`` spendable."""

    balance: int
    reserved: int
    available: int


@dataclass(frozen=True, slots=True)
class Operation:
    """An applied operation; ``replayed`` is True when its key had already applied it."""

    id: uuid.UUID
    account_id: uuid.UUID
    kind: str
    amount: int
    refunded: int
    reservation_id: uuid.UUID | None
    refund_of: uuid.UUID | None
    created_at: datetime
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on a wallet's credits, in its current state.

    ``amount`` is what was held; ``captured`` what a capture spent (the rest
    went back to the wallet). ``operation_id`` is the reserve operation.
    """

    id: uuid.UUID
    account_id: uuid.UUID
    operation_id: uuid.UUID
    amount: int
    captured: int
    status: str
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None
    replayed: bool = False
