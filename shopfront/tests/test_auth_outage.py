"""Auth with the token store down: strict mode refuses with 503, non-strict falls back."""

import asyncio
import time

import httpx
import pytest
import structlog

from sf_storm import PrivateRedis
from sf_support import ShopDatabase, add_member, client_for, make_settings, new_shop
from shopfront.app import create_app

PASSWORD = "correct horse battery staple"


async def _eventually(call: object, status: int, seconds: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        resp: httpx.Response = await call()  # type: ignore[operator]
        if resp.status_code == status or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.1)


async def _setup(client: httpx.AsyncClient) -> dict[str, str]:
    shop = await new_shop(client)
    return await add_member(client, shop, "u@x.example", password=PASSWORD)


@pytest.mark.anyio
async def test_strict_mode_refuses_while_redis_is_down_and_recovers(
    pg_shop_db: ShopDatabase, private_redis: PrivateRedis
) -> None:
    """Strict: Redis stopped → login and refresh 503 with Retry-After; Redis back → works again."""
    app = create_app(
        make_settings(
            pg_shop_db.url, redis_url=private_redis.url, auth_require_redis_for_tokens=True
        )
    )
    async with client_for(app) as client:
        body = await _setup(client)
        session = (await client.post("/auth/login", json=body)).json()
        private_redis.stop()
        login = await client.post("/auth/login", json=body)
        refresh = await client.post(
            "/auth/refresh", json={"refresh_token": session["refresh_token"]}
        )
        # Login stops at its fail-closed rate limit, refresh at the token store: both 503.
        codes = {"ratelimit.store_unavailable", "auth.token_store_unavailable"}
        for resp in (login, refresh):
            assert resp.status_code == 503
            assert resp.json()["code"] in codes
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.headers["content-type"] == "application/problem+json"
        assert refresh.json()["code"] == "auth.token_store_unavailable"
        private_redis.start()  # same port, empty: earlier sessions are gone with the data
        back = await _eventually(lambda: client.post("/auth/login", json=body), 200)
        assert back.status_code == 200
    await app.state.shopfront.store.aclose()
    await app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_non_strict_mode_falls_back_visibly_and_recovers(
    pg_shop_db: ShopDatabase, private_redis: PrivateRedis
) -> None:
    """Non-strict: Redis down → logins served from worker memory, logged; Redis back → used."""
    app = create_app(make_settings(pg_shop_db.url, redis_url=private_redis.url))
    async with client_for(app) as client:
        body = await _setup(client)
        private_redis.stop()
        with structlog.testing.capture_logs() as logs:
            login = await client.post("/auth/login", json=body)
        assert login.status_code == 200
        assert any(e["event"] == "store.fallback" for e in logs)
        rotated = await client.post(
            "/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
        )
        assert rotated.status_code == 200
        ready = await client.get("/health/ready")
        assert ready.json()["status"] == "degraded"
        private_redis.start()
        with structlog.testing.capture_logs() as logs:
            back = await _eventually(lambda: client.post("/auth/login", json=body), 200)
        assert back.status_code == 200
        assert (await client.get("/health/ready")).json()["status"] == "ok"
    await app.state.shopfront.store.aclose()
    await app.state.shopfront.db.aclose()
