"""Helpers shared by shopfront tests (imported, unlike fixtures)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from hardened.db.tenancy import tenant_session
from hardened.db.transaction import run_transaction
from shopfront.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "GENEROUS_LIMITS",
    "Shop",
    "ShopDatabase",
    "client_for",
    "fund",
    "idem",
    "make_settings",
    "new_shop",
    "order_body",
]


# Generous limits (as environment variables) so storms of other guarantees are not cut.
GENEROUS_LIMITS = {
    f"RATE_LIMIT_{name}": "1000000/60"
    for name in (
        "TENANT",
        "LOGIN",
        "PASSWORD_RESET",
        "CATALOG",
        "ORDERS",
        "UPLOADS",
        "SMS",
        "SOCKET_MESSAGES",
    )
}


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: non-development (no debug), strong secrets, no Redis."""
    values: dict[str, Any] = {
        "environment": "test",
        "debug": False,
        "database_url": database_url,
        "redis_url": None,
        "jwt_secret": secrets.token_urlsafe(48),
        "session_secret": secrets.token_urlsafe(48),
        "cookie_secret": secrets.token_urlsafe(48),
        "allowed_hosts": ("shop.test", "*.shop.test", "127.0.0.1", "localhost"),
        "cors_origins": ("https://admin.shop.test",),
        "auto_migrate": False,
        "log_json": True,
        # Limit tests set their own.
        **{name.lower(): value for name, value in GENEROUS_LIMITS.items()},
    }
    values.update(overrides)
    return Settings.load(**values)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """An in-process client that renders app errors instead of raising them."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test")


@dataclass(frozen=True, slots=True)
class ShopDatabase:
    """A migrated database: the app connects with ``url`` (non-owner role on PostgreSQL)."""

    kind: str
    url: str
    owner_url: str


@dataclass(frozen=True, slots=True)
class Shop:
    """A shop created over HTTP: its id, API key headers and a few fixtures' ids."""

    tenant_id: str
    domain: str
    headers: dict[str, str]
    customer_id: str
    item_id: str
    price_cents: int


async def new_shop(client: httpx.AsyncClient, name: str = "shop", *, price: int = 1000) -> Shop:
    """Create a shop with one customer and one catalog item, all over HTTP."""
    domain = f"{name}-{secrets.token_hex(4)}.myshopify.com"
    created = await client.post("/tenants", json={"name": name, "domain": domain})
    assert created.status_code == 201, created.text
    body = created.json()
    headers = {"authorization": f"Bearer {body['api_key']}"}
    customer = await client.post(
        "/customers", json={"email": f"c@{name}.example", "name": "C"}, headers=headers
    )
    assert customer.status_code == 201, customer.text
    item = await client.post(
        "/catalog/items",
        json={"kind": "plan", "sku": "PLAN-1", "name": "Plan", "price_cents": price},
        headers=headers,
    )
    assert item.status_code == 201, item.text
    return Shop(
        body["id"], body["domain"], headers, customer.json()["id"], item.json()["id"], price
    )


def order_body(shop: Shop, *, coupon: str | None = None, quantity: int = 1) -> dict[str, Any]:
    """A one-line order for the shop's customer and item."""
    body: dict[str, Any] = {
        "customer_id": shop.customer_id,
        "lines": [{"item_id": shop.item_id, "quantity": quantity}],
    }
    if coupon:
        body["coupon_code"] = coupon
    return body


def idem(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus a fresh Idempotency-Key (money routes require one)."""
    return {**(headers or {}), "idempotency-key": str(uuid.uuid4())}


async def fund(app: FastAPI, shop: Shop, amount: int) -> None:
    """Top the shop's wallet up out of band (the payment webhook's job, later)."""
    state = app.state.shopfront
    tenant = uuid.UUID(shop.tenant_id)

    async def top_up(session: Any) -> None:
        wallet = await state.ledger.open_account(session, shop.tenant_id)
        await state.ledger.top_up(session, wallet, amount, f"test-funding:{uuid.uuid4()}")

    await run_transaction(lambda: tenant_session(state.db.sessions, tenant), top_up)
