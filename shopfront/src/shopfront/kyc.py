"""KYC: members submit their identity data, staff find it by number, admins verify it.

The values are encrypted fields (`shopfront.models.KycRecord`); responses show
only their last four characters. Verification asks the verifier outside any
transaction (a provider call must not hold row locks), then writes the KYC
record and the member's ``kyc_status`` in one transaction: both change or
neither does.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog
from sqlalchemy import select

from hardened.crypto import lookup
from hardened.errors import DependencyUnavailable, NotFound
from hardened.outbound import GovernedTransport, Governor
from shopfront.models import KycRecord, User, digits_and_letters

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "HttpKycVerifier",
    "KycFields",
    "KycVerifier",
    "LocalKycVerifier",
    "Verdict",
    "find_by_number",
    "own",
    "submit",
    "verify",
]

_log = structlog.get_logger("shopfront.kyc")
_PAN = re.compile(r"[A-Z]{5}[0-9]{4}[A-Z]")

# Verhoeff's dihedral-group tables: the Aadhaar check digit.
_MUL = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_PERM = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_valid(number: str) -> bool:
    """Whether ``number`` (digits) carries a valid Verhoeff check digit."""
    check = 0
    for i, ch in enumerate(reversed(number)):
        check = _MUL[check][_PERM[i % 8][int(ch)]]
    return check == 0


@dataclass(frozen=True, slots=True)
class KycFields:
    """What a member submits (already validated for length and characters)."""

    national_id: str
    tax_id: str
    bank_account: str | None
    address: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A verifier's answer: verified or not, and why not (never the values)."""

    verified: bool
    reason: str | None = None


class KycVerifier(Protocol):
    """Checks identity numbers (a provider over HTTP in production)."""

    async def verify(self, national_id: str, tax_id: str) -> Verdict: ...

    async def aclose(self) -> None: ...


class HttpKycVerifier:
    """The KYC provider's ``POST /verifications``, called through the ``kyc`` governor.

    Its answer is ``{"verified": bool, "reason": str | null}``. A refused
    connection, a timeout, a 5xx or 429, or a governor refusal is
    `DependencyUnavailable` (503 ``kyc.provider_unavailable``, nothing
    written); the numbers go in the body, never the URL, so no access log
    shows them.
    """

    def __init__(self, base_url: str, governor: Governor) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=GovernedTransport(governor),
            timeout=httpx.Timeout(governor.config.lane.timeout + 1),
        )

    async def verify(self, national_id: str, tax_id: str) -> Verdict:
        try:
            resp = await self._client.post(
                "/verifications", json={"national_id": national_id, "tax_id": tax_id}
            )
            if resp.status_code >= 500 or resp.status_code == 429:
                raise httpx.HTTPStatusError("provider failed", request=resp.request, response=resp)
            body = resp.json() if resp.status_code < 400 else None
        except (httpx.HTTPError, ValueError) as exc:
            _log.warning("kyc_provider.unavailable", error=type(exc).__name__)
            raise DependencyUnavailable(
                "The KYC provider did not answer; try again later.",
                code="kyc.provider_unavailable",
                retry_after=5,
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("verified"), bool):
            _log.warning("kyc_provider.bad_answer", status=resp.status_code)
            raise DependencyUnavailable(
                "The KYC provider gave no usable answer.",
                code="kyc.provider_unavailable",
                retry_after=5,
            )
        reason = body.get("reason")
        return Verdict(verified=body["verified"], reason=None if reason is None else str(reason))

    async def aclose(self) -> None:
        await self._client.aclose()


class LocalKycVerifier:
    """Offline checks: a 12-digit Aadhaar with its Verhoeff digit and a well-formed PAN."""

    async def verify(self, national_id: str, tax_id: str) -> Verdict:
        aadhaar = digits_and_letters(national_id)
        if not (len(aadhaar) == 12 and aadhaar.isdigit() and aadhaar[0] not in "01"):
            return Verdict(verified=False, reason="national_id_format")
        if not verhoeff_valid(aadhaar):
            return Verdict(verified=False, reason="national_id_checksum")
        if not _PAN.fullmatch(digits_and_letters(tax_id)):
            return Verdict(verified=False, reason="tax_id_format")
        return Verdict(verified=True)

    async def aclose(self) -> None:
        return None


async def submit(session: AsyncSession, user_id: uuid.UUID, fields: KycFields) -> KycRecord:
    """Create or replace the member's KYC record; a changed record needs verifying again."""
    async with session.begin():
        record = (
            await session.execute(select(KycRecord).where(KycRecord.user_id == user_id))
        ).scalar_one_or_none()
        if record is None:
            record = KycRecord(id=uuid.uuid4(), user_id=user_id)
            session.add(record)
        record.national_id = fields.national_id
        record.tax_id = fields.tax_id
        record.bank_account = fields.bank_account
        record.address = fields.address
        record.status = "pending"
        record.verified_at = None
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound("No such member.", code="member.not_found")
        user.kyc_status = "pending"
    _log.info("audit.kyc_submitted", user_id=str(user_id), record_id=str(record.id))
    return record


async def own(session: AsyncSession, user_id: uuid.UUID) -> KycRecord:
    """The member's own record (404 before they submit one)."""
    async with session.begin():
        record = (
            await session.execute(select(KycRecord).where(KycRecord.user_id == user_id))
        ).scalar_one_or_none()
    if record is None:
        raise NotFound("No KYC record yet.", code="kyc.not_found")
    return record


async def _record(session: AsyncSession, record_id: uuid.UUID) -> KycRecord:
    record = await session.get(KycRecord, record_id)
    if record is None:
        raise NotFound("No such KYC record.", code="kyc.not_found")
    return record


async def verify(
    session: AsyncSession, verifier: KycVerifier, record_id: uuid.UUID, *, actor: str
) -> KycRecord:
    """Verify a record: the verifier first, then record and member status in one transaction."""
    async with session.begin():
        record = await _record(session, record_id)
        national_id, tax_id = record.national_id, record.tax_id
    verdict = await verifier.verify(national_id, tax_id)
    status = "verified" if verdict.verified else "rejected"
    async with session.begin():
        record = await _record(session, record_id)
        record.status = status
        record.verified_at = datetime.now(UTC) if verdict.verified else None
        await session.flush()
        user = await session.get(User, record.user_id, with_for_update=True)
        if user is None:
            raise NotFound("No such member.", code="member.not_found")
        user.kyc_status = status
        await session.flush()
    _log.info(
        "audit.kyc_verified",
        actor=actor,
        record_id=str(record_id),
        outcome=status,
        reason=verdict.reason,
    )
    return record


async def find_by_number(
    session: AsyncSession, *, national_id: str | None, tax_id: str | None, actor: str
) -> list[KycRecord]:
    """Records whose national id or tax id equals the given number (blind-index lookup)."""
    async with session.begin():
        if national_id is not None:
            found = await lookup(session, KycRecord.national_id, national_id)
        elif tax_id is not None:
            found = await lookup(session, KycRecord.tax_id, tax_id)
        else:
            found = []
    _log.info("audit.kyc_searched", actor=actor, results=len(found))
    return found
