"""Shop API keys: several per shop, each with a role, created, rotated, revoked; only hashes kept.

A key is ``sfk_<shop id, 32 hex>_<secret, 256 random bits>``. Naming the shop
in the key lets its lookup run in that shop's tenant session like every other
query (row-level security needs no exception for it); the secret is what
makes the key, and only its SHA-256 is stored (a fast hash is right for a
secret with nothing to brute-force). Revoked keys stop at once; a rotated key
stays valid for the overlap its rotation chose (so deployments can switch
over), then expires. ``last_used_at`` is written at most once a minute per key,
so a busy key costs one read per request, not a write.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update

from hardened.db.tenancy import tenant_session
from hardened.errors import Conflict, NotFound, Unauthorized
from shopfront.models import ApiKey

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "API_KEY_PREFIX",
    "LAST_USED_RESOLUTION",
    "NewKey",
    "authenticate_key",
    "create_key",
    "hash_key",
    "revoke_key",
    "rotate_key",
]

API_KEY_PREFIX = "sfk_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the row, and the key itself (shown once, never stored)."""

    row: ApiKey
    key: str


def hash_key(key: str) -> str:
    """What the database stores and looks up."""
    return hashlib.sha256(key.encode()).hexdigest()


def _invalid() -> Unauthorized:
    return Unauthorized(
        "The API key is not valid.",
        code="auth.invalid_credentials",
        headers={"www-authenticate": "Bearer"},
    )


def _shop_of(key: str) -> uuid.UUID:
    prefix, shop, secret = [*key.split("_", 2), "", ""][:3]
    if f"{prefix}_" != API_KEY_PREFIX or len(shop) != 32 or len(secret) != 43:
        raise _invalid()
    try:
        return uuid.UUID(hex=shop)
    except ValueError:
        raise _invalid() from None


def _new_key(tenant_id: uuid.UUID) -> str:
    return f"{API_KEY_PREFIX}{tenant_id.hex}_{secrets.token_urlsafe(32)}"


async def authenticate_key(sessions: async_sessionmaker[AsyncSession], key: str) -> ApiKey:
    """The live key row for ``key``; `Unauthorized` if unknown, revoked or expired."""
    tenant_id = _shop_of(key)
    now = datetime.now(UTC)
    async with tenant_session(sessions, tenant_id) as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        if row is None or row.revoked_at is not None:
            raise _invalid()
        if row.expires_at is not None and row.expires_at <= now:
            raise _invalid()
        stale = now - LAST_USED_RESOLUTION
        if row.last_used_at is None or row.last_used_at < stale:
            await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.tenant_id == tenant_id,
                    ApiKey.id == row.id,
                    or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < stale),
                )
                .values(last_used_at=now)
            )
            await session.commit()
    return row


async def create_key(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    name: str,
    role: str,
    created_by: str,
    expires_at: datetime | None = None,
) -> NewKey:
    """Add a key to the shop (inside the caller's transaction)."""
    key = _new_key(tenant_id)
    row = ApiKey(
        tenant_id=tenant_id,
        name=name,
        role=role,
        key_hash=hash_key(key),
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return NewKey(row, key)


async def _live(session: AsyncSession, key_id: uuid.UUID) -> ApiKey:
    row = await session.get(ApiKey, key_id, with_for_update=True)
    if row is None or row.revoked_at is not None:
        raise NotFound("No such API key.", code="api_key.not_found")
    return row


async def rotate_key(
    session: AsyncSession, key_id: uuid.UUID, *, overlap: timedelta, created_by: str
) -> tuple[ApiKey, NewKey]:
    """A successor with the same name and role; the old key expires after ``overlap``."""
    old = await _live(session, key_id)
    now = datetime.now(UTC)
    if old.expires_at is not None and old.expires_at <= now:
        raise NotFound("No such API key.", code="api_key.not_found")
    if old.replaced_by is not None:
        raise Conflict(
            "This key was rotated already; rotate its successor.", code="api_key.rotated"
        )
    new = await create_key(
        session,
        old.tenant_id,
        name=old.name,
        role=old.role,
        created_by=created_by,
        expires_at=old.expires_at,
    )
    ends = now + overlap
    old.expires_at = ends if old.expires_at is None else min(old.expires_at, ends)
    old.replaced_by = new.row.id
    await session.flush()
    return old, new


async def revoke_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey:
    """Stop a key at once."""
    row = await _live(session, key_id)
    row.revoked_at = datetime.now(UTC)
    await session.flush()
    return row
