"""The shop's catalog: plans, add-ons, installations.

The list is read through the cache (namespace ``catalog.items``, per shop and
kind, tag ``catalog_items``) and answered with a strong ``ETag``. A create
invalidates the shop's lists inside its commit, after the COMMIT succeeded
(`invalidate_after_commit`), so the next read sees the new item and a refused
or rolled-back create invalidates nothing. Orders never read prices from
here: they read the rows themselves.
"""

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import TypeAdapter
from sqlalchemy import select

from hardened.cache import Cache, Namespace, invalidate_after_commit
from hardened.db.integrity import integrity_errors
from hardened.db.tenancy import tenant_session
from hardened.errors import Conflict, NotFound
from shopfront.etag import ETAG_RESPONSES, IfNoneMatch, json_with_etag
from shopfront.models import Base, CatalogItem
from shopfront.permissions import allow
from shopfront.schemas import CatalogItemIn, CatalogItemOut
from shopfront.tenant_auth import Tenancy

__all__ = ["ITEMS_TAG", "items_cache", "router"]

router = APIRouter(prefix="/catalog/items", tags=["catalog"])
MAX_CATALOG_PAGE = 500
ITEMS_TAG = "catalog_items"
_ITEMS = TypeAdapter(list[CatalogItemOut])


def items_cache(cache: Cache) -> Namespace[list[CatalogItemOut]]:
    """The namespace of the shops' catalog lists (built once, at start-up)."""
    return cache.namespace("catalog.items", tier="catalog", type_=list[CatalogItemOut])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[allow("catalog:write")])
async def create_item(body: CatalogItemIn, tenancy: Tenancy) -> CatalogItemOut:
    """Add a catalog item; SKUs are unique per shop."""
    item = CatalogItem(tenant_id=tenancy.tenant_id, **body.model_dump())
    async with tenancy.session.begin():
        tenancy.session.add(item)
        # Bumped by the commit itself, once it succeeded; a 409 rolls back and drops it.
        invalidate_after_commit(tenancy.session, tenancy.state.catalog_items, ITEMS_TAG)
        with integrity_errors(
            {"uq_catalog_items_tenant_id_sku": lambda: Conflict(code="catalog.sku_taken")},
            metadata=Base.metadata,
        ):
            await tenancy.session.flush()
    return CatalogItemOut.model_validate(item)


@router.get(
    "",
    response_model=list[CatalogItemOut],
    responses=ETAG_RESPONSES,
    dependencies=[allow("catalog:read")],
)
async def list_items(
    tenancy: Tenancy,
    kind: Annotated[Literal["plan", "addon", "installation"] | None, Query()] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The catalog, optionally one kind, by SKU (bounded: catalogs are small by design)."""
    sessions, tenant = tenancy.state.db.sessions, tenancy.tenant_id

    async def load() -> list[CatalogItemOut]:
        # A session of the load's own: the load is shared and may outlive this request.
        stmt = select(CatalogItem).order_by(CatalogItem.sku).limit(MAX_CATALOG_PAGE)
        if kind:
            stmt = stmt.where(CatalogItem.kind == kind)
        async with tenant_session(sessions, tenant) as session:
            return [CatalogItemOut.model_validate(i) for i in await session.scalars(stmt)]

    items = await tenancy.state.catalog_items.get_or_load(kind or "all", load, tags=(ITEMS_TAG,))
    return json_with_etag(_ITEMS.dump_json(items), if_none_match)


@router.get("/{item_id}", dependencies=[allow("catalog:read")])
async def get_item(item_id: uuid.UUID, tenancy: Tenancy) -> CatalogItemOut:
    """One catalog item of this shop."""
    item = await tenancy.session.get(CatalogItem, item_id)
    if item is None:
        raise NotFound("No such catalog item.", code="catalog.not_found")
    return CatalogItemOut.model_validate(item)
