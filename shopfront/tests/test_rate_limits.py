"""Rate limits over HTTP: shared across worker processes, standard headers, per-account sign-in."""

import secrets
from collections import Counter

import httpx
import pytest

from sf_storm import Call, storm, workers
from sf_support import ShopDatabase, client_for, make_settings, new_shop
from shopfront.app import create_app

PASSWORD = "correct horse battery staple"


@pytest.mark.anyio
async def test_50_per_minute_holds_across_two_workers(
    pg_shop_db: ShopDatabase, redis_url: str
) -> None:
    """200 concurrent shop requests over two workers on a 50/min tenant policy: exactly 50 pass."""
    env = {
        "ENVIRONMENT": "test",
        "DATABASE_URL": pg_shop_db.url,
        "REDIS_URL": redis_url,
        "AUTO_MIGRATE": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "SESSION_SECRET": secrets.token_urlsafe(48),
        "COOKIE_SECRET": secrets.token_urlsafe(48),
        "RATE_LIMIT_TENANT": "52/60",  # two requests go to setting the shop up
    }
    with workers(2, env) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            shop = await new_shop(client)
        calls = [
            Call("GET", f"{urls[i % 2]}/catalog/items", None, shop.headers) for i in range(200)
        ]
        result = await storm(calls, connections=64, warm=urls)
    assert result.statuses() == {200: 50, 429: 150}
    refused = [r for r in result.results if r.status == 429]
    assert {r.body["code"] for r in refused} == {"ratelimit.quota-exceeded"}
    assert {r.body["violated_policy"] for r in refused} == {"tenant"}
    assert shop.headers["authorization"].split()[-1] not in str([r.body for r in refused])
    assert result.max_in_flight >= 32, "the storm was not concurrent"


@pytest.mark.anyio
async def test_login_is_limited_per_account_with_headers(shop_db: ShopDatabase) -> None:
    """The 6th login to one account in the window is a 429 with Retry-After and limit headers."""
    app = create_app(
        make_settings(
            shop_db.url, rate_limit_login="5/900", migration_database_url=shop_db.owner_url
        )
    )
    async with client_for(app) as client:
        shop = await new_shop(client)
        body = {"shop": shop.domain, "email": "u@x.example", "password": PASSWORD}
        assert (await client.post("/auth/signup", json=body)).status_code == 201
        answers = [await client.post("/auth/login", json=body) for _ in range(6)]
    await app.state.shopfront.store.aclose()
    await app.state.shopfront.db.aclose()
    assert Counter(r.status_code for r in answers) == {200: 5, 429: 1}
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 900
    assert '"login_account";q=5;w=900' in refused.headers["ratelimit-policy"]
    assert "u@x.example" not in refused.text
