"""Shops: self-service creation (the shop and its owner at once), lookup by id."""

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field

from hardened.errors import NotFound
from hardened.fastapi import client_ip
from shopfront.limits import enforce
from shopfront.models import Tenant
from shopfront.permissions import allow, public
from shopfront.schemas import Domain, EmailStr, Name, Password
from shopfront.services import accounts
from shopfront.state import AppState, app_state
from shopfront.tenant_auth import Tenancy

__all__ = ["router"]

router = APIRouter(prefix="/tenants", tags=["tenants"])


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    domain: Domain
    owner_email: EmailStr
    owner_password: Password


class TenantOut(BaseModel):
    id: uuid.UUID
    name: str
    domain: str
    created_at: datetime


class TenantCreated(TenantOut):
    owner_id: uuid.UUID = Field(description="The owner's user id; sign in with their email.")


def _out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id, name=tenant.name, domain=tenant.domain, created_at=tenant.created_at
    )


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[public()])
async def create_tenant(
    body: TenantIn, request: Request, state: Annotated[AppState, Depends(app_state)]
) -> TenantCreated:
    """Open a shop with its first owner (rate-limited per client IP); sign in to use it."""
    limits = state.limits
    await enforce(limits, [(limits.signup_ip, client_ip(request) or "unknown")])
    domain = accounts.shop_domain(body.domain, state.settings.tenant_domain_suffixes)
    tenant, owner = await accounts.create_shop(
        state.auth,
        state.db.sessions,
        name=body.name,
        domain=domain,
        owner_email=body.owner_email,
        owner_password=body.owner_password,
    )
    return TenantCreated(**_out(tenant).model_dump(), owner_id=owner.id)


@router.get("/{tenant_id}", dependencies=[allow("shop:read")])
async def get_tenant(tenant_id: uuid.UUID, tenancy: Tenancy) -> TenantOut:
    """The calling shop itself; any other shop id is not found."""
    if tenant_id != tenancy.tenant_id:
        raise NotFound("No such shop.", code="tenant.not_found")
    tenant = await tenancy.session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("No such shop.", code="tenant.not_found")
    return _out(tenant)
