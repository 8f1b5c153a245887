"""The shop's telecom catalog from the CRM: plans, add-ons, installations and the rest.

Each read goes through `shopfront.crm.Crm`, cached per shop, and answers with
a strong ``ETag`` (``If-None-Match`` → 304, no body). A CRM outage is a 503
with ``Retry-After`` unless a stale copy is still within its grace.
"""

from fastapi import APIRouter, Response
from pydantic import TypeAdapter

from shopfront.crm import AddOn, Availability, CatalogMetadata, Category, Installation, Plan
from shopfront.etag import ETAG_RESPONSES, UNAVAILABLE_RESPONSE, IfNoneMatch, json_with_etag
from shopfront.permissions import allow
from shopfront.tenant_auth import Tenancy

__all__ = ["router"]

router = APIRouter(prefix="/telecom", tags=["telecom"])
_RESPONSES = {**ETAG_RESPONSES, **UNAVAILABLE_RESPONSE}
_READ = [allow("catalog:read")]


_PLANS = TypeAdapter(list[Plan])
_ADDONS = TypeAdapter(list[AddOn])
_INSTALLATIONS = TypeAdapter(list[Installation])
_CATEGORIES = TypeAdapter(list[Category])
_METADATA = TypeAdapter(CatalogMetadata)
_AVAILABILITY = TypeAdapter(list[Availability])


@router.get("/plans", response_model=list[Plan], responses=_RESPONSES, dependencies=_READ)
async def plans(tenancy: Tenancy, if_none_match: IfNoneMatch = None) -> Response:
    """The shop's plans (the CRM's, cached 5 min by default)."""
    value = await tenancy.state.crm.plans(tenancy.tenant_id)
    return json_with_etag(_PLANS.dump_json(value), if_none_match)


@router.get("/addons", response_model=list[AddOn], responses=_RESPONSES, dependencies=_READ)
async def addons(tenancy: Tenancy, if_none_match: IfNoneMatch = None) -> Response:
    """The shop's add-ons (cached 5 min by default)."""
    value = await tenancy.state.crm.addons(tenancy.tenant_id)
    return json_with_etag(_ADDONS.dump_json(value), if_none_match)


@router.get(
    "/installations", response_model=list[Installation], responses=_RESPONSES, dependencies=_READ
)
async def installations(tenancy: Tenancy, if_none_match: IfNoneMatch = None) -> Response:
    """The shop's installation services (cached 5 min by default)."""
    value = await tenancy.state.crm.installations(tenancy.tenant_id)
    return json_with_etag(_INSTALLATIONS.dump_json(value), if_none_match)


@router.get("/categories", response_model=list[Category], responses=_RESPONSES, dependencies=_READ)
async def categories(tenancy: Tenancy, if_none_match: IfNoneMatch = None) -> Response:
    """The shop's catalog categories (cached 15 min by default)."""
    value = await tenancy.state.crm.categories(tenancy.tenant_id)
    return json_with_etag(_CATEGORIES.dump_json(value), if_none_match)


@router.get("/metadata", response_model=CatalogMetadata, responses=_RESPONSES, dependencies=_READ)
async def metadata(tenancy: Tenancy, if_none_match: IfNoneMatch = None) -> Response:
    """The shop's catalog metadata: name, currency, version (cached 15 min by default)."""
    value = await tenancy.state.crm.metadata(tenancy.tenant_id)
    return json_with_etag(_METADATA.dump_json(value), if_none_match)


@router.get(
    "/availability", response_model=list[Availability], responses=_RESPONSES, dependencies=_READ
)
async def availability(tenancy: Tenancy, if_none_match: IfNoneMatch = None) -> Response:
    """What the shop can sell now, per SKU (cached 1 min by default)."""
    value = await tenancy.state.crm.availability(tenancy.tenant_id)
    return json_with_etag(_AVAILABILITY.dump_json(value), if_none_match)
