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


def _reservation(r: Reservation) -> ReservationOut:
    return ReservationOut(
        id=r.id, amount=r.amount, captured=r.captured, status=r.status, expires_at=r.expires_at
    )


def _operation(o: Operation) -> OperationOut:
    return OperationOut(
        id=o.id, kind=o.kind, amount=o.amount, refunded=o.refunded, reservation_id=o.reservation_id
    )


async def _wallet(t: TenantRequest) -> uuid.UUID:
    return await t.state.ledger.open_account(t.session, str(t.tenant_id))


def _op_key(key: IdempotencyKey) -> str:
    # The scoped record key: unique per shop, caller, route and client key.
    return "http:" + (key.record or key.value)


@router.get("", dependencies=[allow("wallet:read")])
async def balance(t: Tenancy) -> BalanceOut:
    """The shop's posted, reserved and available credits."""
    async with t.session.begin():
        b = await t.state.ledger.balance(t.session, await _wallet(t))
    return BalanceOut(balance=b.balance, reserved=b.reserved, available=b.available)


@router.post(
    "/reservations",
    status_code=status.HTTP_201_CREATED,
    dependencies=[allow("wallet:spend")],
)
async def reserve(body: ReserveIn, t: Tenancy, key: Key) -> ReservationOut:
    """Hold credits (default 24 h, then released by the expiry job); 409 if not enough."""
    ttl = float(body.ttl_seconds or t.state.settings.reservation_ttl)
    async with t.session.begin():
        wallet = await _wallet(t)
        held = await t.state.ledger.reserve(t.session, wallet, body.amount, _op_key(key), ttl=ttl)
    return _reservation(held)


@router.get("/reservations/{reservation_id}", dependencies=[allow("wallet:read")])
async def reservation(reservation_id: uuid.UUID, t: Tenancy) -> ReservationOut:
    """One of the shop's reservations."""
    async with t.session.begin():
        wallet = await _wallet(t)
        found = await t.state.ledger.reservation(t.session, reservation_id, account=wallet)
    return _reservation(found)


@router.post("/reservations/{reservation_id}/capture", dependencies=[allow("wallet:spend")])
async def capture(reservation_id: uuid.UUID, body: CaptureIn, t: Tenancy, key: Key) -> OperationOut:
    """Spend a reservation (all, or part and release the rest)."""
    async with t.session.begin():
        wallet = await _wallet(t)
        op = await t.state.ledger.capture(
            t.session, reservation_id, _op_key(key), amount=body.amount, account=wallet
        )
    return _operation(op)


@router.post("/reservations/{reservation_id}/release", dependencies=[allow("wallet:spend")])
async def release(reservation_id: uuid.UUID, t: Tenancy, key: Key) -> OperationOut:
    """Give a reservation's credits back."""
    async with t.session.begin():
        wallet = await _wallet(t)
        op = await t.state.ledger.release(t.session, reservation_id, _op_key(key), account=wallet)
    return _operation(op)


@router.post("/refunds", status_code=status.HTTP_201_CREATED, dependencies=[allow("wallet:spend")])
async def refund(body: RefundIn, t: Tenancy, key: Key) -> OperationOut:
    """Return credits spent by a capture or debit (never more than it spent)."""
    async with t.session.begin():
        wallet = await _wallet(t)
        op = await t.state.ledger.refund(
            t.session, wallet, body.amount, _op_key(key), of_operation=body.operation_id
        )
    return _operation(op)
