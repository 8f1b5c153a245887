"""No input a client can send produces a 500: NUL, surrogates, big numbers, naive datetimes."""

import uuid

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from hardened.testing import assert_text_inputs_safe
from sf_support import ShopDatabase, bearer, client_for, idem, make_settings, new_shop
from shopfront.app import create_app
from shopfront.schemas import ImportRow


@pytest.fixture
async def pg_app(pg_shop_db: ShopDatabase) -> FastAPI:
    """An app on PostgreSQL behind RLS, in-process stores."""
    return create_app(make_settings(pg_shop_db.url, migration_database_url=pg_shop_db.owner_url))


def test_every_string_field_of_every_request_refuses_nul_and_surrogates(sqlite_url: str) -> None:
    """Each text input of every route (and the CSV row) refuses NUL and a lone surrogate."""
    report = assert_text_inputs_safe(
        create_app(make_settings(sqlite_url)),
        models=[ImportRow],
        samples={"ActivationIn.iccid": "8981100000000000001"},
        # Declared for the OpenAPI only: validate_key takes visible ASCII alone (400 otherwise),
        # and an HTTP header cannot carry NUL in the first place.
        ignore={"header.Idempotency-Key"},
    )
    assert len(report.checked) >= 40
    assert not report.unverified


@pytest.mark.anyio
async def test_hostile_values_are_422_problems_never_500(pg_app: FastAPI) -> None:
    """NUL in names, codes and notes, lone surrogates, 2**31 limits, naive datetimes: all 422."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            h = shop.headers
            attempts = {
                "tenant name": await client.post(
                    "/tenants",
                    json={
                        "name": "a\x00b",
                        "domain": "nul.myshopify.com",
                        "owner_email": "o@x.example",
                        "owner_password": "pw-pw-pw-pw",
                    },
                ),
                "login email": await client.post(
                    "/auth/login",
                    json={"shop": shop.domain, "email": "a\x00@x.example", "password": "p"},
                ),
                "customer name": await client.post(
                    "/customers", json={"email": "n@x.example", "name": "N\x00"}, headers=h
                ),
                "sku": await client.post(
                    "/catalog/items",
                    json={"kind": "plan", "sku": "S\x00", "name": "n", "price_cents": 1},
                    headers=h,
                ),
                "coupon code": await client.post(
                    "/coupons",
                    json={"code": "C\x00", "percent_off": 5, "usage_limit": 1},
                    headers=h,
                ),
                "per-customer limit 2**31": await client.post(
                    "/coupons",
                    json={
                        "code": "BIG",
                        "percent_off": 5,
                        "usage_limit": 1,
                        "per_customer_limit": 2**31,
                    },
                    headers=h,
                ),
                "naive datetime": await client.post(
                    "/coupons",
                    json={
                        "code": "NAIVE",
                        "percent_off": 5,
                        "usage_limit": 1,
                        "valid_from": "2026-01-01T00:00:00",
                    },
                    headers=h,
                ),
                "order note surrogate": await client.post(
                    "/orders",
                    content=(
                        f'{{"customer_id": "{shop.customer_id}", "lines": [{{"item_id": '
                        f'"{shop.item_id}", "quantity": 1}}], "note": "\\ud800"}}'
                    ).encode(),
                    headers={**idem(h), "content-type": "application/json"},
                ),
                "no order lines": await client.post(
                    "/orders", json={"customer_id": shop.customer_id, "lines": []}, headers=idem(h)
                ),
                "version 2**63": await client.post(
                    f"/orders/{uuid.uuid4()}/transitions",
                    json={"to": "paid", "version": 2**63},
                    headers=h,
                ),
                "csv cell": await client.post(
                    "/orders/import",
                    content=(
                        b"external_ref,customer_email,sku,quantity,note\r\n"
                        b"R1,c@shop.example,PLAN-1,1,a\x00b\r\n"
                    ),
                    headers={**h, "content-type": "text/csv"},
                ),
            }
    finally:
        await pg_app.state.shopfront.db.aclose()
    for what, response in attempts.items():
        assert response.status_code == 422, (what, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json", what
        assert response.json()["correlation_id"], what


@pytest.mark.anyio
async def test_order_totals_past_two_to_the_31_are_stored(pg_app: FastAPI) -> None:
    """Price x quantity over 30 lines passes 2**31: stored and read back exactly (BIGINT)."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client, price=100_000_000)
            lines = [{"item_id": shop.item_id, "quantity": 1000} for _ in range(30)]
            order = await client.post(
                "/orders",
                json={"customer_id": shop.customer_id, "lines": lines},
                headers=idem(shop.headers),
            )
            read = await client.get(f"/orders/{order.json()['id']}", headers=shop.headers)
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert order.status_code == 201, order.text
    assert read.json()["total_cents"] == 30 * 1000 * 100_000_000 > 2**31


@pytest.mark.anyio
async def test_a_signed_token_with_a_non_uuid_tenant_is_401(pg_app: FastAPI) -> None:
    """A validly signed access token whose tenant claim is not a UUID is refused, not a 500."""
    access = pg_app.state.shopfront.auth.access
    token = access.issue(
        subject=str(uuid.uuid4()), tenant="acme", session_id="s" * 22, extra={"role": "owner"}
    )
    try:
        async with client_for(pg_app) as client:
            response = await client.get("/orders", headers=bearer(token))
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert (response.status_code, response.json()["code"]) == (401, "auth.invalid_token")


@pytest.mark.anyio
async def test_head_is_served_on_get_routes(client: AsyncClient) -> None:
    """HEAD on a GET route answers like GET without a body; on a POST-only route it is 405."""
    get = await client.get("/health/live")
    head = await client.head("/health/live")
    post_only = await client.head("/auth/login")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["x-content-type-options"] == "nosniff"
    assert post_only.status_code == 405
