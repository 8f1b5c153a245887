"""Shop-platform integrations (e.g. Shopify): the access token goes in once and never comes out."""

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from hardened.db.integrity import integrity_errors
from hardened.errors import Conflict, NotFound
from hardened.fields import text
from shopfront.models import Base, Integration
from shopfront.permissions import allow
from shopfront.tenant_auth import Tenancy

__all__ = ["router"]

router = APIRouter(prefix="/integrations", tags=["integrations"])


class IntegrationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Literal["shopify", "woocommerce"]
    shop_domain: Annotated[
        str,
        text(max_length=253, min_length=3, lower=True, pattern=r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?"),
    ]
    access_token: Annotated[str, text(max_length=512, min_length=8, pattern=r"[\x21-\x7e]+")]


class IntegrationOut(BaseModel):
    id: uuid.UUID
    platform: str
    shop_domain: str
    token_last4: str
    created_at: datetime


def _out(row: Integration) -> IntegrationOut:
    return IntegrationOut(
        id=row.id,
        platform=row.platform,
        shop_domain=row.shop_domain,
        token_last4=row.access_token[-4:],
        created_at=row.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[allow("integrations:manage")])
async def create_integration(body: IntegrationIn, tenancy: Tenancy) -> IntegrationOut:
    """Connect a platform store; the token is stored encrypted, one per platform and store."""
    row = Integration(
        id=uuid.uuid4(),
        platform=body.platform,
        shop_domain=body.shop_domain,
        access_token=body.access_token,
        created_by=tenancy.identity.principal or "",
    )
    async with tenancy.session.begin():
        tenancy.session.add(row)
        with integrity_errors(
            {
                "uq_integrations_tenant_id_platform_shop_domain": lambda: Conflict(
                    code="integration.exists"
                )
            },
            metadata=Base.metadata,
        ):
            await tenancy.session.flush()
    return _out(row)


@router.get("", dependencies=[allow("integrations:manage")])
async def list_integrations(tenancy: Tenancy) -> list[IntegrationOut]:
    """The shop's integrations (last four characters of each token only)."""
    async with tenancy.session.begin():
        rows = (
            await tenancy.session.scalars(select(Integration).order_by(Integration.created_at))
        ).all()
    return [_out(r) for r in rows]


@router.delete(
    "/{integration_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[allow("integrations:manage")],
)
async def delete_integration(integration_id: uuid.UUID, tenancy: Tenancy) -> None:
    """Disconnect a platform store; its token is deleted."""
    async with tenancy.session.begin():
        row = await tenancy.session.get(Integration, integration_id)
        if row is None:
            raise NotFound("No such integration.", code="integration.not_found")
        await tenancy.session.delete(row)
