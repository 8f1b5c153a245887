"""The shop's prepaid credits: balance, reservations, captures, releases, refunds.

Every write needs an Idempotency-Key. The middleware replays the response;
underneath, the ledger records its own operation key (derived from the
scoped key) in the same transaction as the effect, so even a retry that
finds no stored response (the worker died after committing) replays the
operation instead of applying it twice. Top-ups arrive with the payment
provider's webhook (a later issue); until then wallets are funded out of band
(`Ledger.top_up`).

A shop reaches only its own wallet: the account is looked up by the
authenticated shop, and reservations and operations of other wallets are
404.
"""

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field

from hardened.idempotency import IdempotencyKey, idempotency_key
from hardened.ledger import MAX_AMOUNT, Operation, Reservation
from shopfront.permissions import allow
from shopfront.tenant_auth import Tenancy, TenantRequest

__all__ = ["router"]

router = APIRouter(prefix="/wallet", tags=["wallet"])

Key = Annotated[IdempotencyKey, Depends(idempotency_key(guarded=True))]


class BalanceOut(BaseModel):
    balance: int
    reserved: int
    available: int


class ReserveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int = Field(gt=0, le=MAX_AMOUNT)
    ttl_seconds: int | None = Field(default=None, ge=60, le=30 * 86_400)


class CaptureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int | None = Field(default=None, gt=0, le=MAX_AMOUNT)


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int = Field(gt=0, le=MAX_AMOUNT)
    operation_id: uuid.UUID


class ReservationOut(BaseModel):
    id: uuid.UUID
    amount: int
    captured: int
    status: str
    expires_at: datetime


class OperationOut(BaseModel):
    id: uuid.UUID
    kind: str
    amount: int
    refunded: int
    reservation_id: uuid.UUID | None


def _reservation(hold: Reservation) -> ReservationOut:
    return ReservationOut(
        id=hold.id,
        amount=hold.amount,
        captured=hold.captured,
        status=hold.status,
        expires_at=hold.expires_at,
    )


def _operation(operation: Operation) -> OperationOut:
    return OperationOut(
        id=operation.id,
        kind=operation.kind,
        amount=operation.amount,
        refunded=operation.refunded,
        reservation_id=operation.reservation_id,
    )


async def _wallet(tenancy: TenantRequest) -> uuid.UUID:
    return await tenancy.state.ledger.open_account(tenancy.session, str(tenancy.tenant_id))


def _op_key(key: IdempotencyKey) -> str:
    # The scoped record key: unique per shop, caller, route and client key.
    return "http:" + (key.record or key.value)


@router.get("", dependencies=[allow("wallet:read")])
async def balance(tenancy: Tenancy) -> BalanceOut:
    """The shop's posted, reserved and available credits."""
    async with tenancy.session.begin():
        totals = await tenancy.state.ledger.balance(tenancy.session, await _wallet(tenancy))
    return BalanceOut(balance=totals.balance, reserved=totals.reserved, available=totals.available)


@router.post(
    "/reservations",
    status_code=status.HTTP_201_CREATED,
    dependencies=[allow("wallet:spend")],
)
async def reserve(body: ReserveIn, tenancy: Tenancy, key: Key) -> ReservationOut:
    """Hold credits (default 24 h, then released by the expiry job); 409 if not enough."""
    ttl = float(body.ttl_seconds or tenancy.state.settings.reservation_ttl)
    async with tenancy.session.begin():
        wallet = await _wallet(tenancy)
        held = await tenancy.state.ledger.reserve(
            tenancy.session, wallet, body.amount, _op_key(key), ttl=ttl
        )
    return _reservation(held)


@router.get("/reservations/{reservation_id}", dependencies=[allow("wallet:read")])
async def reservation(reservation_id: uuid.UUID, tenancy: Tenancy) -> ReservationOut:
    """One of the shop's reservations."""
    async with tenancy.session.begin():
        wallet = await _wallet(tenancy)
        found = await tenancy.state.ledger.reservation(
            tenancy.session, reservation_id, account=wallet
        )
    return _reservation(found)


@router.post("/reservations/{reservation_id}/capture", dependencies=[allow("wallet:spend")])
async def capture(
    reservation_id: uuid.UUID, body: CaptureIn, tenancy: Tenancy, key: Key
) -> OperationOut:
    """Spend a reservation (all, or part and release the rest)."""
    async with tenancy.session.begin():
        wallet = await _wallet(tenancy)
        op = await tenancy.state.ledger.capture(
            tenancy.session, reservation_id, _op_key(key), amount=body.amount, account=wallet
        )
    return _operation(op)


@router.post("/reservations/{reservation_id}/release", dependencies=[allow("wallet:spend")])
async def release(reservation_id: uuid.UUID, tenancy: Tenancy, key: Key) -> OperationOut:
    """Give a reservation's credits back."""
    async with tenancy.session.begin():
        wallet = await _wallet(tenancy)
        op = await tenancy.state.ledger.release(
            tenancy.session, reservation_id, _op_key(key), account=wallet
        )
    return _operation(op)


@router.post("/refunds", status_code=status.HTTP_201_CREATED, dependencies=[allow("wallet:spend")])
async def refund(body: RefundIn, tenancy: Tenancy, key: Key) -> OperationOut:
    """Return credits spent by a capture or debit (never more than it spent)."""
    async with tenancy.session.begin():
        wallet = await _wallet(tenancy)
        op = await tenancy.state.ledger.refund(
            tenancy.session, wallet, body.amount, _op_key(key), of_operation=body.operation_id
        )
    return _operation(op)
