"""The shop's catalog: plans, add-ons, installations."""

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from sqlalchemy import select

from hardened.db.integrity import integrity_errors
from hardened.errors import Conflict, NotFound
from shopfront.models import Base, CatalogItem
from shopfront.permissions import allow
from shopfront.schemas import CatalogItemIn, CatalogItemOut
from shopfront.tenant_auth import Tenancy

__all__ = ["router"]

router = APIRouter(prefix="/catalog/items", tags=["catalog"])
MAX_CATALOG_PAGE = 500


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[allow("catalog:write")])
async def create_item(body: CatalogItemIn, tenancy: Tenancy) -> CatalogItemOut:
    """Add a catalog item; SKUs are unique per shop."""
    item = CatalogItem(tenant_id=tenancy.tenant_id, **body.model_dump())
    async with tenancy.session.begin():
        tenancy.session.add(item)
        with integrity_errors(
            {"uq_catalog_items_tenant_id_sku": lambda: Conflict(code="catalog.sku_taken")},
            metadata=Base.metadata,
        ):
            await tenancy.session.flush()
    return CatalogItemOut.model_validate(item)


@router.get("", dependencies=[allow("catalog:read")])
async def list_items(
    tenancy: Tenancy,
    kind: Annotated[Literal["plan", "addon", "installation"] | None, Query()] = None,
) -> list[CatalogItemOut]:
    """The catalog, optionally one kind, by SKU (bounded: catalogs are small by design)."""
    stmt = select(CatalogItem).order_by(CatalogItem.sku).limit(MAX_CATALOG_PAGE)
    if kind:
        stmt = stmt.where(CatalogItem.kind == kind)
    return [CatalogItemOut.model_validate(i) for i in await tenancy.session.scalars(stmt)]


@router.get("/{item_id}", dependencies=[allow("catalog:read")])
async def get_item(item_id: uuid.UUID, tenancy: Tenancy) -> CatalogItemOut:
    """One catalog item of this shop."""
    item = await tenancy.session.get(CatalogItem, item_id)
    if item is None:
        raise NotFound("No such catalog item.", code="catalog.not_found")
    return CatalogItemOut.model_validate(item)
