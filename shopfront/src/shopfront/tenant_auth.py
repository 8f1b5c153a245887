"""The per-request tenant session: one shop's rows, for an authenticated caller.

Who the caller is was settled by the identity step (`shopfront.identity`);
what they may do, by the route's declared permission
(`shopfront.permissions`); how often, by the rate-limit middleware. This only
opens a database session bound to the caller's shop, so every query is scoped
by construction and a missing or foreign id is simply "not found", and makes
that shop the tenant in context (`hardened.db.tenant_context`) for the rest
of the request, so tenant-scoped components (the cache) key by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from hardened.auth import require_identity
from hardened.db.tenancy import tenant_context, tenant_session
from hardened.http import Identity, identity_of
from shopfront.identity import tenant_of
from shopfront.state import AppState, app_state

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["Tenancy", "TenantRequest", "tenant_request"]


@dataclass(frozen=True, slots=True)
class TenantRequest:
    """The authenticated caller, their shop, and a session that can only see its rows."""

    tenant_id: uuid.UUID
    session: AsyncSession
    state: AppState
    identity: Identity


async def tenant_request(
    request: Request, state: Annotated[AppState, Depends(app_state)]
) -> AsyncIterator[TenantRequest]:
    """Dependency: a session bound to the caller's shop (401 without a valid credential)."""
    identity = require_identity(identity_of(request.scope))
    tenant_id = tenant_of(identity)
    with tenant_context(tenant_id):
        async with tenant_session(state.db.sessions, tenant_id) as session:
            yield TenantRequest(tenant_id, session, state, identity)


Tenancy = Annotated[TenantRequest, Depends(tenant_request)]
