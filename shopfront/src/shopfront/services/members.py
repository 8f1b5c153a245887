"""Members of a shop: invitations in, roles changed, members removed; a shop always has an owner.

Joining a shop takes an invitation from one of its owners or admins: a
single-use token (256 random bits, stored as a keyed hash) that names the
email and the role, expiring after ``INVITATION_TTL``. Accepting it is the only
sign-up; every way it can fail (unknown, used, expired, or an email that is
already a member) answers the same ``auth.invalid_invitation``, so sign-up
tells nobody which emails have accounts.

Nobody hands out a role above their own, and only owners touch owners. The
last owner can be neither demoted nor removed: every change first locks the
shop's owner rows (``FOR UPDATE``, in id order), so two owners demoting each
other at once cannot both win and leave the shop without one. A member whose
role changes, or who is removed, is signed out everywhere: their tokens carry
the old role, and signing in again picks up the new one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update

from hardened.db.integrity import integrity_errors
from hardened.db.tenancy import session_tenant, tenant_session
from hardened.db.transaction import advisory_lock
from hardened.errors import Conflict, Forbidden, NotFound, Unauthorized
from shopfront.models import Base, Invitation, PasswordReset, Tenant, User
from shopfront.permissions import grants_up_to

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shopfront.auth import Auth

__all__ = [
    "INVITATION_PREFIX",
    "accept_invitation",
    "change_role",
    "invite",
    "remove_member",
    "revoke_invitation",
    "shop_domain",
]

INVITATION_PREFIX = "inv_"


def _token_hash(auth: Auth, token: str) -> str:
    return hmac.new(auth.invitation_key, token.encode(), hashlib.sha256).hexdigest()


def _token_hashes(auth: Auth, token: str) -> list[str]:
    """The token's hash under the current key and each previous one (a rotation's overlap)."""
    keys = (auth.invitation_key, *auth.invitation_previous)
    return [hmac.new(key, token.encode(), hashlib.sha256).hexdigest() for key in keys]


def _owner_required() -> Forbidden:
    return Forbidden("Only an owner can do this.", code="member.owner_required")


def _check_grant(caller_role: str | None, *roles: str) -> None:
    """Refuse unless the caller may hand out (and take away) each of ``roles``."""
    if "owner" in roles and caller_role != "owner":
        raise _owner_required()
    if not all(grants_up_to(caller_role, role) for role in roles):
        raise Forbidden("You cannot give a role above your own.", code="member.role_too_high")


async def invite(
    auth: Auth,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    email: str,
    role: str,
    caller_role: str | None,
    created_by: str,
    ttl: timedelta,
) -> tuple[Invitation, str]:
    """A new invitation and its token (inside the caller's transaction)."""
    _check_grant(caller_role, role)
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("This email is already a member of the shop.", code="member.exists")
    token = INVITATION_PREFIX + secrets.token_urlsafe(32)
    row = Invitation(
        tenant_id=tenant_id,
        email=email,
        role=role,
        token_hash=_token_hash(auth, token),
        created_by=created_by,
        expires_at=datetime.now(UTC) + ttl,
    )
    session.add(row)
    await session.flush()
    return row, token


async def shop_domain(session: AsyncSession, tenant_id: uuid.UUID) -> str:
    """The shop's domain (what an invitee names to accept)."""
    domain = await session.scalar(select(Tenant.domain).where(Tenant.id == tenant_id))
    if domain is None:
        raise NotFound("No such shop.", code="tenant.not_found")
    return domain


async def revoke_invitation(session: AsyncSession, invitation_id: uuid.UUID) -> None:
    """Withdraw a pending invitation (404 if there is none)."""
    row = await session.get(Invitation, invitation_id)
    if row is None or row.accepted_at is not None:
        raise NotFound("No such invitation.", code="invitation.not_found")
    await session.delete(row)
    await session.flush()


def _invalid_invitation() -> Unauthorized:
    return Unauthorized("The invitation is not valid.", code="auth.invalid_invitation")


async def accept_invitation(
    auth: Auth,
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID | None,
    *,
    token: str,
    password: str,
) -> uuid.UUID:
    """Sign up: use the invitation once, creating the member with its email and role."""
    password_hash = await auth.hasher.hash(password)  # before any lock: it takes a while
    if tenant_id is None:
        raise _invalid_invitation()
    now = datetime.now(UTC)
    async with tenant_session(sessions, tenant_id) as session, session.begin():
        taken = (
            await session.execute(
                update(Invitation)
                .where(
                    Invitation.tenant_id == tenant_id,
                    Invitation.token_hash.in_(_token_hashes(auth, token)),
                    Invitation.accepted_at.is_(None),
                    Invitation.expires_at > now,
                )
                .values(accepted_at=now)
                .returning(Invitation.email, Invitation.role)
            )
        ).first()
        if taken is None:
            raise _invalid_invitation()
        user = User(
            tenant_id=tenant_id, email=taken.email, role=taken.role, password_hash=password_hash
        )
        session.add(user)
        # An email that is a member already answers like any other bad invitation.
        with integrity_errors(
            {"uq_users_tenant_id_email": _invalid_invitation}, metadata=Base.metadata
        ):
            await session.flush()
    return user.id


async def _lock_owners(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Take the shop's membership lock (until the transaction ends); how many owners it has."""
    async with advisory_lock(session, "shopfront.members", tenant_id):
        owners = await session.scalar(
            select(func.count()).select_from(User).where(User.role == "owner")
        )
    return int(owners or 0)


async def _target(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound("No such member.", code="member.not_found")
    return user


def _tenant(session: AsyncSession) -> uuid.UUID:
    tenant = session_tenant(session)
    assert tenant is not None  # noqa: S101 - member routes run in a tenant session
    return tenant


def _keep_an_owner(user: User, owners: int) -> None:
    if user.role == "owner" and owners <= 1:
        raise Conflict("A shop must keep at least one owner.", code="member.last_owner")


async def change_role(
    session: AsyncSession, user_id: uuid.UUID, *, role: str, caller_role: str | None
) -> tuple[User, bool]:
    """Give a member another role (inside the caller's transaction); whether it changed."""
    owners = await _lock_owners(session, _tenant(session))
    user = await _target(session, user_id)
    if user.role == role:
        return user, False
    _check_grant(caller_role, user.role, role)
    if role != "owner":
        _keep_an_owner(user, owners)
    user.role = role
    await session.flush()
    return user, True


async def remove_member(
    session: AsyncSession, user_id: uuid.UUID, *, caller_role: str | None
) -> None:
    """Remove a member and their pending password resets (inside the caller's transaction)."""
    owners = await _lock_owners(session, _tenant(session))
    user = await _target(session, user_id)
    _check_grant(caller_role, user.role)
    _keep_an_owner(user, owners)
    await session.execute(
        delete(PasswordReset).where(
            PasswordReset.tenant_id == user.tenant_id, PasswordReset.user_id == user.id
        )
    )
    await session.delete(user)
    await session.flush()
