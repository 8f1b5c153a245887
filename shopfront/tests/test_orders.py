import asyncio

import pytest
from httpx import AsyncClient

from sf_support import idem, new_shop, order_body


@pytest.mark.anyio
async def test_order_lifecycle_with_coupon_and_shipment(shop_client: AsyncClient) -> None:
    """An order redeems a coupon, is paid, shipped and delivered; each step bumps its version."""
    shop = await new_shop(shop_client, price=2000)
    h = shop.headers
    coupon = await shop_client.post(
        "/coupons", json={"code": "TEN", "percent_off": 10, "usage_limit": 5}, headers=h
    )
    assert coupon.status_code == 201
    created = await shop_client.post(
        "/orders", json=order_body(shop, coupon="TEN", quantity=2), headers=idem(h)
    )
    assert created.status_code == 201, created.text
    order = created.json()
    assert (order["subtotal_cents"], order["discount_cents"], order["total_cents"]) == (
        4000,
        400,
        3600,
    )
    assert (order["status"], order["version"]) == ("pending", 1)
    assert order["number"]
    paid = await shop_client.post(
        f"/orders/{order['id']}/transitions", json={"to": "paid", "version": 1}, headers=h
    )
    assert (paid.status_code, paid.json()["version"]) == (200, 2)
    shipped = await shop_client.post(
        f"/orders/{order['id']}/shipments", json={"carrier": "DHL", "version": 2}, headers=h
    )
    assert shipped.status_code == 201, shipped.text
    shipment = shipped.json()
    moved = await shop_client.patch(
        f"/shipments/{shipment['id']}", json={"status": "in_transit", "version": 1}, headers=h
    )
    assert (moved.status_code, moved.json()["version"]) == (200, 2)
    got = await shop_client.get(f"/orders/{order['id']}", headers=h)
    assert (got.json()["status"], got.json()["version"]) == ("shipped", 3)
    used = await shop_client.get(f"/coupons/{coupon.json()['id']}", headers=h)
    assert used.json()["used"] == 1


@pytest.mark.anyio
async def test_refusals_are_clear_problems(shop_client: AsyncClient) -> None:
    """Stale versions, bad transitions, coupon limits and oversized orders are clear problems."""
    shop = await new_shop(shop_client)
    h = shop.headers
    await shop_client.post(
        "/coupons",
        json={"code": "ONE", "percent_off": 5, "usage_limit": 3, "per_customer_limit": 1},
        headers=h,
    )
    order = (
        await shop_client.post("/orders", json=order_body(shop, coupon="ONE"), headers=idem(h))
    ).json()
    again = await shop_client.post("/orders", json=order_body(shop, coupon="ONE"), headers=idem(h))
    assert (again.status_code, again.json()["code"]) == (409, "coupon.customer_limit")
    stale = await shop_client.post(
        f"/orders/{order['id']}/transitions", json={"to": "paid", "version": 7}, headers=h
    )
    assert (stale.status_code, stale.json()["code"]) == (409, "order.version_conflict")
    assert stale.json()["type"].endswith("order.version_conflict")
    skip = await shop_client.post(
        f"/orders/{order['id']}/shipments", json={"carrier": "DHL", "version": 1}, headers=h
    )
    assert (skip.status_code, skip.json()["code"]) == (409, "order.invalid_transition")
    too_many = order_body(shop)
    too_many["lines"] = too_many["lines"] * 101
    big = await shop_client.post("/orders", json=too_many, headers=idem(h))
    assert (big.status_code, big.json()["errors"][0]["loc"]) == (422, ["body", "lines"])
    unknown = await shop_client.post(
        "/orders", json=order_body(shop, coupon="NOPE"), headers=idem(h)
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "coupon.not_found")
    bad_limit = await shop_client.get("/orders?limit=1000", headers=h)
    assert (bad_limit.status_code, bad_limit.json()["errors"][0]["loc"]) == (
        422,
        ["query", "limit"],
    )
    bad_cursor = await shop_client.get("/orders?cursor=%%%", headers=h)
    assert bad_cursor.status_code == 422


@pytest.mark.anyio
async def test_order_list_is_cursor_paginated(shop_client: AsyncClient) -> None:
    """Listing pages newest first without gaps or repeats, and filters by status."""
    shop = await new_shop(shop_client)
    ids = []
    for _ in range(5):
        created = await shop_client.post(
            "/orders", json=order_body(shop), headers=idem(shop.headers)
        )
        ids.append(created.json()["id"])
    seen, cursor = [], None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = (await shop_client.get(f"/orders{query}", headers=shop.headers)).json()
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 5
    paid = await shop_client.get("/orders?status=paid", headers=shop.headers)
    assert paid.json()["items"] == []


@pytest.mark.anyio
async def test_concurrent_transitions_from_one_version_one_wins(shop_client: AsyncClient) -> None:
    """Two transitions from one version: one 200, one 409, and no update is lost."""
    shop = await new_shop(shop_client)
    h = shop.headers
    for _ in range(10):
        order = (await shop_client.post("/orders", json=order_body(shop), headers=idem(h))).json()
        url = f"/orders/{order['id']}/transitions"
        first, second = await asyncio.gather(
            shop_client.post(url, json={"to": "paid", "version": 1}, headers=h),
            shop_client.post(url, json={"to": "cancelled", "version": 1}, headers=h),
        )
        statuses = sorted([first.status_code, second.status_code])
        assert statuses == [200, 409], (first.text, second.text)
        loser = first if first.status_code == 409 else second
        assert loser.json()["code"] == "order.version_conflict"
        final = (await shop_client.get(f"/orders/{order['id']}", headers=h)).json()
        winner = first if first.status_code == 200 else second
        assert (final["status"], final["version"]) == (winner.json()["status"], 2)
        history = (await shop_client.get(f"/orders/{order['id']}/history", headers=h)).json()
        steps = [(c["version"], c["from_status"], c["to_status"]) for c in history]
        assert steps == [(1, None, "pending"), (2, "pending", final["status"])]
