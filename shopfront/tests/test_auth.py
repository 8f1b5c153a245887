import asyncio
import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import bcrypt
import psycopg
import pytest
import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI
from httpx import AsyncClient

from sf_support import Shop, ShopDatabase, add_member, client_for, invite, make_settings, new_shop

PASSWORD = "correct horse battery staple"


_SHOPS: dict[str, Shop] = {}


async def _user(client: AsyncClient, shop_domain: str, email: str = "u@x.example") -> None:
    await add_member(client, _SHOPS[shop_domain], email, password=PASSWORD)


async def _login(client: AsyncClient, shop: str, email: str = "u@x.example") -> dict[str, str]:
    resp = await client.post(
        "/auth/login", json={"shop": shop, "email": email, "password": PASSWORD}
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def _shop_domain(client: AsyncClient) -> str:
    shop = await new_shop(client)
    _SHOPS[shop.domain] = shop
    return shop.domain


@pytest.fixture
async def redis_app(pg_shop_db: ShopDatabase, redis_url: str) -> FastAPI:
    """An app on PostgreSQL (behind RLS) with Redis as the token store, strict mode on."""
    settings = make_settings(
        pg_shop_db.url,
        migration_database_url=pg_shop_db.owner_url,
        redis_url=redis_url,
        auth_require_redis_for_tokens=True,
        password_scheme="argon2id",
        cookie_secure=False,  # the test client speaks plain http
    )
    from shopfront.app import create_app

    return create_app(settings)


@pytest.mark.anyio
async def test_concurrent_refreshes_share_a_family_and_reuse_revokes_it(redis_app: FastAPI) -> None:
    """50 refreshes of one token in the grace window agree; a grandparent revokes the family."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        first = await _login(client, shop)
        t0 = first["refresh_token"]
        answers = await asyncio.gather(
            *(client.post("/auth/refresh", json={"refresh_token": t0}) for _ in range(50))
        )
        assert {r.status_code for r in answers} == {200}
        assert {r.json()["session_id"] for r in answers} == {first["session_id"]}
        assert len({r.json()["refresh_token"] for r in answers}) == 1
        t1 = answers[0].json()["refresh_token"]
        t2 = (await client.post("/auth/refresh", json={"refresh_token": t1})).json()[
            "refresh_token"
        ]
        with structlog.testing.capture_logs() as logs:
            reused = await client.post("/auth/refresh", json={"refresh_token": t0})
        assert (reused.status_code, reused.json()["code"]) == (401, "auth.token_reused")
        assert reused.headers["content-type"] == "application/problem+json"
        assert any(e["event"] == "auth.refresh_reuse" for e in logs)
        assert t0 not in json.dumps(logs)
        later = await client.post("/auth/refresh", json={"refresh_token": t2})
        assert (later.status_code, later.json()["code"]) == (401, "auth.token_reused")
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()


async def _commandstats(client: aioredis.Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {k: int(v["calls"]) for k, v in info.items()}


@pytest.mark.anyio
async def test_eleventh_login_evicts_and_logout_all_kills_every_token(
    redis_app: FastAPI, redis_url: str
) -> None:
    """The 11th login evicts the oldest session; logout-all fails every token, with no SCAN/KEYS."""
    probe = aioredis.Redis.from_url(redis_url)
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        before = await _commandstats(probe)
        logins = [await _login(client, shop) for _ in range(11)]
        oldest = await client.post(
            "/auth/refresh", json={"refresh_token": logins[0]["refresh_token"]}
        )
        assert (oldest.status_code, oldest.json()["code"]) == (401, "auth.invalid_refresh")
        auth = {"authorization": f"Bearer {logins[-1]['access_token']}"}
        listed = await client.get("/auth/sessions", headers=auth)
        assert len(listed.json()) == 10
        assert (await client.get("/orders", headers=auth)).status_code == 200
        assert (await client.post("/auth/logout-all", headers=auth)).status_code == 204
        after = await _commandstats(probe)
        for login in logins[1:]:
            refreshed = await client.post(
                "/auth/refresh", json={"refresh_token": login["refresh_token"]}
            )
            assert refreshed.status_code == 401
            used = await client.get(
                "/orders", headers={"authorization": f"Bearer {login['access_token']}"}
            )
            assert (used.status_code, used.json()["code"]) == (401, "auth.token_revoked")
    await probe.aclose()
    for command in ("cmdstat_scan", "cmdstat_keys"):
        assert after.get(command, 0) == before.get(command, 0), command
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NONE_HEADER = _b64(b'{"alg":"none","typ":"JWT"}')


ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")


@pytest.mark.anyio
async def test_sessions_list_times_as_iso_8601_utc(redis_app: FastAPI) -> None:
    """/auth/sessions gives created_at and last_used_at as ISO 8601 UTC strings, not epochs."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        first = await _login(client, shop)
        rotated = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        auth = {"authorization": f"Bearer {rotated.json()['access_token']}"}
        listed = await client.get("/auth/sessions", headers=auth)
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()
    assert listed.status_code == 200
    [session] = listed.json()
    assert session["current"] is True
    times = {name: session[name] for name in ("created_at", "last_used_at")}
    for value in times.values():
        assert isinstance(value, str)
        assert ISO_UTC.match(value), value
    created, used = (datetime.fromisoformat(times[n]) for n in ("created_at", "last_used_at"))
    assert created.utcoffset() == used.utcoffset() == timedelta(0)
    assert created <= used  # the refresh touched the session after it began
    assert abs(datetime.now(UTC) - created) < timedelta(hours=1)  # seconds, not ms or ns


@pytest.mark.anyio
async def test_forged_and_tampered_access_tokens_are_401_problems(redis_app: FastAPI) -> None:
    """Alg none, a tampered payload and garbage are refused with 401 problems on business routes."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        token = (await _login(client, shop))["access_token"]
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["tenant"] = str(uuid.uuid4())
        forged = {
            "none": f"{NONE_HEADER}.{payload}.",
            "tampered": f"{header}.{_b64(json.dumps(claims).encode())}.{signature}",
            "garbage": "not-a-token",
        }
        for name, bad in forged.items():
            resp = await client.get("/orders", headers={"authorization": f"Bearer {bad}"})
            assert resp.status_code == 401, name
            assert resp.json()["code"] == "auth.invalid_token", name
            assert bad not in resp.text
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_bcrypt_12_is_upgraded_to_argon2id_on_login(
    redis_app: FastAPI, pg_shop_db: ShopDatabase
) -> None:
    """A legacy bcrypt-12 hash becomes argon2id after a successful login."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=12)).decode()
        owner = pg_shop_db.owner_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(owner) as conn:
            conn.execute(
                "UPDATE users SET password_hash = %s WHERE email = 'u@x.example'", (legacy,)
            )
        await _login(client, shop)
        with psycopg.connect(owner) as conn:
            row = conn.execute(
                "SELECT password_hash FROM users WHERE email = 'u@x.example'"
            ).fetchone()
        assert row is not None
        assert str(row[0]).startswith("$argon2id$")
        await _login(client, shop)
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_long_password_is_a_validation_problem_and_unknown_login_is_generic(
    redis_app: FastAPI,
) -> None:
    """A 100-byte password is a 422 (not truncated); unknown and wrong logins look the same."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        token = await invite(client, _SHOPS[shop], "l@x.example")
        long = await client.post(
            "/auth/signup", json={"shop": shop, "invitation": token, "password": "p" * 100}
        )
        assert (long.status_code, long.json()["code"]) == (422, "auth.password_too_long")
        assert "p" * 100 not in long.text
        await _user(client, shop)
        wrong = await client.post(
            "/auth/login", json={"shop": shop, "email": "u@x.example", "password": "nope-nope"}
        )
        unknown = await client.post(
            "/auth/login", json={"shop": shop, "email": "who@x.example", "password": "nope-nope"}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json()["code"] == unknown.json()["code"] == "auth.invalid_credentials"
        assert wrong.json()["detail"] == unknown.json()["detail"]
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_password_reset_is_single_use_and_answers_alike(redis_app: FastAPI) -> None:
    """Reset requests answer alike for unknown accounts; a token works once and signs out all."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        session = await _login(client, shop)
        known = await client.post(
            "/auth/password-reset", json={"shop": shop, "email": "u@x.example"}
        )
        unknown = await client.post(
            "/auth/password-reset", json={"shop": shop, "email": "z@x.example"}
        )
        assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
        outbox = [m for m in redis_app.state.shopfront.mailer.sent if m.kind == "password_reset"]
        assert len(outbox) == 1
        token = outbox[-1].token
        body = {"shop": shop, "token": token, "new_password": "a brand new passphrase"}
        assert (await client.post("/auth/password-reset/confirm", json=body)).status_code == 204
        again = await client.post("/auth/password-reset/confirm", json=body)
        assert (again.status_code, again.json()["code"]) == (401, "auth.invalid_reset_token")
        old = await client.post("/auth/refresh", json={"refresh_token": session["refresh_token"]})
        assert old.status_code == 401
        relogin = await client.post(
            "/auth/login",
            json={"shop": shop, "email": "u@x.example", "password": "a brand new passphrase"},
        )
        assert relogin.status_code == 200
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_cookie_mode_requires_csrf_and_bearer_does_not(redis_app: FastAPI) -> None:
    """Cookie sessions need the CSRF header on unsafe requests; bearer calls do not."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        resp = await client.post(
            "/auth/login",
            json={"shop": shop, "email": "u@x.example", "password": PASSWORD, "mode": "cookie"},
        )
        assert resp.status_code == 200
        assert "refresh_token" not in resp.json() or resp.json()["refresh_token"] is None
        csrf = client.cookies.get("csrf_token")
        assert csrf
        refused = await client.post("/auth/logout")
        assert (refused.status_code, refused.json()["code"]) == (403, "csrf.missing")
        ok = await client.post("/auth/logout", headers={"x-csrf-token": csrf})
        assert ok.status_code == 204
        client.cookies.clear()
        bearer = await _login(client, shop)
        out = await client.post(
            "/auth/logout", headers={"authorization": f"Bearer {bearer['access_token']}"}
        )
        assert out.status_code == 204
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_maintenance_mode_is_503_with_message(pg_shop_db: ShopDatabase) -> None:
    """In maintenance mode auth routes answer 503 with the message and Retry-After."""
    from shopfront.app import create_app

    app = create_app(
        make_settings(
            pg_shop_db.url,
            auth_maintenance_mode=True,
            auth_maintenance_message="Back at noon.",
            auth_maintenance_retry_after=120,
        )
    )
    async with client_for(app) as client:
        resp = await client.post(
            "/auth/login", json={"shop": "a.myshopify.com", "email": "u@x.example", "password": "x"}
        )
    assert resp.status_code == 503
    assert resp.json()["code"] == "service.maintenance"
    assert resp.json()["detail"] == "Back at noon."
    assert resp.headers["retry-after"] == "120"
    await app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_password_change_signs_out_everywhere(redis_app: FastAPI) -> None:
    """Changing the password needs the current one and ends every session; the new one works."""
    async with client_for(redis_app) as client:
        shop = await _shop_domain(client)
        await _user(client, shop)
        first, second = await _login(client, shop), await _login(client, shop)
        auth = {"authorization": f"Bearer {first['access_token']}"}
        wrong = await client.post(
            "/auth/password",
            json={"current_password": "not it at all", "new_password": "another long passphrase"},
            headers=auth,
        )
        assert (wrong.status_code, wrong.json()["code"]) == (401, "auth.invalid_credentials")
        changed = await client.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "another long passphrase"},
            headers=auth,
        )
        assert changed.status_code == 204
        for session in (first, second):
            gone = await client.post(
                "/auth/refresh", json={"refresh_token": session["refresh_token"]}
            )
            assert gone.status_code == 401
        assert (await client.get("/orders", headers=auth)).status_code == 401
        body = {"shop": shop, "email": "u@x.example", "password": "another long passphrase"}
        assert (await client.post("/auth/login", json=body)).status_code == 200
    await redis_app.state.shopfront.store.aclose()
    await redis_app.state.shopfront.db.aclose()
