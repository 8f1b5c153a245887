"""The database running out of connections or losing them: 503 with Retry-After, never a 500."""

import asyncio
import uuid

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from sf_storm import Call, retry_unavailable, storm, worker_env, workers
from sf_support import (
    ShopDatabase,
    client_for,
    idem,
    make_settings,
    new_shop,
    order_body,
)
from shopfront.app import create_app
from shopfront.migrate import DEFAULT_APP_ROLE

pytestmark = pytest.mark.anyio


def _env(db: ShopDatabase, **extra: str) -> dict[str, str]:
    return worker_env(db.url, **extra)


def _admin(db: ShopDatabase) -> str:
    return db.owner_url.replace("postgresql+psycopg://", "postgresql://")


def _orders(db: ShopDatabase, tenant: str) -> int:
    with psycopg.connect(_admin(db)) as conn:
        row = conn.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row is not None
    return int(row[0])


def _assert_no_5xx_but_503(statuses: dict[int, int]) -> None:
    assert set(statuses) <= {201, 503}, statuses


async def test_a_role_out_of_connections_answers_503_and_every_key_succeeds_later(
    pg_shop_db: ShopDatabase,
) -> None:
    """200 orders over two workers on a role capped at 8 connections: 201 or 503, then all 201."""
    env = _env(pg_shop_db, DB_POOL_SIZE="2", DB_MAX_OVERFLOW="8", DB_POOL_TIMEOUT="1")
    admin = _admin(pg_shop_db)
    with workers(2, env) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
        calls = [
            Call("POST", f"{urls[i % 2]}/orders", order_body(shop), idem(shop.headers))
            for i in range(200)
        ]
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {DEFAULT_APP_ROLE} CONNECTION LIMIT 8")
        try:
            first = await storm(calls, connections=64, warm=urls)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"ALTER ROLE {DEFAULT_APP_ROLE} CONNECTION LIMIT -1")
        _assert_no_5xx_but_503(first.statuses())
        print(f"\nconnection cap: {first.statuses()}")  # noqa: T201 - the histogram, for reports
        refused = [r for r in first.results if r.status == 503]
        assert refused, "the cap never bit: the test proved nothing"
        assert all(r.retry_after for r in refused)
        assert {r.body["code"] for r in refused} <= {
            "db.unavailable",
            "db.pool_exhausted",
            "service.overloaded",
            "store.unavailable",
        }
        final = await retry_unavailable(first)
    assert final.statuses() == {201: 200}
    assert len({r.body["id"] for r in final.results}) == 200
    assert _orders(pg_shop_db, shop.tenant_id) == 200


async def test_backends_terminated_under_load_answer_503_and_lose_no_order(
    pg_shop_db: ShopDatabase,
) -> None:
    """Killing the app's backends four times during a storm: no 500; retried, each order once."""
    env = _env(pg_shop_db, DB_POOL_SIZE="5", DB_MAX_OVERFLOW="5")
    admin = _admin(pg_shop_db)
    killed: list[int] = []

    def terminate() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (DEFAULT_APP_ROLE,),
            ).fetchall()
        killed.append(sum(1 for (ok,) in rows if ok))

    async def killer() -> None:
        for _ in range(4):
            await asyncio.sleep(0.3)  # spreads the faults over the storm; nothing is timed
            await asyncio.to_thread(terminate)

    with workers(2, env) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
        calls = [
            Call("POST", f"{urls[i % 2]}/orders", order_body(shop), idem(shop.headers))
            for i in range(300)
        ]
        faults = asyncio.create_task(killer())
        first = await storm(calls, connections=64, warm=urls)
        await faults
        _assert_no_5xx_but_503(first.statuses())
        print(f"\nterminations {killed}: {first.statuses()}")  # noqa: T201 - for reports
        final = await retry_unavailable(first)
    assert sum(killed) >= 4, killed
    assert final.statuses() == {201: 300}
    assert len({r.body["id"] for r in final.results}) == 300
    assert _orders(pg_shop_db, shop.tenant_id) == 300


async def test_a_crash_answers_a_500_with_the_usual_headers(pg_shop_db: ShopDatabase) -> None:
    """An unexpected exception is a 500 problem with security headers and the request id."""
    app: FastAPI = create_app(make_settings(pg_shop_db.url))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(str(uuid.uuid4()))

    try:
        async with client_for(app) as client:
            crashed = await client.get("/boom")
            after = await client.get("/health/live")
    finally:
        await app.state.shopfront.db.aclose()
    assert crashed.status_code == 500
    assert crashed.headers["content-type"] == "application/problem+json"
    assert crashed.headers["x-content-type-options"] == "nosniff"
    assert crashed.json()["correlation_id"] == crashed.headers["x-request-id"]
    assert "RuntimeError" not in crashed.text
    assert after.status_code == 200
