"""Who the caller is, as a shop: tenant API keys and the per-request tenant session.

Tenant-scoped routes accept the shop's API key (``Authorization: Bearer sfk_…``:
256 random bits, shown once at shop creation, stored only as SHA-256 - a fast
hash is right for high-entropy keys, there is nothing to brute-force) or a
signed-in user's access token, whose tenant claim names the shop. The
dependency yields a database session bound to that one tenant, so every query
is scoped by construction and a missing or foreign id is simply "not found".
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Response
from sqlalchemy import select

from hardened.db.tenancy import tenant_session
from hardened.errors import Unauthorized
from shopfront.auth import bearer_token, verify_access
from shopfront.limits import enforce
from shopfront.models import Tenant
from shopfront.state import AppState, app_state

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "API_KEY_PREFIX",
    "Tenancy",
    "TenantRequest",
    "hash_api_key",
    "new_api_key",
    "tenant_request",
]

API_KEY_PREFIX = "sfk_"


def new_api_key() -> str:
    """A fresh shop API key (shown to the shop once)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """What the database stores and looks up."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TenantRequest:
    """The authenticated shop and a session that can only see its rows."""

    tenant_id: uuid.UUID
    session: AsyncSession
    state: AppState


async def _tenant_of_key(state: AppState, key: str) -> uuid.UUID:
    async with state.db.sessions() as lookup:
        tenant_id = await lookup.scalar(
            select(Tenant.id).where(Tenant.api_key_hash == hash_api_key(key))
        )
    if tenant_id is None:
        raise Unauthorized(
            "The API key is not valid.",
            code="auth.invalid_credentials",
            headers={"www-authenticate": "Bearer"},
        )
    return tenant_id


async def tenant_request(
    request: Request, response: Response, state: Annotated[AppState, Depends(app_state)]
) -> AsyncIterator[TenantRequest]:
    """Dependency: authenticate the shop (API key) or a signed-in user, yield a tenant session."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized(
            "A shop API key or a user access token is required.",
            code="auth.missing_credentials",
            headers={"www-authenticate": "Bearer"},
        )
    if token.startswith(API_KEY_PREFIX):
        tenant_id = await _tenant_of_key(state, token)
        caller = "key:" + hash_api_key(token)[:32]
    else:
        claims = await verify_access(state.auth, token, request.scope)
        tenant_id = uuid.UUID(claims.tenant)
        caller = "user:" + claims.sub
    route = getattr(request.scope.get("route"), "path", request.url.path)
    hits = state.limits.tenant_hits(request.method, route, str(tenant_id), caller)
    headers = await enforce(state.limits, hits)
    response.headers.update(headers)
    async with tenant_session(state.db.sessions, tenant_id) as session:
        yield TenantRequest(tenant_id, session, state)


Tenancy = Annotated[TenantRequest, Depends(tenant_request)]
