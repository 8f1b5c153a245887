"""Auth with the token store down: strict mode refuses with 503, non-strict falls back."""

import asyncio
import time

import httpx
import pytest
import structlog
from redis.asyncio import Redis

from hardened.stores import tagged
from sf_storm import PrivateRedis
from sf_support import ShopDatabase, add_member, bearer, client_for, make_settings, new_shop
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


async def _degraded_stores(client: httpx.AsyncClient) -> float:
    """What /metrics says: fallback stores in this process currently serving from memory."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("hardened_store_fallback_degraded "):
            return float(line.split()[1])
    return 0.0


async def _family_in_redis(redis_url: str, session: dict[str, str]) -> bool:
    """Whether the session's refresh family is stored in Redis itself (not in a worker)."""
    user_id, family_id, _secret = session["refresh_token"].split(".")
    assert family_id == session["session_id"]
    client = Redis.from_url(redis_url)
    try:
        return bool(await client.exists(tagged("auth", user_id, suffix=f"fam:{family_id}")))
    finally:
        await client.aclose()


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


@pytest.mark.anyio
async def test_non_strict_mode_writes_new_sessions_to_redis_once_it_is_back(
    pg_shop_db: ShopDatabase, private_redis: PrivateRedis
) -> None:
    """Non-strict: after Redis returns the fallback is left; a new session is in Redis, shared."""
    settings = make_settings(pg_shop_db.url, redis_url=private_redis.url)
    app, other = create_app(settings), create_app(settings)  # two workers sharing only Redis
    async with client_for(app) as client, client_for(other) as other_client:
        body = await _setup(client)
        healthy = await _degraded_stores(client)
        private_redis.stop()
        assert (await client.post("/auth/login", json=body)).status_code == 200  # fallback
        assert await _degraded_stores(client) == healthy + 1
        private_redis.start()
        with structlog.testing.capture_logs() as logs:
            login = await client.post("/auth/login", json=body)
        assert login.status_code == 200
        assert await _family_in_redis(private_redis.url, login.json())
        # Another worker, which never saw this one's memory, rotates the new session.
        rotated = await other_client.post(
            "/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
        )
        assert rotated.status_code == 200, rotated.text
        assert await _family_in_redis(private_redis.url, rotated.json())
        listed = await other_client.get(
            "/auth/sessions", headers=bearer(rotated.json()["access_token"])
        )
        assert listed.status_code == 200
        assert [s["session_id"] for s in listed.json()] == [login.json()["session_id"]]
        # And the worker says so: the fallback is left.
        assert "store.primary_restored" in [e["event"] for e in logs]
        assert await _degraded_stores(client) == healthy
    for each in (app, other):
        await each.state.shopfront.store.aclose()
        await each.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_non_strict_sessions_started_during_the_outage_end_when_redis_returns(
    pg_shop_db: ShopDatabase, private_redis: PrivateRedis
) -> None:
    """Non-strict: a session begun while Redis was down lived in one worker and ends on recovery."""
    app = create_app(make_settings(pg_shop_db.url, redis_url=private_redis.url))
    async with client_for(app) as client:
        body = await _setup(client)
        private_redis.stop()
        during = (await client.post("/auth/login", json=body)).json()
        access = bearer(during["access_token"])
        assert (await client.get("/auth/sessions", headers=access)).status_code == 200
        private_redis.start()
        assert not await _family_in_redis(private_redis.url, during)
        refresh = await client.post(
            "/auth/refresh", json={"refresh_token": during["refresh_token"]}
        )
        assert refresh.status_code == 401
        assert refresh.json()["code"] == "auth.invalid_refresh"
        listed = await client.get("/auth/sessions", headers=access)
        assert listed.status_code == 401
        assert listed.json()["code"] == "auth.token_revoked"
        again = await client.post("/auth/login", json=body)  # the remedy: sign in again
        assert again.status_code == 200
        assert await _family_in_redis(private_redis.url, again.json())
    await app.state.shopfront.store.aclose()
    await app.state.shopfront.db.aclose()
