"""SIM activation: reserve credits → provider → record → capture, resumable after any crash.

Seed 000 asked for idempotent activation (``X-Idempotency-Key``, results kept
24 h, a processing lock, cleanup on failure). Here the four steps are
recovery-point phases (`hardened.idempotency.run_phases` on the service's
database), so a retry with the same key after a crash anywhere resumes after
the last completed phase:

* ``reserve`` holds the price on the shop's wallet (ledger key derived from
  the record key: a repeat is a replay);
* ``activate`` calls the provider with an idempotency key derived from the
  record key, so a crash between the provider's answer and its recovery point
  repeats the call but not the activation;
* ``record`` inserts the activation row and ``capture`` spends the hold, each
  committed with its recovery point.

Crash points (``SIM_CRASH_AFTER``, tests only) are named after what has
completed when the worker dies: a phase name kills from `run_phases`'
``on_recorded`` hook, right after that phase's recovery point (or, for
``capture``, the final result) is committed and before the next phase does
anything; ``provider_answered`` kills inside ``activate``, after the provider
activated the SIM and before that is recorded (the window the provider's
idempotency key covers).

The provider refusing the SIM (a final 4xx) is not a crash: the run goes on,
releases the hold instead of capturing it (the seed's cleanup on failure),
and stores the refusal, so retries get the same 422 and nothing is charged.
A provider outage (5xx, timeout) is a 503: the key is released with its
recovery point and the hold stays, so the retry resumes at the provider call.
Keys are scoped by shop (any of its callers retrying with a key gets the same
activation); the same key with another ICCID or plan is a 422, and a retry
while the first attempt runs is a 409 with ``Retry-After``.
"""

import os
import signal
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hardened.db.tenancy import tenant_session
from hardened.errors import Conflict
from hardened.fields import text
from hardened.idempotency import (
    ExternalPhase,
    IdempotencyKey,
    LocalPhase,
    PhaseState,
    fingerprint,
    fingerprints,
    idempotency_key,
    run_phases,
    scoped_key,
)
from shopfront.models import SimActivation
from shopfront.permissions import allow
from shopfront.sim_provider import SimRefused
from shopfront.state import AppState
from shopfront.tenant_auth import Tenancy, TenantRequest

__all__ = ["router"]

router = APIRouter(prefix="/sims", tags=["sims"])

Key = Annotated[IdempotencyKey, Depends(idempotency_key())]


Iccid = Annotated[str, text(min_length=18, max_length=22, pattern=r"^89[0-9]{16,20}$")]
Plan = Annotated[str, text(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.-]+$")]


class ActivationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    iccid: Iccid = Field(description="ICCID (ITU-T E.118), 18-22 digits")
    plan: Plan


class ActivationOut(BaseModel):
    id: uuid.UUID
    iccid: str
    plan: str
    provider_ref: str
    price: int
    reservation_id: uuid.UUID
    created_at: datetime


class SimAlreadyActive(Conflict):
    code = "sim.already_active"


def _crash_point(state: AppState, after: str) -> None:
    """SIGKILL if ``SIM_CRASH_AFTER`` names this point (settings allow it in tests only)."""
    if state.settings.sim_crash_after == after:
        os.kill(os.getpid(), signal.SIGKILL)


def _phases(tenancy: TenantRequest, body: ActivationIn, record: str) -> list[Any]:
    state, ledger = tenancy.state, tenancy.state.ledger
    owner = str(tenancy.tenant_id)

    async def reserve(session: AsyncSession, current: PhaseState) -> PhaseState:
        taken = await session.scalar(
            select(SimActivation.id).where(SimActivation.iccid == current["iccid"])
        )
        if taken is not None:
            raise SimAlreadyActive("This SIM is already active.")
        wallet = await ledger.open_account(session, owner)
        price = state.settings.sim_activation_price
        hold = await ledger.reserve(session, wallet, price, f"{record}:reserve")
        return {**current, "wallet": str(wallet), "reservation": str(hold.id), "price": price}

    async def activate(current: PhaseState) -> PhaseState:
        try:
            done = await state.sim.activate(
                iccid=current["iccid"], plan=current["plan"], idempotency_key=f"{record}:activate"
            )
        except SimRefused:
            return {**current, "refused": True}
        _crash_point(state, "provider_answered")  # activated, its recovery point not written
        return {**current, "provider_ref": done.provider_ref}

    async def record_activation(session: AsyncSession, current: PhaseState) -> PhaseState:
        if current.get("refused"):
            return current
        row = SimActivation(
            tenant_id=tenancy.tenant_id,
            iccid=current["iccid"],
            plan=current["plan"],
            provider_ref=current["provider_ref"],
            reservation_id=uuid.UUID(current["reservation"]),
            price=current["price"],
        )
        session.add(row)
        await session.flush()
        return {**current, "activation": str(row.id), "created_at": row.created_at.isoformat()}

    async def capture(session: AsyncSession, current: PhaseState) -> PhaseState:
        hold, wallet = uuid.UUID(current["reservation"]), uuid.UUID(current["wallet"])
        if current.get("refused"):  # cleanup on failure: nothing is charged
            await ledger.release(session, hold, f"{record}:release", account=wallet)
            return current
        op = await ledger.capture(session, hold, f"{record}:capture", account=wallet)
        return {**current, "capture": str(op.id)}

    return [
        LocalPhase("reserve", reserve),
        ExternalPhase("activate", activate),
        LocalPhase("record", record_activation),
        LocalPhase("capture", capture),
    ]


@router.post(
    "/activations",
    status_code=status.HTTP_201_CREATED,
    response_model=ActivationOut,
    dependencies=[allow("sims:activate")],
)
async def activate_sim(body: ActivationIn, tenancy: Tenancy, key: Key) -> JSONResponse:
    """Activate a SIM once per key, paying from the shop's credits (see the module docstring)."""
    state = tenancy.state
    record = scoped_key(
        tenant=str(tenancy.tenant_id),
        principal=None,
        method="POST",
        route="/sims/activations",
        key=key.value,
    )
    parts = (body.iccid.encode(), body.plan.encode())
    digest = fingerprint(state.idempotency_secret, *parts)
    final = await run_phases(
        state.idempotency,
        record,
        digest,
        _phases(tenancy, body, record),
        state={"iccid": body.iccid, "plan": body.plan},
        lease=state.settings.idempotency_lease,
        retention=float(state.settings.idempotency_retention),
        sessions=lambda: tenant_session(state.db.sessions, tenancy.tenant_id),
        # Fires once a phase's result is durable, before the next one starts.
        on_recorded=lambda phase: _crash_point(state, phase),
        previous_fingerprints=list(fingerprints(state.idempotency_previous, *parts)),
    )
    if final.get("refused"):
        refused = SimRefused("The SIM provider refused this activation; nothing was charged.")
        raise refused
    out = ActivationOut(
        id=uuid.UUID(final["activation"]),
        iccid=final["iccid"],
        plan=final["plan"],
        provider_ref=final["provider_ref"],
        price=final["price"],
        reservation_id=uuid.UUID(final["reservation"]),
        created_at=datetime.fromisoformat(final["created_at"]),
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=status.HTTP_201_CREATED)
