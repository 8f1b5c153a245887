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
    "OWNER_PASSWORD",
    "Shop",
    "ShopDatabase",
    "add_member",
    "api_key",
    "bearer",
    "client_for",
    "fund",
    "idem",
    "invite",
    "make_settings",
    "new_shop",
    "open_shop",
    "order_body",
    "sign_in",
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
        "SIGNUP",
    )
}
OWNER_PASSWORD = "correct horse battery staple"


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
    """A shop created over HTTP: its id, an admin API key's headers and a few fixtures' ids."""

    tenant_id: str
    domain: str
    headers: dict[str, str]
    customer_id: str
    item_id: str
    price_cents: int
    owner_email: str
    owner_headers: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    """``Authorization: Bearer <token>``."""
    return {"authorization": f"Bearer {token}"}


async def sign_in(
    client: httpx.AsyncClient, domain: str, email: str, password: str = OWNER_PASSWORD
) -> dict[str, str]:
    """Sign in (bearer mode); the login's JSON answer."""
    resp = await client.post(
        "/auth/login", json={"shop": domain, "email": email, "password": password}
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def open_shop(client: httpx.AsyncClient, name: str = "shop") -> tuple[str, str, str]:
    """Open a shop over HTTP: (tenant id, domain, owner email)."""
    domain = f"{name}-{secrets.token_hex(4)}.myshopify.com"
    email = f"owner@{name}.example"
    created = await client.post(
        "/tenants",
        json={
            "name": name,
            "domain": domain,
            "owner_email": email,
            "owner_password": OWNER_PASSWORD,
        },
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["domain"], email


async def api_key(client: httpx.AsyncClient, headers: dict[str, str], role: str = "admin") -> str:
    """A new API key of ``role``, made with ``headers`` (an owner's or an admin's)."""
    made = await client.post(
        "/api-keys", json={"name": f"{role} key", "role": role}, headers=headers
    )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


async def invite(client: httpx.AsyncClient, shop: Shop, email: str, role: str = "staff") -> str:
    """An invitation token for ``email`` with ``role`` (made by the shop's owner)."""
    made = await client.post(
        "/invitations", json={"email": email, "role": role}, headers=shop.owner_headers
    )
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


async def add_member(
    client: httpx.AsyncClient,
    shop: Shop,
    email: str,
    *,
    role: str = "staff",
    password: str = OWNER_PASSWORD,
) -> dict[str, str]:
    """Invite and sign up a member; the body that signs them in (``/auth/login``)."""
    token = await invite(client, shop, email, role)
    joined = await client.post(
        "/auth/signup", json={"shop": shop.domain, "invitation": token, "password": password}
    )
    assert joined.status_code == 201, joined.text
    return {"shop": shop.domain, "email": email, "password": password}


async def new_shop(client: httpx.AsyncClient, name: str = "shop", *, price: int = 1000) -> Shop:
    """A shop (owner signed in, an admin API key) with one customer and one catalog item."""
    tenant_id, domain, email = await open_shop(client, name)
    owner = bearer((await sign_in(client, domain, email))["access_token"])
    headers = bearer(await api_key(client, owner))
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
        tenant_id,
        domain,
        headers,
        customer.json()["id"],
        item.json()["id"],
        price,
        email,
        owner,
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
