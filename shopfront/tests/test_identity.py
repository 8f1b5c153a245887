"""The caller, worked out once per request: CSRF, idempotency scopes and session ends read it."""

import time
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from prometheus_client import REGISTRY
from sqlalchemy import event

from hardened.testing import app_routes
from sf_support import (
    ShopDatabase,
    add_member,
    bearer,
    client_for,
    idem,
    make_settings,
    new_shop,
    order_body,
)
from shopfront.app import create_app
from shopfront.migrate import upgrade_async
from shopfront.settings import Settings

PASSWORD = "correct horse battery staple"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@pytest.fixture
async def cookie_app(pg_shop_db: ShopDatabase) -> FastAPI:
    """An app on PostgreSQL whose cookies work over the test client's plain HTTP."""
    return create_app(
        make_settings(
            pg_shop_db.url, migration_database_url=pg_shop_db.owner_url, cookie_secure=False
        )
    )


def _valid_tokens() -> float:
    value = REGISTRY.get_sample_value("hardened_auth_access_tokens_total", {"outcome": "valid"})
    return value or 0.0


@pytest.mark.anyio
async def test_a_credential_is_verified_once_per_request(cookie_app: FastAPI) -> None:
    """Orders through every guard verify a user token once, and look an API key up once."""
    lookups: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM api_keys" in statement:
            lookups.append(statement)

    engine = cookie_app.state.shopfront.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        async with client_for(cookie_app) as client:
            shop = await new_shop(client)
            user = bearer(shop.owner_headers["authorization"].split()[1])
            before = _valid_tokens()
            for _ in range(5):
                placed = await client.post("/orders", json=order_body(shop), headers=idem(user))
                assert placed.status_code == 201, placed.text
            verified = _valid_tokens() - before
            lookups.clear()
            for _ in range(5):
                placed = await client.post(
                    "/orders", json=order_body(shop), headers=idem(shop.headers)
                )
                assert placed.status_code == 201, placed.text
    finally:
        event.remove(engine, "before_cursor_execute", count)
        await cookie_app.state.shopfront.db.aclose()
    assert verified == 5
    assert len(lookups) == 5


async def _cookie_login(client: AsyncClient, body: dict[str, str]) -> dict[str, str]:
    resp = await client.post("/auth/login", json={**body, "mode": "cookie"})
    assert resp.status_code == 200, resp.text
    return {name: resp.cookies[name] for name in ("session", "access_token", "csrf_token")}


@pytest.mark.anyio
async def test_every_unsafe_route_checks_csrf_with_any_credential_cookie_alone(
    cookie_app: FastAPI,
) -> None:
    """Each unsafe route, sent the access cookie alone or the session cookie alone: 403 csrf."""
    try:
        async with client_for(cookie_app) as client:
            shop = await new_shop(client)
            body = await add_member(
                client, shop, "cookie@x.example", role="admin", password=PASSWORD
            )
            cookies = await _cookie_login(client, body)
            client.cookies.clear()
            answers: dict[tuple[str, str, str], tuple[int, str]] = {}
            unsafe = [key for key in app_routes(cookie_app) if key[0] in UNSAFE]
            for method, template in unsafe:
                path = template.replace("{", "").replace("}", "")  # any value reaches the guard
                for alone in ("access_token", "session"):
                    resp = await client.request(
                        method,
                        path,
                        headers={**idem(), "cookie": f"{alone}={cookies[alone]}"},
                    )
                    code = resp.json().get("code", "") if resp.content else ""
                    answers[method, template, alone] = (resp.status_code, code)
            with_token = await client.post(
                "/customers",
                json={"email": "ok@x.example", "name": "OK"},
                headers={
                    "cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
                    "x-csrf-token": cookies["csrf_token"],
                },
            )
    finally:
        await cookie_app.state.shopfront.db.aclose()
    assert len(unsafe) >= 25
    wrong = {k: v for k, v in answers.items() if v != (403, "csrf.missing")}
    assert not wrong, wrong
    assert with_token.status_code == 201, with_token.text


@pytest.mark.anyio
async def test_cookie_users_do_not_share_an_idempotency_scope(cookie_app: FastAPI) -> None:
    """Two cookie-session members sending one Idempotency-Key each get their own order."""
    try:
        async with client_for(cookie_app) as client:
            shop = await new_shop(client)
            orders = []
            key = str(uuid.uuid4())
            for email in ("a@x.example", "b@x.example"):
                body = await add_member(client, shop, email, password=PASSWORD)
                cookies = await _cookie_login(client, body)
                client.cookies.clear()
                orders.append(
                    await client.post(
                        "/orders",
                        json=order_body(shop),
                        headers={
                            "idempotency-key": key,
                            "cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
                            "x-csrf-token": cookies["csrf_token"],
                        },
                    )
                )
    finally:
        await cookie_app.state.shopfront.db.aclose()
    assert [o.status_code for o in orders] == [201, 201]
    assert orders[0].json()["id"] != orders[1].json()["id"]
    assert "idempotent-replayed" not in orders[1].headers


@pytest.mark.anyio
async def test_logout_and_reuse_end_their_access_tokens_at_once(cookie_app: FastAPI) -> None:
    """After logout, or reuse of an old refresh token, that session's access token is 401."""
    try:
        async with client_for(cookie_app) as client:
            shop = await new_shop(client)
            body = await add_member(client, shop, "u@x.example", password=PASSWORD)
            first = (await client.post("/auth/login", json=body)).json()
            before = await client.get("/orders", headers=bearer(first["access_token"]))
            await client.post("/auth/logout", headers=bearer(first["access_token"]))
            after_logout = await client.get("/orders", headers=bearer(first["access_token"]))
            second = (await client.post("/auth/login", json=body)).json()
            rotated = (
                await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
            ).json()
            await client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
            await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
            after_reuse = await client.get("/orders", headers=bearer(rotated["access_token"]))
    finally:
        await cookie_app.state.shopfront.db.aclose()
    assert before.status_code == 200
    for response in (after_logout, after_reuse):
        assert (response.status_code, response.json()["code"]) == (401, "auth.token_revoked")


@pytest.mark.anyio
async def test_sign_out_everywhere_holds_whatever_the_app_clock_says(cookie_app: FastAPI) -> None:
    """A token stamped by an app clock 25 s ahead dies at logout-all; a new login then works."""
    auth = cookie_app.state.shopfront.auth
    try:
        async with client_for(cookie_app) as client:
            shop = await new_shop(client)
            body = await add_member(client, shop, "skew@x.example", password=PASSWORD)
            login = (await client.post("/auth/login", json=body)).json()
            claims = auth.access.verify(login["access_token"])
            ahead = auth.access.issue(
                subject=claims.sub,
                tenant=claims.tenant,
                session_id=claims.sid,
                extra={"role": "staff"},
                now=time.time() + 25,
            )
            valid = await client.get("/orders", headers=bearer(ahead))
            await client.post("/auth/logout-all", headers=bearer(login["access_token"]))
            after = await client.get("/orders", headers=bearer(ahead))
            again = (await client.post("/auth/login", json=body)).json()
            fresh = await client.get("/orders", headers=bearer(again["access_token"]))
    finally:
        await cookie_app.state.shopfront.db.aclose()
    assert valid.status_code == 200
    assert (after.status_code, after.json()["code"]) == (401, "auth.token_revoked")
    assert fresh.status_code == 200


@pytest.mark.anyio
async def test_embedded_default_replays_a_key_after_a_restart(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Development on SQLite: the retry of a key after a restart is a replay, not a 422."""
    monkeypatch.chdir(tmp_path)
    for name in ("JWT_SECRET", "SESSION_SECRET", "COOKIE_SECRET", "ENVIRONMENT", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'shopfront.db'}"
    await upgrade_async(url)
    answers = []
    headers: dict[str, str] = {}
    shop = None
    for _ in range(2):  # two processes' worth of settings, apps and stores
        app = create_app(Settings.load(database_url=url, allowed_hosts=("shop.test",)))
        try:
            async with client_for(app) as client:
                if shop is None:
                    shop = await new_shop(client)
                    headers = idem(shop.headers)
                answers.append(await client.post("/orders", json=order_body(shop), headers=headers))
        finally:
            await app.state.shopfront.db.aclose()
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[1].headers["idempotent-replayed"] == "true"
    assert answers[1].json() == answers[0].json()
    assert (tmp_path / ".shopfront-secrets").stat().st_mode & 0o777 == 0o600
