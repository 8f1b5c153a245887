import asyncio
import uuid
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from sf_support import OWNER_PASSWORD, bearer, client_for, make_settings, sign_in
from shopfront.migrate import upgrade_async


def _shop(domain: str) -> dict[str, str]:
    return {
        "name": "Shop",
        "domain": domain,
        "owner_email": "owner@shop.example",
        "owner_password": OWNER_PASSWORD,
    }


@pytest.mark.anyio
async def test_create_normalises_and_reads_back(
    any_database_url: str, app_factory: Callable[..., FastAPI]
) -> None:
    """A shop is created with its normalised domain and owner, and reads itself back (both DBs)."""
    await upgrade_async(any_database_url)
    app = app_factory(make_settings(any_database_url))
    async with client_for(app) as client:
        created = await client.post("/tenants", json=_shop("Shop.MyShopify.com."))
        assert created.status_code == 201
        body = created.json()
        assert body["domain"] == "shop.myshopify.com"
        assert body.pop("owner_id")
        owner = await sign_in(client, body["domain"], "owner@shop.example")
        auth = bearer(owner["access_token"])
        fetched = await client.get(f"/tenants/{body['id']}", headers=auth)
        assert fetched.json() == body
        missing = await client.get(f"/tenants/{uuid.uuid4()}", headers=auth)
        assert (missing.status_code, missing.json()["code"]) == (404, "tenant.not_found")
        anonymous = await client.get(f"/tenants/{body['id']}")
        assert (anonymous.status_code, anonymous.json()["code"]) == (
            401,
            "auth.missing_credentials",
        )


@pytest.mark.anyio
@pytest.mark.parametrize(
    "domain", ["shop.evil.com", "https://shop.myshopify.com", "myshopify.com", "a_b.myshopify.com"]
)
async def test_invalid_domains_are_422(client: AsyncClient, domain: str) -> None:
    """Domains outside the suffixes or not bare hostnames are 422 with the field named."""
    resp = await client.post("/tenants", json=_shop(domain))
    assert resp.status_code == 422
    body = resp.json()
    assert body["errors"][0]["loc"] == ["body", "domain"]


@pytest.mark.anyio
async def test_unknown_fields_are_rejected(client: AsyncClient) -> None:
    """Unknown properties in the body are refused, not silently ignored."""
    resp = await client.post("/tenants", json={**_shop("a.myshopify.com"), "is_admin": True})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["loc"] == ["body", "is_admin"]


@pytest.mark.anyio
async def test_concurrent_duplicate_domains_create_one_shop(
    any_database_url: str, app_factory: Callable[..., FastAPI]
) -> None:
    """Concurrent creations of one domain, spelled differently: one 201, the rest 409, no 500."""
    await upgrade_async(any_database_url)
    app = app_factory(make_settings(any_database_url))
    spellings = ["dup.myshopify.com", "DUP.myshopify.com", "dup.myshopify.com."]
    async with client_for(app) as client:
        responses = await asyncio.gather(
            *(client.post("/tenants", json=_shop(spellings[i % 3])) for i in range(20))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"tenant.domain_taken"}
