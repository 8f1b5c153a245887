"""KYC routes: a member's own record, staff search by number, admin verification.

Bodies carry the numbers once, inbound; every response shows only the last
four characters of each.
"""

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from hardened.errors import BadRequest
from hardened.fields import text
from shopfront import kyc
from shopfront.models import MAX_ADDRESS_CHARS, KycRecord
from shopfront.permissions import allow, user_only
from shopfront.tenant_auth import Tenancy

__all__ = ["router"]

router = APIRouter(prefix="/kyc", tags=["kyc"])

_Number = Annotated[str, text(max_length=40, min_length=4, pattern=r"[A-Za-z0-9 -]+")]
_Bank = Annotated[str, text(max_length=34, min_length=4, pattern=r"[A-Za-z0-9 -]+")]
_Address = Annotated[str, text(max_length=MAX_ADDRESS_CHARS, min_length=1, multiline=True)]


class KycIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    national_id: _Number
    tax_id: _Number
    bank_account: _Bank | None = None
    address: _Address | None = None


class KycOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    status: str
    national_id_last4: str
    tax_id_last4: str
    bank_account_last4: str | None
    has_address: bool
    created_at: datetime
    verified_at: datetime | None


def _last4(value: str | None) -> str | None:
    return None if value is None else value[-4:]


def _out(record: KycRecord) -> KycOut:
    return KycOut(
        id=record.id,
        user_id=record.user_id,
        status=record.status,
        national_id_last4=record.national_id[-4:],
        tax_id_last4=record.tax_id[-4:],
        bank_account_last4=_last4(record.bank_account),
        has_address=record.address is not None,
        created_at=record.created_at,
        verified_at=record.verified_at,
    )


def _user_id(tenancy: Tenancy) -> uuid.UUID:
    principal = tenancy.identity.principal or ""
    return uuid.UUID(principal.removeprefix("user:"))


@router.put("/me", dependencies=[user_only()])
async def submit_kyc(body: KycIn, tenancy: Tenancy) -> KycOut:
    """Submit or replace your KYC data; it is stored encrypted and must be verified again."""
    fields = kyc.KycFields(body.national_id, body.tax_id, body.bank_account, body.address)
    return _out(await kyc.submit(tenancy.session, _user_id(tenancy), fields))


@router.get("/me", dependencies=[user_only()])
async def my_kyc(tenancy: Tenancy) -> KycOut:
    """Your KYC record (last four characters of each number only)."""
    found = await kyc.own(tenancy.session, _user_id(tenancy))
    return _out(found)


@router.get("/search", dependencies=[allow("kyc:read")])
async def search_kyc(
    tenancy: Tenancy,
    national_id: Annotated[_Number | None, Query()] = None,
    tax_id: Annotated[_Number | None, Query()] = None,
) -> list[KycOut]:
    """Records whose national id or tax id equals the number (exact match, normalised)."""
    if (national_id is None) == (tax_id is None):
        raise BadRequest("Give exactly one of national_id and tax_id.", code="kyc.search_invalid")
    found = await kyc.find_by_number(
        tenancy.session,
        national_id=national_id,
        tax_id=tax_id,
        actor=tenancy.identity.principal or "",
    )
    return [_out(r) for r in found]


@router.post("/{record_id}/verify", dependencies=[allow("kyc:verify")])
async def verify_kyc(record_id: uuid.UUID, tenancy: Tenancy) -> KycOut:
    """Verify a record: the record and the member's KYC status change together or not at all."""
    record = await kyc.verify(
        tenancy.session,
        tenancy.state.kyc_verifier,
        record_id,
        actor=tenancy.identity.principal or "",
    )
    return _out(record)
