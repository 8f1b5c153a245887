"""Accounts: sign-up, sign-in, token refresh, sign-out, password change and reset.

Every answer that could reveal whether an account exists is the same either
way: an unknown email at login runs a dummy password verification and gets the
same 401, and a reset request is accepted identically. Password rehashes
(new parameters, bcrypt to argon2id) are written as a compare-and-set on the
old hash, so a concurrent password change is never overwritten.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update

from hardened.db.integrity import integrity_errors
from hardened.db.tenancy import tenant_session
from hardened.errors import Conflict, NotFound, Unauthorized
from shopfront.auth import store_call
from shopfront.models import Base, PasswordReset, Tenant, User

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shopfront.auth import Auth

__all__ = [
    "RESET_TTL",
    "Tokens",
    "change_password",
    "confirm_reset",
    "login",
    "refresh",
    "request_reset",
    "signup",
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


async def _issue(auth: Auth, user_id: str, tenant_id: str, meta: dict[str, str]) -> Tokens:
    issued = await store_call(lambda: auth.refresh.start(user_id, tenant=tenant_id, meta=meta))
    access = auth.access.issue(subject=user_id, tenant=tenant_id, session_id=issued.family_id)
    return Tokens(access, issued.token, auth.access_ttl, user_id, issued.family_id)


async def signup(
    auth: Auth, sessions: async_sessionmaker[AsyncSession], *, shop: str, email: str, password: str
) -> uuid.UUID:
    """Create a user of a shop; the password is hashed off the event loop."""
    tenant_id = await shop_id(sessions, shop)
    password_hash = await auth.hasher.hash(password)
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        user = User(tenant_id=tenant_id, email=email, password_hash=password_hash)
        session.add(user)
        with integrity_errors(
            {"uq_users_tenant_id_email": lambda: Conflict(code="auth.email_taken")},
            metadata=Base.metadata,
        ):
            await session.flush()
    return user.id


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
    return await _issue(auth, str(user.id), str(tenant_id), meta)


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


async def refresh(auth: Auth, token: str) -> Tokens:
    """Rotate a refresh token; reuse of a superseded one revokes its whole family."""
    rotated = await store_call(lambda: auth.refresh.rotate(token))
    access = auth.access.issue(
        subject=rotated.user_id, tenant=rotated.tenant, session_id=rotated.family_id
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
    await store_call(
        lambda: auth.refresh.revoke_all(str(user_id), not_before_ttl=float(auth.access_ttl))
    )


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
    await store_call(
        lambda: auth.refresh.revoke_all(str(user_id), not_before_ttl=float(auth.access_ttl))
    )
