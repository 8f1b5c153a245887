"""Accounts: a new shop and its owner, sign-in, token refresh, passwords, email addresses.

Every answer that could reveal whether an account exists is the same either
way: an unknown email at login runs a dummy password verification and gets the
same 401, a reset request is accepted identically, and sign-up (accepting an
invitation, `shopfront.services.members`) fails one way only. Password
rehashes (new parameters, bcrypt to argon2id) are written as a compare-and-set
on the old hash, so a concurrent password change is never overwritten.

Access tokens carry the member's role (``role`` claim); a refresh reads the
role again, so a token never outlives a role change by more than its own
short life, and a role change also signs the member out (see members).

Email tokens (verification after sign-up, confirmation of a new address) are
``sfv_`` / ``sfc_`` + the shop's id (32 hex) + 256 random bits: the token
names its shop, so redeeming one needs no other input, and only its HMAC
(under a key derived for email tokens alone) is stored. A token works once,
until it expires, and only the latest of a member's tokens of one purpose
works (asking again supersedes the earlier ones). Every way a token can fail
(malformed, unknown, used, superseded, expired, or for an address the member
no longer has) is the same 400 ``auth.invalid_email_token``, so the answer
tells nothing about which tokens ever existed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update

from hardened.crypto import derive_key
from hardened.db.integrity import integrity_errors
from hardened.db.tenancy import tenant_session
from hardened.domains import normalize_tenant_domain
from hardened.errors import (
    BadRequest,
    Conflict,
    FieldError,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from shopfront.auth import revoke_sessions, store_call
from shopfront.models import Base, EmailToken, PasswordReset, Tenant, User

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shopfront.auth import Auth

__all__ = [
    "EMAIL_CHANGE_TTL",
    "EMAIL_TOKEN_PREFIXES",
    "RESET_TTL",
    "VERIFY_TTL",
    "Tokens",
    "change_password",
    "confirm_email_change",
    "confirm_reset",
    "create_shop",
    "login",
    "refresh",
    "request_email_change",
    "request_reset",
    "shop_domain",
    "shop_id",
    "start_verification",
    "verify_email",
]

RESET_TTL = timedelta(minutes=30)
# A sign-up mail may sit unread for a while; a change was asked for just now.
VERIFY_TTL = timedelta(hours=48)
EMAIL_CHANGE_TTL = timedelta(hours=1)
EMAIL_TOKEN_PREFIXES = {"verify": "sfv_", "change": "sfc_"}
_EMAIL_TTLS = {"verify": VERIFY_TTL, "change": EMAIL_CHANGE_TTL}
_log = structlog.get_logger("shopfront.accounts")
_BAD_LOGIN = "The email or password is not correct."


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    user_id: str
    session_id: str


async def shop_id(sessions: async_sessionmaker[AsyncSession], domain: str) -> uuid.UUID:
    """The tenant of a shop domain (404 when there is no such shop)."""
    async with sessions() as session:
        tenant_id = await session.scalar(select(Tenant.id).where(Tenant.domain == domain.lower()))
    if tenant_id is None:
        raise NotFound("No such shop.", code="tenant.not_found")
    return tenant_id


async def _issue(
    auth: Auth, user_id: str, tenant_id: str, role: str, meta: dict[str, str]
) -> Tokens:
    issued = await store_call(lambda: auth.refresh.start(user_id, tenant=tenant_id, meta=meta))
    access = auth.access.issue(
        subject=user_id, tenant=tenant_id, session_id=issued.family_id, extra={"role": role}
    )
    return Tokens(access, issued.token, auth.access_ttl, user_id, issued.family_id)


def shop_domain(domain: str, suffixes: Sequence[str]) -> str:
    """The normalised domain of a new shop, or a 422 naming the ``domain`` field."""
    try:
        return normalize_tenant_domain(domain, suffixes)
    except ValueError as exc:
        raise ValidationFailed(
            "The shop domain is not acceptable.",
            errors=[FieldError(("body", "domain"), f"domain {exc}", "value_error.domain")],
        ) from None


async def create_shop(
    auth: Auth,
    sessions: async_sessionmaker[AsyncSession],
    *,
    name: str,
    domain: str,
    owner_email: str,
    owner_password: str,
) -> tuple[Tenant, User]:
    """The shop and its first owner, in one transaction (both or neither)."""
    password_hash = await auth.hasher.hash(owner_password)
    # A session bound to the new shop from the start: the owner is a tenant row (RLS and
    # the ORM guard both want the shop set), the shop row itself is not scoped.
    tenant = Tenant(id=uuid.uuid4(), name=name, domain=domain)
    owner = User(tenant_id=tenant.id, email=owner_email, role="owner", password_hash=password_hash)
    async with tenant_session(sessions, tenant.id) as session, session.begin():
        session.add(tenant)
        with integrity_errors(
            {"uq_tenants_domain": lambda: Conflict(code="tenant.domain_taken")},
            metadata=Base.metadata,
        ):
            await session.flush()
        session.add(owner)
        await session.flush()
    return tenant, owner


async def login(
    auth: Auth,
    sessions: async_sessionmaker[AsyncSession],
    *,
    shop: str,
    email: str,
    password: str,
    meta: dict[str, str],
) -> Tokens:
    """Verify the password (upgrading its hash if due) and start a new session family."""
    tenant_id = await shop_id(sessions, shop)
    async with tenant_session(sessions, tenant_id) as session:
        user = await session.scalar(select(User).where(User.email == email))
    # Verify with no connection held: hashing takes tens of milliseconds.
    result = await auth.hasher.verify(password, user.password_hash if user else None)
    if user is None or not result.ok:
        raise Unauthorized(_BAD_LOGIN, code="auth.invalid_credentials")
    if result.new_hash is not None:
        await _swap_hash(sessions, tenant_id, user.id, user.password_hash, result.new_hash)
        _log.info("auth.password_rehashed", user_id=str(user.id))
    return await _issue(auth, str(user.id), str(tenant_id), user.role, meta)


async def _swap_hash(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    old: str,
    new: str,
) -> bool:
    """Compare-and-set the password hash; False when it changed meanwhile."""
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        result = await session.execute(
            update(User)
            .where(User.tenant_id == tenant_id, User.id == user_id, User.password_hash == old)
            .values(password_hash=new)
        )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def refresh(auth: Auth, sessions: async_sessionmaker[AsyncSession], token: str) -> Tokens:
    """Rotate a refresh token; reuse of a superseded one revokes its whole family.

    The new access token carries the member's current role; a member who is no
    longer in the shop loses the session instead.
    """
    rotated = await store_call(lambda: auth.refresh.rotate(token))
    tenant_id = uuid.UUID(rotated.tenant)
    async with tenant_session(sessions, tenant_id) as session:
        role = await session.scalar(select(User.role).where(User.id == uuid.UUID(rotated.user_id)))
    if role is None:
        await store_call(lambda: auth.refresh.revoke(rotated.user_id, rotated.family_id))
        raise Unauthorized("The session has ended.", code="auth.invalid_refresh")
    access = auth.access.issue(
        subject=rotated.user_id,
        tenant=rotated.tenant,
        session_id=rotated.family_id,
        extra={"role": role},
    )
    return Tokens(access, rotated.token, auth.access_ttl, rotated.user_id, rotated.family_id)


async def change_password(
    auth: Auth,
    sessions: async_sessionmaker[AsyncSession],
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    current: str,
    new: str,
) -> None:
    """Replace the password after checking the current one; every session is signed out."""
    new_hash = await auth.hasher.hash(new)
    async with tenant_session(sessions, tenant_id) as session:
        user = await session.get(User, user_id)
    result = await auth.hasher.verify(current, user.password_hash if user else None)
    if user is None or not result.ok:
        raise Unauthorized("The current password is wrong.", code="auth.invalid_credentials")
    if not await _swap_hash(sessions, tenant_id, user_id, user.password_hash, new_hash):
        raise Conflict(
            "The password changed meanwhile; sign in again.", code="auth.password_changed"
        )
    await revoke_sessions(auth, str(user_id))


def _reset_hash(auth: Auth, token: str) -> str:
    return hmac.new(auth.reset_key, token.encode(), hashlib.sha256).hexdigest()


def _reset_hashes(auth: Auth, token: str) -> list[str]:
    """The token's hash under the current key and each previous one (a rotation's overlap)."""
    keys = (auth.reset_key, *auth.reset_previous)
    return [hmac.new(key, token.encode(), hashlib.sha256).hexdigest() for key in keys]


async def request_reset(
    auth: Auth, sessions: async_sessionmaker[AsyncSession], shop: str, email: str
) -> str | None:
    """Create a reset token for an existing account; None (and no trace) otherwise."""
    token = secrets.token_urlsafe(32)
    token_hash = _reset_hash(auth, token)
    try:
        tenant_id = await shop_id(sessions, shop)
    except NotFound:
        return None
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        user_id = await session.scalar(select(User.id).where(User.email == email))
        if user_id is None:
            return None
        session.add(
            PasswordReset(
                tenant_id=tenant_id,
                user_id=user_id,
                token_hash=token_hash,
                expires_at=datetime.now(UTC) + RESET_TTL,
            )
        )
    return token


async def confirm_reset(
    auth: Auth, sessions: async_sessionmaker[AsyncSession], shop: str, token: str, new: str
) -> None:
    """Use a reset token once: set the password and sign out every session."""
    new_hash = await auth.hasher.hash(new)
    invalid = Unauthorized("The reset link is not valid.", code="auth.invalid_reset_token")
    try:
        tenant_id = await shop_id(sessions, shop)
    except NotFound:
        raise invalid from None
    now = datetime.now(UTC)
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        user_id = await session.scalar(
            update(PasswordReset)
            .where(
                PasswordReset.tenant_id == tenant_id,
                PasswordReset.token_hash.in_(_reset_hashes(auth, token)),
                PasswordReset.used_at.is_(None),
                PasswordReset.expires_at > now,
            )
            .values(used_at=now)
            .returning(PasswordReset.user_id)
        )
        if user_id is None:
            raise invalid
        await session.execute(
            update(User)
            .where(User.tenant_id == tenant_id, User.id == user_id)
            .values(password_hash=new_hash)
        )
    await revoke_sessions(auth, str(user_id))


@functools.lru_cache(maxsize=8)
def _email_key(reset_key: bytes) -> bytes:
    # Derived from the reset key, so the service needs no new secret (and auth.py no change).
    return derive_key(reset_key, "shopfront email tokens")


def _email_hash(auth: Auth, token: str) -> str:
    return hmac.new(_email_key(auth.reset_key), token.encode(), hashlib.sha256).hexdigest()


def _email_hashes(auth: Auth, token: str) -> list[str]:
    """The token's hash under the current key and each previous one (a rotation's overlap)."""
    keys = (auth.reset_key, *auth.reset_previous)
    return [hmac.new(_email_key(k), token.encode(), hashlib.sha256).hexdigest() for k in keys]


def _invalid_email_token() -> BadRequest:
    return BadRequest("The link is not valid or has expired.", code="auth.invalid_email_token")


def _shop_of_token(purpose: str, token: str) -> uuid.UUID:
    """The shop a token names; the uniform refusal when it is not one of ``purpose``."""
    prefix = EMAIL_TOKEN_PREFIXES[purpose]
    shop, _, secret = token.removeprefix(prefix).partition("_")
    if not token.startswith(prefix) or len(shop) != 32 or len(secret) != 43:
        raise _invalid_email_token()
    try:
        return uuid.UUID(hex=shop)
    except ValueError:
        raise _invalid_email_token() from None


async def _issue_email_token(
    auth: Auth, session: AsyncSession, user: User, purpose: str, email: str
) -> str:
    """A new token of ``purpose`` mailed to ``email``; the member's earlier ones stop working."""
    now = datetime.now(UTC)
    await session.execute(
        update(EmailToken)
        .where(
            EmailToken.tenant_id == user.tenant_id,
            EmailToken.user_id == user.id,
            EmailToken.purpose == purpose,
            EmailToken.used_at.is_(None),
        )
        .values(used_at=now)
    )
    token = f"{EMAIL_TOKEN_PREFIXES[purpose]}{user.tenant_id.hex}_{secrets.token_urlsafe(32)}"
    session.add(
        EmailToken(
            tenant_id=user.tenant_id,
            user_id=user.id,
            purpose=purpose,
            email=email,
            token_hash=_email_hash(auth, token),
            created_at=now,
            expires_at=now + _EMAIL_TTLS[purpose],
        )
    )
    await session.flush()
    return token


async def _redeem(
    auth: Auth, session: AsyncSession, tenant_id: uuid.UUID, purpose: str, token: str
) -> tuple[User, str]:
    """Use a live token once (inside the caller's transaction): its member and address."""
    now = datetime.now(UTC)
    used = (
        await session.execute(
            update(EmailToken)
            .where(
                EmailToken.tenant_id == tenant_id,
                EmailToken.token_hash.in_(_email_hashes(auth, token)),
                EmailToken.used_at.is_(None),
                EmailToken.purpose == purpose,
                EmailToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(EmailToken.user_id, EmailToken.email)
        )
    ).first()
    user = None if used is None else await session.get(User, used.user_id, with_for_update=True)
    if used is None or user is None:
        raise _invalid_email_token()
    return user, used.email


async def start_verification(
    auth: Auth, sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[str, str]:
    """A verification token for the member's address: (that address, the token)."""
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound("No such member.", code="member.not_found")
        return user.email, await _issue_email_token(auth, session, user, "verify", user.email)


async def verify_email(auth: Auth, sessions: async_sessionmaker[AsyncSession], token: str) -> None:
    """Use a verification token once: the member's address counts as verified from now on."""
    tenant_id = _shop_of_token("verify", token)
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        user, email = await _redeem(auth, session, tenant_id, "verify", token)
        if user.email != email:  # the address changed since the mail went out
            raise _invalid_email_token()
        user.email_verified_at = user.email_verified_at or datetime.now(UTC)
        await session.flush()


async def request_email_change(
    auth: Auth,
    sessions: async_sessionmaker[AsyncSession],
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    new_email: str,
    password: str,
) -> tuple[str, str]:
    """After checking the password, a token for ``new_email``: (the shop's domain, the token).

    Whether the address belongs to another member is not told here (a staff
    member could probe the shop's members with it): the confirmation says so.
    """
    async with tenant_session(sessions, tenant_id) as session:
        user = await session.get(User, user_id)
    result = await auth.hasher.verify(password, user.password_hash if user else None)
    if user is None or not result.ok:
        raise Unauthorized("The current password is wrong.", code="auth.invalid_credentials")
    if new_email == user.email:
        raise ValidationFailed(
            "That is already the account's email.",
            errors=[
                FieldError(
                    ("body", "new_email"), "new_email is the current email", "value_error.same"
                )
            ],
        )
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        domain = await session.scalar(select(Tenant.domain).where(Tenant.id == tenant_id))
        current = await session.get(User, user_id)
        if domain is None or current is None:
            raise Unauthorized("The session has ended.", code="auth.invalid_credentials")
        return domain, await _issue_email_token(auth, session, current, "change", new_email)


async def confirm_email_change(
    auth: Auth, sessions: async_sessionmaker[AsyncSession], token: str
) -> None:
    """Use a change token once: its address becomes the member's, verified.

    An address another member holds meanwhile is a 409 ``auth.email_taken``,
    and the token stays unused (the whole transaction rolls back).
    """
    tenant_id = _shop_of_token("change", token)
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        user, email = await _redeem(auth, session, tenant_id, "change", token)
        user.email = email
        user.email_verified_at = datetime.now(UTC)
        with integrity_errors(
            {
                "uq_users_tenant_id_email": lambda: Conflict(
                    "Another member of the shop has this email.", code="auth.email_taken"
                )
            },
            metadata=Base.metadata,
        ):
            await session.flush()
