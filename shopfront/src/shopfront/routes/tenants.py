"""Tenants (shops): creation with domain validation, lookup by id."""

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from hardened.domains import normalize_tenant_domain
from hardened.errors import Conflict, FieldError, NotFound, ValidationFailed
from shopfront.models import Tenant
from shopfront.state import AppState, app_state
from shopfront.tenant_auth import Tenancy, hash_api_key, new_api_key

__all__ = ["router"]

router = APIRouter(prefix="/tenants", tags=["tenants"])


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    domain: str = Field(min_length=1, max_length=300)


class TenantOut(BaseModel):
    id: uuid.UUID
    name: str
    domain: str
    created_at: datetime


class TenantCreated(TenantOut):
    api_key: str = Field(description="Shown once; store it, it cannot be read again.")


def _out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id, name=tenant.name, domain=tenant.domain, created_at=tenant.created_at
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_tenant(
    body: TenantIn, state: Annotated[AppState, Depends(app_state)]
) -> TenantCreated:
    """Create a shop; the domain must be a hostname under a configured suffix."""
    try:
        domain = normalize_tenant_domain(body.domain, state.settings.tenant_domain_suffixes)
    except ValueError as exc:
        raise ValidationFailed(
            "The shop domain is not acceptable.",
            errors=[FieldError(("body", "domain"), f"domain {exc}", "value_error.domain")],
        ) from None
    api_key = new_api_key()
    tenant = Tenant(name=body.name.strip(), domain=domain, api_key_hash=hash_api_key(api_key))
    async with state.db.sessions() as session:
        session.add(tenant)
        try:
            await session.commit()
        except IntegrityError:
            raise Conflict(
                "A shop with this domain already exists.", code="tenant.domain_taken"
            ) from None
    return TenantCreated(**_out(tenant).model_dump(), api_key=api_key)


@router.get("/{tenant_id}")
async def get_tenant(tenant_id: uuid.UUID, t: Tenancy) -> TenantOut:
    """The calling shop itself; any other shop id is not found."""
    if tenant_id != t.tenant_id:
        raise NotFound("No such shop.", code="tenant.not_found")
    async with t.state.db.sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("No such shop.", code="tenant.not_found")
    return _out(tenant)
