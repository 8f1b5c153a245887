"""Guarantees under concurrency across two worker processes sharing one PostgreSQL database.

Each storm proves it was concurrent where it matters, in the workers: each of
them had at least ``OVERLAP`` requests in progress at once (``X-Test-In-Flight``,
counted server-side; one request at a time would show 1).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest

from hardened.config import ConfigError
from sf_storm import Call, metric_total, retry_unavailable, storm, worker_env, workers
from sf_support import ShopDatabase, client_for, idem, make_settings, new_shop, order_body
from shopfront.services.orders import NUMBER_CONSTRAINT
from shopfront.testing_probe import IN_FLIGHT_HEADER

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from shopfront.settings import Settings

# Storms run real workers: on a busy machine start-up and the storm take minutes, not seconds.
pytestmark = pytest.mark.timeout(600)

# Storms use 64 connections over two workers (32 each, 50 for the one-key storm): a worker
# seeing half of its share at once is concurrent; one request at a time shows 1.
OVERLAP = 16
# 1,000 orders in a space of 20,000 numbers: about 25 collisions are expected (the chance of
# none is e^-25), while an order losing all 8 draws to collisions (each at most 1 in 20)
# has a chance under 1000 * 0.05**8 = 4e-8.
ORDER_NUMBER_SPACE = 20_000


def _worker_env(db: ShopDatabase, **extra: str) -> dict[str, str]:
    return worker_env(db.url, MIGRATION_DATABASE_URL=db.owner_url, **extra)


@pytest.mark.parametrize("probe", [{"test_count_in_flight": True}, {"order_number_space": 10}])
@pytest.mark.parametrize("environment", ["production", "development"])
def test_storm_probes_load_only_in_test_mode(environment: str, probe: dict[str, object]) -> None:
    """TEST_COUNT_IN_FLIGHT and ORDER_NUMBER_SPACE refuse to load outside ENVIRONMENT=test."""
    with pytest.raises(ConfigError, match="is a test probe: set ENVIRONMENT=test"):
        make_settings("sqlite+aiosqlite:///unused.db", environment=environment, **probe)


@pytest.mark.anyio
async def test_each_response_carries_the_requests_in_progress_at_its_entry(
    sqlite_url: str, app_factory: Callable[[Settings], FastAPI]
) -> None:
    """Five requests held together answer with in-flight counts 1..5; unasked, no header."""
    plain = app_factory(make_settings(sqlite_url))
    async with client_for(plain) as client:
        assert IN_FLIGHT_HEADER not in (await client.get("/health/live")).headers
    app = app_factory(make_settings(sqlite_url, test_count_in_flight=True))
    entered, everyone = 0, asyncio.Event()

    @app.get("/held")
    async def held() -> None:
        nonlocal entered
        entered += 1
        if entered == 5:
            everyone.set()
        await everyone.wait()

    async with client_for(app) as client:
        replies = await asyncio.gather(*(client.get("/held") for _ in range(5)))
        after = await client.get("/health/live")
    assert sorted(int(r.headers[IN_FLIGHT_HEADER]) for r in replies) == [1, 2, 3, 4, 5]
    assert after.headers[IN_FLIGHT_HEADER] == "1"


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
            result = await storm(calls, connections=64)
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
    assert result.overlap >= OVERLAP, f"the storm was not concurrent: {result.in_flight}"


@pytest.mark.anyio
async def test_1000_concurrent_orders_get_distinct_numbers(pg_shop_db: ShopDatabase) -> None:
    """1,000 concurrent orders whose numbers collide: redrawn, no 500, 1,000 distinct numbers."""
    # An order the service could not take at once (its connections busy) is a 503 with
    # Retry-After; retried with its key, as a client would, it is placed exactly once.
    env = _worker_env(pg_shop_db, ORDER_NUMBER_SPACE=str(ORDER_NUMBER_SPACE))
    retried = "hardened_db_unique_number_retries_total"
    with workers(2, env) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
        body = order_body(shop)
        calls = [
            Call("POST", f"{urls[i % 2]}/orders", body, idem(shop.headers)) for i in range(1000)
        ]
        first = await storm(calls, connections=64)
        assert set(first.statuses()) <= {201, 503}, first.statuses()
        result = await retry_unavailable(first)
        redrawn = await metric_total(urls, retried, constraint=NUMBER_CONSTRAINT)
    assert result.statuses() == {201: 1000}
    numbers = {r.body["number"] for r in result.results}
    assert len(numbers) == 1000
    assert all(0 <= int(n) < ORDER_NUMBER_SPACE for n in numbers)
    assert _owner_scalar(pg_shop_db, "SELECT count(DISTINCT number) FROM orders") == 1000
    assert redrawn > 0, "no number collided: the retry on a unique violation went untested"
    assert result.overlap >= OVERLAP, f"the storm was not concurrent: {result.in_flight}"


@pytest.mark.anyio
async def test_100_identical_orders_with_one_key_create_one(pg_shop_db: ShopDatabase) -> None:
    """100 concurrent sends of one order (one key) over two workers: one order, replays or 409."""
    with workers(2, _worker_env(pg_shop_db)) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
        headers = idem(shop.headers)
        body = order_body(shop)
        calls = [Call("POST", f"{urls[i % 2]}/orders", body, headers) for i in range(100)]
        first = await storm(calls, connections=100)
        assert set(first.statuses()) <= {201, 409, 503}, first.statuses()
        result = await retry_unavailable(first)
    assert set(result.statuses()) <= {201, 409}, result.statuses()
    created = [r.body for r in result.results if r.status == 201]
    assert created
    assert all(body == created[0] for body in created)
    refused = [r.body for r in result.results if r.status == 409]
    assert {b["code"] for b in refused} <= {"idempotency.in_flight"}
    orders = f"SELECT count(*) FROM orders WHERE tenant_id = '{shop.tenant_id}'"  # noqa: S608
    assert _owner_scalar(pg_shop_db, orders) == 1
    assert result.overlap >= OVERLAP, f"the storm was not concurrent: {result.in_flight}"
