"""Guarantees under concurrency across two worker processes sharing one PostgreSQL database."""

from collections import Counter

import httpx
import psycopg
import pytest

from sf_storm import Call, retry_unavailable, storm, worker_env, workers
from sf_support import ShopDatabase, idem, new_shop, order_body


def _worker_env(db: ShopDatabase) -> dict[str, str]:
    return worker_env(db.url, MIGRATION_DATABASE_URL=db.owner_url)


def _owner_scalar(db: ShopDatabase, sql: str) -> object:
    url = db.owner_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.anyio
async def test_coupon_limit_50_holds_under_500_redemptions(pg_shop_db: ShopDatabase) -> None:
    """500 concurrent orders on a 50-use coupon over two workers: exactly 50 succeed, used = 50."""
    with workers(2, _worker_env(pg_shop_db)) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
            coupon = await client.post(
                "/coupons",
                json={"code": "STORM", "percent_off": 20, "usage_limit": 50},
                headers=shop.headers,
            )
            body = order_body(shop, coupon="STORM")
            calls = [
                Call("POST", f"{urls[i % 2]}/orders", body, idem(shop.headers)) for i in range(500)
            ]
            result = await storm(calls, connections=64, warm=urls)
            assert set(result.statuses()) <= {201, 409, 503}, result.statuses()
            result = await retry_unavailable(result)
            used = (
                await client.get(f"/coupons/{coupon.json()['id']}", headers=shop.headers)
            ).json()
    assert result.statuses() == {201: 50, 409: 450}
    codes = Counter(r.body["code"] for r in result.results if r.status == 409)
    assert codes == {"coupon.exhausted": 450}
    assert all(r.body["correlation_id"] for r in result.results if r.status == 409)
    assert used["used"] == 50
    assert (
        _owner_scalar(pg_shop_db, "SELECT count(*) FROM orders WHERE coupon_id IS NOT NULL") == 50
    )
    assert result.max_in_flight >= 32, "the storm was not concurrent"


@pytest.mark.anyio
async def test_1000_concurrent_orders_get_distinct_numbers(pg_shop_db: ShopDatabase) -> None:
    """1,000 concurrent orders over two workers: no 500; with 503s retried, 1,000 numbers."""
    # An order the service could not take at once (its connections busy) is a 503 with
    # Retry-After; retried with its key, as a client would, it is placed exactly once.
    with workers(2, _worker_env(pg_shop_db)) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
        body = order_body(shop)
        calls = [
            Call("POST", f"{urls[i % 2]}/orders", body, idem(shop.headers)) for i in range(1000)
        ]
        first = await storm(calls, connections=64, warm=urls)
        assert set(first.statuses()) <= {201, 503}, first.statuses()
        result = await retry_unavailable(first)
    assert result.statuses() == {201: 1000}
    numbers = {r.body["number"] for r in result.results}
    assert len(numbers) == 1000
    assert _owner_scalar(pg_shop_db, "SELECT count(DISTINCT number) FROM orders") == 1000
    assert result.max_in_flight >= 32, "the storm was not concurrent"


@pytest.mark.anyio
async def test_100_identical_orders_with_one_key_create_one(pg_shop_db: ShopDatabase) -> None:
    """100 concurrent retries of one order (one key) over two workers: one order, replays or 409."""
    with workers(2, _worker_env(pg_shop_db)) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
        headers = idem(shop.headers)
        body = order_body(shop)
        calls = [Call("POST", f"{urls[i % 2]}/orders", body, headers) for i in range(100)]
        result = await storm(calls, connections=100, warm=urls)
    statuses = result.statuses()
    assert set(statuses) <= {201, 409}
    created = [r.body for r in result.results if r.status == 201]
    assert created
    assert all(body == created[0] for body in created)
    refused = [r.body for r in result.results if r.status == 409]
    assert {b["code"] for b in refused} <= {"idempotency.in_flight"}
    orders = f"SELECT count(*) FROM orders WHERE tenant_id = '{shop.tenant_id}'"  # noqa: S608
    assert _owner_scalar(pg_shop_db, orders) == 1
    assert result.max_in_flight >= 32, "the storm was not concurrent"
