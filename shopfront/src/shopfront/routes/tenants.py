"""Tenants (shops): creation with domain validation, lookup by id."""

from __future__ import annotations

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


def _out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id, name=tenant.name, domain=tenant.domain, created_at=tenant.created_at
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_tenant(
    body: TenantIn, state: Annotated[AppState, Depends(app_state)]
) -> TenantOut:
    """Create a shop; the domain must be a hostname under a configured suffix."""
    try:
        domain = normalize_tenant_domain(body.domain, state.settings.tenant_domain_suffixes)
    except ValueError as exc:
        raise ValidationFailed(
            "The shop domain is not acceptable.",
            errors=[FieldError(("body", "domain"), f"domain {exc}", "value_error.domain")],
        ) from None
    tenant = Tenant(name=body.name.strip(), domain=domain)
    async with state.db.sessions() as session:
        session.add(tenant)
        try:
            await session.commit()
        except IntegrityError:
            raise Conflict(
                "A shop with this domain already exists.", code="tenant.domain_taken"
            ) from None
    return _out(tenant)


@router.get("/{tenant_id}")
async def get_tenant(
    tenant_id: uuid.UUID, state: Annotated[AppState, Depends(app_state)]
) -> TenantOut:
    """One shop by id."""
    async with state.db.sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("No such shop.", code="tenant.not_found")
    return _out(tenant)
