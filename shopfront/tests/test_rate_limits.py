"""Rate limits over HTTP: shared across worker processes, standard headers, per-account sign-in."""

import asyncio
import secrets
from collections import Counter

import httpx
import pytest

from hardened.errors import StoreUnavailable
from sf_storm import Call, PrivateRedis, storm, workers
from sf_support import (
    GENEROUS_LIMITS,
    Shop,
    ShopDatabase,
    add_member,
    client_for,
    make_settings,
    new_shop,
)
from shopfront.app import create_app

PASSWORD = "correct horse battery staple"


@pytest.mark.anyio
async def test_50_per_minute_holds_across_two_workers(
    pg_shop_db: ShopDatabase, redis_url: str
) -> None:
    """200 concurrent shop requests over two workers on a 50/min tenant policy: exactly 50 pass."""
    env = {
        **GENEROUS_LIMITS,
        "ENVIRONMENT": "test",
        "DATABASE_URL": pg_shop_db.url,
        "REDIS_URL": redis_url,
        "AUTO_MIGRATE": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "SESSION_SECRET": secrets.token_urlsafe(48),
        "COOKIE_SECRET": secrets.token_urlsafe(48),
        "RATE_LIMIT_TENANT": "53/60",  # three go to setting the shop up (key, customer, item)
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
    assert {r.body["code"] for r in refused} == {"ratelimit.quota_exceeded"}
    assert {r.body["violated_policy"] for r in refused} == {"tenant"}
    assert shop.headers["authorization"].split()[-1] not in str([r.body for r in refused])
    # Each worker had 16 of its 32 connections' requests in progress at once (server-side).
    assert result.overlap >= 16, f"the storm was not concurrent: {result.in_flight}"


@pytest.mark.anyio
async def test_login_is_limited_per_account_with_headers(shop_db: ShopDatabase) -> None:
    """The 6th login to one account in the window is a 429 with Retry-After and limit headers."""
    setup = create_app(make_settings(shop_db.url, migration_database_url=shop_db.owner_url))
    async with client_for(setup) as client:  # the owner's own sign-in is not counted below
        shop = await new_shop(client)
        body = await add_member(client, shop, "u@x.example", password=PASSWORD)
    await _close(setup)
    app = create_app(
        make_settings(
            shop_db.url, rate_limit_login="5/900", migration_database_url=shop_db.owner_url
        )
    )
    async with client_for(app) as client:
        answers = [await client.post("/auth/login", json=body) for _ in range(6)]
    await _close(app)
    assert Counter(r.status_code for r in answers) == {200: 5, 429: 1}
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 900
    assert '"login_account";q=5;w=900' in refused.headers["ratelimit-policy"]
    assert "u@x.example" not in refused.text


def _ratelimit(resp: httpx.Response) -> dict[str, int]:
    """``RateLimit`` header items as {policy: remaining}."""
    items = [item.strip() for item in resp.headers["ratelimit"].split(",")]
    return {i.split(";")[0].strip('"'): int(i.split(";r=")[1].split(";")[0]) for i in items}


async def _sign_in(client: httpx.AsyncClient, shop: Shop) -> dict[str, str]:
    body = await add_member(client, shop, "staff@x.example", password=PASSWORD)
    login = await client.post("/auth/login", json=body)
    assert login.status_code == 200, login.text
    return {"authorization": f"Bearer {login.json()['access_token']}"}


async def _close(app: object) -> None:
    state = app.state.shopfront  # type: ignore[attr-defined]
    await state.store.aclose()
    await state.db.aclose()


@pytest.mark.anyio
async def test_saturated_tenant_leaves_other_tenants_untouched(
    pg_shop_db: ShopDatabase, redis_url: str
) -> None:
    """Shop A exhausting its quota (concurrently, on Redis) costs shop B nothing."""
    settings = make_settings(pg_shop_db.url, redis_url=redis_url, rate_limit_tenant="8/60")
    app = create_app(settings)
    async with client_for(app) as client:
        a, b = await new_shop(client, "a"), await new_shop(client, "b")  # 3 requests each
        flood = await asyncio.gather(
            *(client.get("/customers", headers=a.headers) for _ in range(12))
        )
        b_reads = [await client.get("/customers", headers=b.headers) for _ in range(5)]
    await _close(app)
    assert Counter(r.status_code for r in flood) == {200: 5, 429: 7}
    assert [r.status_code for r in b_reads] == [200] * 5
    assert _ratelimit(b_reads[-1])["tenant"] == 0


@pytest.mark.anyio
async def test_catalog_reads_are_limited_per_caller_and_refusals_cost_nothing(
    pg_shop_db: ShopDatabase, redis_url: str
) -> None:
    """The 4th catalog read of a caller is refused by `catalog` alone; the shop quota is kept."""
    settings = make_settings(
        pg_shop_db.url, redis_url=redis_url, rate_limit_catalog="3/60", rate_limit_tenant="100/60"
    )
    app = create_app(settings)
    async with client_for(app) as client:
        shop = await new_shop(client)
        reads = [await client.get("/catalog/items", headers=shop.headers) for _ in range(4)]
        staff = await _sign_in(client, shop)
        other_caller = await client.get("/catalog/items", headers=staff)
        after = await client.get("/customers", headers=shop.headers)
    await _close(app)
    assert [r.status_code for r in reads] == [200, 200, 200, 429]
    assert _ratelimit(reads[2]) == {"catalog": 0, "tenant": 94}
    refused = reads[3]
    assert refused.json()["violated_policy"] == "catalog"
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other_caller.status_code == 200
    assert _ratelimit(other_caller)["catalog"] == 2
    # 3 setup + 3 reads + the invitation + the other caller's read + this one: the refused
    # read consumed nothing.
    assert _ratelimit(after) == {"tenant": 91}


@pytest.mark.anyio
async def test_bulk_uploads_have_their_own_limit(shop_db: ShopDatabase, redis_url: str) -> None:
    """The 3rd import within the hour is a 429 naming `uploads`, whatever the files hold."""
    settings = make_settings(
        shop_db.url,
        redis_url=redis_url,
        rate_limit_uploads="2/3600",
        migration_database_url=shop_db.owner_url,
    )
    app = create_app(settings)
    csv_headers = {"content-type": "text/csv"}
    async with client_for(app) as client:
        shop = await new_shop(client)
        imports = [
            await client.post(
                "/orders/import", content=b"", headers={**shop.headers, **csv_headers}
            )
            for _ in range(3)
        ]
    await _close(app)
    assert [r.status_code == 429 for r in imports] == [False, False, True]
    assert imports[-1].json()["violated_policy"] == "uploads"


@pytest.mark.anyio
async def test_redis_stopped_each_policy_follows_its_fail_mode(
    pg_shop_db: ShopDatabase, private_redis: PrivateRedis
) -> None:
    """Redis down: tenant routes (fail open) serve without limit headers, sign-in (closed) 503s."""
    settings = make_settings(
        pg_shop_db.url, redis_url=private_redis.url, auth_require_redis_for_tokens=True
    )
    app = create_app(settings)
    async with client_for(app) as client:
        shop = await new_shop(client)
        body = await add_member(client, shop, "u@x.example", password=PASSWORD)
        private_redis.stop()
        reads = [await client.get("/catalog/items", headers=shop.headers) for _ in range(3)]
        login = await client.post("/auth/login", json=body)
        with pytest.raises(StoreUnavailable):  # a paid send is never unmetered
            await app.state.shopfront.limits.sms.acquire(shop.tenant_id)
    await _close(app)
    assert [r.status_code for r in reads] == [200, 200, 200]
    assert all("ratelimit" not in r.headers for r in reads)
    assert login.status_code == 503
    assert login.json()["code"] == "ratelimit.store_unavailable"
    assert int(login.headers["retry-after"]) >= 1


@pytest.mark.anyio
async def test_fourth_password_reset_request_in_an_hour_is_refused(
    shop_db: ShopDatabase, redis_url: str
) -> None:
    """Reset requests: 3 per hour per account, the 4th a 429 that names no account."""
    settings = make_settings(
        shop_db.url,
        redis_url=redis_url,
        rate_limit_password_reset="3/3600",
        migration_database_url=shop_db.owner_url,
    )
    app = create_app(settings)
    async with client_for(app) as client:
        shop = await new_shop(client)
        body = {"shop": shop.domain, "email": "reset@x.example"}
        answers = [await client.post("/auth/password-reset", json=body) for _ in range(4)]
        other = await client.post(
            "/auth/password-reset", json={"shop": shop.domain, "email": "other@x.example"}
        )
    await _close(app)
    assert [r.status_code for r in answers] == [202, 202, 202, 429]
    assert answers[-1].json()["violated_policy"] == "password_reset"
    assert "reset@x.example" not in answers[-1].text
    assert other.status_code == 202
