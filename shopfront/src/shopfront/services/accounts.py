"""Accounts: a new shop and its owner, sign-in, token refresh, password change and reset.

Every answer that could reveal whether an account exists is the same either
way: an unknown email at login runs a dummy password verification and gets the
same 401, a reset request is accepted identically, and sign-up (accepting an
invitation, `shopfront.services.members`) fails one way only. Password
rehashes (new parameters, bcrypt to argon2id) are written as a compare-and-set
on the old hash, so a concurrent password change is never overwritten.

Access tokens carry the member's role (``role`` claim); a refresh reads the
role again, so a token never outlives a role change by more than its own
short life, and a role change also signs the member out (see members).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update

from hardened.db.integrity import integrity_errors
from hardened.db.tenancy import tenant_session
from hardened.domains import normalize_tenant_domain
from hardened.errors import Conflict, FieldError, NotFound, Unauthorized, ValidationFailed
from shopfront.auth import revoke_sessions, store_call
from shopfront.models import Base, PasswordReset, Tenant, User

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shopfront.auth import Auth

__all__ = [
    "RESET_TTL",
    "Tokens",
    "change_password",
    "confirm_reset",
    "create_shop",
    "login",
    "refresh",
    "request_reset",
    "shop_domain",
    "shop_id",
]

RESET_TTL = timedelta(minutes=30)
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
                PasswordReset.token_hash == _reset_hash(auth, token),
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
