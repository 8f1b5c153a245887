"""The CRM's telecom catalog of each shop, read through `hardened.cache`.

Why cached: every storefront page reads plans, add-ons and availability, and
the CRM answers in hundreds of milliseconds; a shop's catalog changes rarely.
Each kind of read has its own tenant-scoped namespace with a typed value, so a
cached entry comes back as the models that went in, and one shop's entry can
never answer another's read. TTLs follow the data: plans, add-ons and
installations tier ``catalog`` (5 min), categories and metadata ``static``
(15 min), availability ``volatile`` (1 min); each stays servable as long again
while one refresh runs or while the CRM is down (the tier's grace). All
entries carry the tag ``crm``, so `Crm.invalidate` drops a shop's whole CRM
catalog at once.

Every call goes through the ``crm`` governor (attempt timeout, deadline,
retries of these idempotent GETs, breaker, shared cap, bulkhead). A refused
connection, a timeout, a non-2xx answer or a body that is not the
documented shape is `DependencyUnavailable` (503 ``crm.unavailable`` with
``Retry-After``), a refusal of the governor is its own 503 ``outbound.*``,
never a 500; without a CRM URL every read is 503 ``crm.not_configured``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from hardened.errors import DependencyUnavailable
from hardened.outbound import GovernedTransport, Governor, Token, UpstreamAuth

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable

    from hardened.cache import Cache, Namespace

__all__ = [
    "TAG",
    "AddOn",
    "Availability",
    "CatalogMetadata",
    "Category",
    "Crm",
    "Installation",
    "Plan",
]

_log = structlog.get_logger("shopfront.crm")
T = TypeVar("T")
TAG = "crm"
"""The tag every CRM entry carries: invalidating it drops a shop's whole CRM catalog."""


class _CrmModel(BaseModel):
    # The CRM may add fields; we keep only those we document.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Plan(_CrmModel):
    """A mobile or broadband plan the shop sells."""

    sku: str
    name: str
    monthly_price_cents: int
    data_gb: int | None = None
    contract_months: int


class AddOn(_CrmModel):
    """An option bookable on top of plans (``plans``: the SKUs it fits)."""

    sku: str
    name: str
    price_cents: int
    plans: list[str]


class Installation(_CrmModel):
    """An on-site installation service."""

    sku: str
    name: str
    price_cents: int
    duration_minutes: int


class Category(_CrmModel):
    """A catalog category (a tree: ``parent`` is another category's id)."""

    id: str
    name: str
    parent: str | None = None


class CatalogMetadata(_CrmModel):
    """What the CRM says about the shop's catalog as a whole."""

    shop_name: str
    currency: str
    catalog_version: str
    updated_at: datetime


class Availability(_CrmModel):
    """Whether a SKU can be ordered now, and how many are in stock."""

    sku: str
    available: bool
    stock: int


class Crm:
    """A small client over one pooled ``httpx.AsyncClient``, its reads cached per shop."""

    def __init__(
        self,
        base_url: str | None,
        cache: Cache,
        governor: Governor,
        *,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self._base_url = base_url
        base = base_url or "http://crm.invalid"
        # Token requests are calls to the CRM too: the same governor guards them.
        # httpx's timeouts a second past the attempt's, so the governor's (typed) fires first.
        timeout = httpx.Timeout(governor.config.lane.timeout + 1)
        self._token_client = httpx.AsyncClient(
            base_url=base, transport=GovernedTransport(governor), timeout=timeout
        )
        auth = None
        if credentials is not None:
            auth = UpstreamAuth("crm", self._token_fetcher(*credentials), governor.config.token)
        self.auth = auth
        self._client = httpx.AsyncClient(
            base_url=base,
            transport=GovernedTransport(governor),
            auth=auth,
            timeout=timeout,
        )
        self.plans_cache: Namespace[list[Plan]] = cache.namespace(
            "crm.plans", tier="catalog", type_=list[Plan]
        )
        self.addons_cache: Namespace[list[AddOn]] = cache.namespace(
            "crm.addons", tier="catalog", type_=list[AddOn]
        )
        self.installations_cache: Namespace[list[Installation]] = cache.namespace(
            "crm.installations", tier="catalog", type_=list[Installation]
        )
        self.categories_cache: Namespace[list[Category]] = cache.namespace(
            "crm.categories", tier="static", type_=list[Category]
        )
        self.metadata_cache: Namespace[CatalogMetadata] = cache.namespace(
            "crm.metadata", tier="static", type_=CatalogMetadata
        )
        self.availability_cache: Namespace[list[Availability]] = cache.namespace(
            "crm.availability", tier="volatile", type_=list[Availability]
        )
        self._adapters: dict[Any, TypeAdapter[Any]] = {}

    async def plans(self, shop: uuid.UUID) -> list[Plan]:
        """The shop's plans (cached 5 min by default)."""
        return await self._read(self.plans_cache, shop, "plans", list[Plan])

    async def addons(self, shop: uuid.UUID) -> list[AddOn]:
        """The shop's add-ons (cached 5 min by default)."""
        return await self._read(self.addons_cache, shop, "addons", list[AddOn])

    async def installations(self, shop: uuid.UUID) -> list[Installation]:
        """The shop's installation services (cached 5 min by default)."""
        return await self._read(self.installations_cache, shop, "installations", list[Installation])

    async def categories(self, shop: uuid.UUID) -> list[Category]:
        """The shop's categories (cached 15 min by default)."""
        return await self._read(self.categories_cache, shop, "categories", list[Category])

    async def metadata(self, shop: uuid.UUID) -> CatalogMetadata:
        """The shop's catalog metadata (cached 15 min by default)."""
        return await self._read(self.metadata_cache, shop, "metadata", CatalogMetadata)

    async def availability(self, shop: uuid.UUID) -> list[Availability]:
        """What the shop can sell right now (cached 1 min by default)."""
        return await self._read(self.availability_cache, shop, "availability", list[Availability])

    async def invalidate(self, shop: uuid.UUID) -> None:
        """Drop the shop's whole CRM catalog from the cache (the CRM told us it changed)."""
        await self.plans_cache.invalidate(TAG, tenant=shop)

    async def _read(self, namespace: Namespace[T], shop: uuid.UUID, what: str, type_: Any) -> T:
        if self._base_url is None:
            raise DependencyUnavailable(
                "The telecom catalog is not configured.", code="crm.not_configured", retry_after=60
            )

        async def load() -> T:
            return cast("T", await self._fetch(shop, what, type_))

        # The shop is the cache's tenant and the CRM's path alike: key and data always agree.
        return await namespace.get_or_load(what, load, tags=(TAG,), tenant=shop)

    async def _fetch(self, shop: uuid.UUID, what: str, type_: Any) -> Any:
        try:
            resp = await self._client.get(f"/shops/{shop}/{what}")
        except httpx.HTTPError as exc:
            _log.warning("crm.unreachable", what=what, error=type(exc).__name__)
            raise _unavailable() from None
        if resp.status_code != 200:
            _log.warning("crm.failed", what=what, status=resp.status_code)
            raise _unavailable()
        adapter = self._adapters.get(type_)
        if adapter is None:
            adapter = self._adapters[type_] = TypeAdapter(type_)
        try:
            return adapter.validate_json(resp.content)
        except ValidationError as exc:
            _log.warning("crm.bad_answer", what=what, errors=exc.error_count())
            raise _unavailable() from None

    def _token_fetcher(self, client_id: str, secret: str) -> Callable[[], Awaitable[Token]]:
        """The client-credentials grant (any failure becomes `UpstreamAuthFailed`)."""
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}

        async def fetch() -> Token:
            resp = await self._token_client.post("/oauth/token", data=form)
            resp.raise_for_status()
            body = resp.json()
            return Token(str(body["access_token"]), float(body.get("expires_in") or 0) or None)

        return fetch

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._token_client.aclose()


def _unavailable() -> DependencyUnavailable:
    return DependencyUnavailable(
        "The CRM did not answer; retry shortly.", code="crm.unavailable", retry_after=5
    )
