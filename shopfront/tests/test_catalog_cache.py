"""The catalog cache: CRM reads cut, per shop, invalidated after commit, open when Redis is down.

Real sockets wherever it matters: the CRM is `fake_crm` (each answer after
300 ms, counted per endpoint and shop), the database is PostgreSQL behind RLS,
the shared cache is Redis (REDIS_URL's database, or a private redis-server
where a test stops it). Counts are effects (CRM calls, cache lookups), never
timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from fake_crm import ENDPOINTS, FakeCrm, mark_of
from hardened.cache import invalidate_after_commit
from hardened.db import tenant_context
from hardened.db.tenancy import tenant_session
from hardened.observability.metrics import fast_counter
from sf_storm import Call, PrivateRedis, metric_total, storm, worker_env, workers
from sf_support import ShopDatabase, client_for, make_settings, new_shop
from shopfront.app import create_app
from shopfront.etag import etag_of
from shopfront.models import CatalogItem
from shopfront.routes.catalog import ITEMS_TAG
from shopfront.testing_probe import IN_FLIGHT_HEADER

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

PROBLEM = "application/problem+json"
LOOKUPS = fast_counter("cache_lookups_total", "Cache reads by result", ["namespace", "result"])
EVENTS = fast_counter("cache_events_total", "Cache events", ["namespace", "event"])
# How often a storefront asks for each part of the catalog (plans and stock most).
WEIGHTS = {
    "plans": 30,
    "addons": 15,
    "installations": 10,
    "categories": 10,
    "metadata": 5,
    "availability": 30,
}


@contextlib.asynccontextmanager
async def serving(
    db: ShopDatabase, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app on ``db`` and its client; its cache, CRM client, stores and engines closed after."""
    settings = make_settings(
        db.url, migration_database_url=db.owner_url, max_in_flight_requests=0, **overrides
    )
    app = create_app(settings)
    state = app.state.shopfront
    try:
        async with client_for(app) as client:
            yield app, client
    finally:
        await state.cache.aclose()
        await state.crm.aclose()
        await state.cache_store.aclose()
        await state.store.aclose()
        await state.db.aclose()


def _skus(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["sku"] for item in response.json()]


async def test_a_catalog_read_mix_over_two_workers_cuts_crm_calls_by_over_80_percent(
    pg_shop_db: ShopDatabase, redis_url: str, fake_crm: FakeCrm
) -> None:
    """600 reads by 2 shops over 2 workers in concurrent bursts: one CRM call per shop and kind."""
    env = worker_env(
        pg_shop_db.url,
        MIGRATION_DATABASE_URL=pg_shop_db.owner_url,
        REDIS_URL=redis_url,
        CRM_URL=fake_crm.url,
    )
    rng = random.Random(20261202)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    statuses: Counter[int] = Counter()
    reads, requested, peaks = 0, set(), []
    with workers(2, env) as urls:
        async with httpx.AsyncClient(base_url=urls[0], timeout=60) as client:
            shops = [await new_shop(client, "alpha"), await new_shop(client, "beta")]
        tags: dict[tuple[int, str], str] = {}
        for burst in range(5):
            calls, keys = [], []
            for i in range(120):
                shop, kind = rng.randrange(2), rng.choices(kinds, weights)[0]
                headers = dict(shops[shop].headers)
                if (shop, kind) in tags and rng.random() < 0.5:  # a client revalidating its copy
                    headers["if-none-match"] = tags[shop, kind]
                calls.append(Call("GET", f"{urls[i % 2]}/telecom/{kind}", None, headers))
                keys.append((shop, kind))
            result = await storm(calls, connections=32)
            peaks.append(result.overlap)
            for (shop, kind), r in zip(keys, result.results, strict=True):
                statuses[r.status] += 1
                requested.add((shops[shop].tenant_id, kind))
                if r.status == 200:
                    text = str(r.body)
                    assert mark_of(shops[shop].tenant_id) in text
                    assert mark_of(shops[1 - shop].tenant_id) not in text
            reads += len(calls)
            if burst == 0:  # the clients keep the tags they were given
                async with httpx.AsyncClient(timeout=60) as client:
                    for shop, kind in sorted(set(keys)):
                        got = await client.get(
                            f"{urls[shop]}/telecom/{kind}", headers=shops[shop].headers
                        )
                        tags[shop, kind] = got.headers["etag"]
                        reads += 1
        hits = await metric_total(urls, "hardened_cache_lookups_total", result="hit")
    crm_calls = fake_crm.total
    reduction = 100 * (1 - crm_calls / reads)
    print(f"\nCRM calls: {crm_calls} for {reads} reads (reduction {reduction:.1f} %)")  # noqa: T201
    print(f"statuses {dict(statuses)}, cache hits {hits:.0f}, in-flight peaks {peaks}")  # noqa: T201
    assert set(statuses) <= {200, 304}, statuses
    assert statuses[304] > 0
    # Cold, concurrent and over two processes, each shop's kind was loaded exactly once.
    assert fake_crm.calls_by_shop == Counter(dict.fromkeys(requested, 1))
    assert reduction >= 80
    assert peaks[0] >= 8, f"the cold burst was not concurrent: {peaks}"


async def test_200_cold_concurrent_reads_of_one_shops_plans_make_one_crm_call(
    pg_shop_db: ShopDatabase, redis_url: str, fake_crm: FakeCrm
) -> None:
    """200 concurrent first reads of one shop's plans: all 200 answered, the CRM called once."""
    async with serving(
        pg_shop_db, redis_url=redis_url, crm_url=fake_crm.url, test_count_in_flight=True
    ) as (_, client):
        shop = await new_shop(client)
        store_errors = EVENTS.value("crm.plans", "store_error")
        replies = await asyncio.gather(
            *(client.get("/telecom/plans", headers=shop.headers) for _ in range(200))
        )
    assert Counter(r.status_code for r in replies) == {200: 200}
    # A Redis reply slower than CACHE_REDIS_TIMEOUT opens the cache (more calls): say so.
    errors = EVENTS.value("crm.plans", "store_error") - store_errors
    assert fake_crm.calls == {"plans": 1}, f"{errors} cache store errors during the burst"
    assert len({r.content for r in replies}) == 1
    assert mark_of(shop.tenant_id) in replies[0].text
    peak = max(int(r.headers[IN_FLIGHT_HEADER]) for r in replies)
    assert peak >= 50, f"the burst was not concurrent: at most {peak} in flight"


async def test_shop_b_never_gets_shop_a_cached_catalog(
    pg_shop_db: ShopDatabase, redis_url: str, fake_crm: FakeCrm
) -> None:
    """With A's telecom catalog and item list cached, B reads only B's data; A's stay A's."""
    async with serving(pg_shop_db, redis_url=redis_url, crm_url=fake_crm.url) as (_, client):
        a = await new_shop(client, "alpha", price=1000)
        b = await new_shop(client, "beta", price=2000)
        paths = [f"/telecom/{kind}" for kind in ENDPOINTS]
        first_a = {p: await client.get(p, headers=a.headers) for p in [*paths, "/catalog/items"]}
        seen_b = {p: await client.get(p, headers=b.headers) for p in [*paths, "/catalog/items"]}
        again_a = {p: await client.get(p, headers=a.headers) for p in [*paths, "/catalog/items"]}
    for path in paths:
        mine, theirs = first_a[path], seen_b[path]
        assert (mine.status_code, theirs.status_code) == (200, 200)
        assert mark_of(a.tenant_id) in mine.text
        assert mark_of(a.tenant_id) not in theirs.text
        assert mark_of(b.tenant_id) in theirs.text
        assert mine.headers["etag"] != theirs.headers["etag"]
        assert again_a[path].content == mine.content
    for kind in ENDPOINTS:  # each shop's own load, once: B's read never hit A's entry
        assert fake_crm.calls_by_shop[a.tenant_id, kind] == 1
        assert fake_crm.calls_by_shop[b.tenant_id, kind] == 1
    items_a, items_b = first_a["/catalog/items"].json(), seen_b["/catalog/items"].json()
    assert [(i["id"], i["price_cents"]) for i in items_a] == [(a.item_id, 1000)]
    assert [(i["id"], i["price_cents"]) for i in items_b] == [(b.item_id, 2000)]
    assert again_a["/catalog/items"].json() == items_a


async def test_invalidating_a_shops_crm_tag_reloads_all_its_kinds_and_no_other_shops(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm
) -> None:
    """Crm.invalidate(A) (the CRM said A changed): A's six kinds load again, B's stay cached."""
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (app, client):
        shops = [await new_shop(client, "alpha"), await new_shop(client, "beta")]

        async def read_all() -> None:
            replies = await asyncio.gather(
                *(client.get(f"/telecom/{k}", headers=s.headers) for s in shops for k in ENDPOINTS)
            )
            assert {r.status_code for r in replies} == {200}

        await read_all()
        await app.state.shopfront.crm.invalidate(uuid.UUID(shops[0].tenant_id))
        await read_all()
    for kind in ENDPOINTS:
        assert fake_crm.calls_by_shop[shops[0].tenant_id, kind] == 2
        assert fake_crm.calls_by_shop[shops[1].tenant_id, kind] == 1


async def test_a_created_item_is_in_the_next_list_of_every_worker(
    pg_shop_db: ShopDatabase, redis_url: str
) -> None:
    """Two apps on one Redis with the list cached: an item created on one is listed by both."""
    async with (
        serving(pg_shop_db, redis_url=redis_url) as (_, one),
        serving(pg_shop_db, redis_url=redis_url) as (_, two),
    ):
        shop = await new_shop(one)
        h = shop.headers
        assert _skus(await one.get("/catalog/items", headers=h)) == ["PLAN-1"]
        assert _skus(await two.get("/catalog/items?kind=addon", headers=h)) == []
        hits = LOOKUPS.value("catalog.items", "hit")
        assert _skus(await two.get("/catalog/items", headers=h)) == ["PLAN-1"]
        assert LOOKUPS.value("catalog.items", "hit") == hits + 1  # served from the cache
        made = await one.post(
            "/catalog/items",
            json={"kind": "addon", "sku": "ADDON-1", "name": "Roaming", "price_cents": 500},
            headers=h,
        )
        assert made.status_code == 201, made.text
        assert _skus(await two.get("/catalog/items", headers=h)) == ["ADDON-1", "PLAN-1"]
        assert _skus(await two.get("/catalog/items?kind=addon", headers=h)) == ["ADDON-1"]
        assert _skus(await one.get("/catalog/items", headers=h)) == ["ADDON-1", "PLAN-1"]


async def test_a_refused_or_rolled_back_create_invalidates_nothing(
    pg_shop_db: ShopDatabase, redis_url: str
) -> None:
    """A 409 duplicate and a rolled-back insert leave the cached list a hit; a real create not."""
    async with serving(pg_shop_db, redis_url=redis_url) as (app, client):
        state = app.state.shopfront
        shop = await new_shop(client)
        h = shop.headers
        first = await client.get("/catalog/items", headers=h)
        misses = LOOKUPS.value("catalog.items", "miss")
        duplicate = await client.post(
            "/catalog/items",
            json={"kind": "plan", "sku": "PLAN-1", "name": "Again", "price_cents": 1},
            headers=h,
        )
        assert duplicate.status_code == 409
        assert duplicate.json()["code"] == "catalog.sku_taken"
        tenant = uuid.UUID(shop.tenant_id)
        with tenant_context(tenant), contextlib.suppress(LookupError):
            async with tenant_session(state.db.sessions, tenant) as session, session.begin():
                session.add(
                    CatalogItem(tenant_id=tenant, kind="plan", sku="GHOST", name="G", price_cents=1)
                )
                invalidate_after_commit(session, state.catalog_items, ITEMS_TAG)
                await session.flush()
                raise LookupError("abandoned: the transaction rolls back")
        again = await client.get("/catalog/items", headers=h)
        assert LOOKUPS.value("catalog.items", "miss") == misses  # still the cached list
        assert again.headers["etag"] == first.headers["etag"]
        assert _skus(again) == ["PLAN-1"]
        made = await client.post(
            "/catalog/items",
            json={"kind": "plan", "sku": "PLAN-2", "name": "Two", "price_cents": 2},
            headers=h,
        )
        assert made.status_code == 201, made.text
        assert _skus(await client.get("/catalog/items", headers=h)) == ["PLAN-1", "PLAN-2"]
        assert LOOKUPS.value("catalog.items", "miss") == misses + 1


async def test_etag_and_if_none_match_answer_304_and_follow_changes(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm
) -> None:
    """The ETag is the body's hash; sent back it is a bodiless 304; a changed list gets another."""
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (_, client):
        shop = await new_shop(client)
        h = shop.headers
        plans = await client.get("/telecom/plans", headers=h)
        tag = plans.headers["etag"]
        same = await client.get("/telecom/plans", headers={**h, "if-none-match": tag})
        weak = await client.get(
            "/telecom/plans", headers={**h, "if-none-match": f'"other", W/{tag}'}
        )
        other = await client.get("/telecom/plans", headers={**h, "if-none-match": '"other"'})
        listed = await client.get("/catalog/items", headers=h)
        unchanged = await client.get(
            "/catalog/items", headers={**h, "if-none-match": listed.headers["etag"]}
        )
        made = await client.post(
            "/catalog/items",
            json={"kind": "installation", "sku": "INST-1", "name": "Fibre", "price_cents": 9},
            headers=h,
        )
        assert made.status_code == 201, made.text
        changed = await client.get(
            "/catalog/items", headers={**h, "if-none-match": listed.headers["etag"]}
        )
    assert plans.status_code == 200
    assert tag == etag_of(plans.content)
    assert plans.headers["cache-control"] == "private, no-cache"
    for not_modified in (same, weak, unchanged):
        assert not_modified.status_code == 304
        assert not_modified.content == b""
    assert same.headers["etag"] == tag
    assert (other.status_code, other.content) == (200, plans.content)
    assert unchanged.headers["etag"] == listed.headers["etag"]
    assert changed.status_code == 200
    assert changed.headers["etag"] not in (listed.headers["etag"], tag)
    assert changed.headers["etag"] == etag_of(changed.content)
    assert [i["sku"] for i in changed.json()] == ["INST-1", "PLAN-1"]
    assert fake_crm.calls == {"plans": 1}


async def test_with_redis_down_the_catalog_comes_from_the_crm_then_from_the_cache_again(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, private_redis: PrivateRedis
) -> None:
    """Redis stopped: every read still 200 (from the CRM, counted bypass); restarted: hits again."""
    async with serving(pg_shop_db, redis_url=private_redis.url, crm_url=fake_crm.url) as (_, c):
        shop = await new_shop(c)
        h = shop.headers
        warm = await c.get("/telecom/plans", headers=h)
        assert (await c.get("/telecom/plans", headers=h)).content == warm.content
        assert fake_crm.calls["plans"] == 1
        bypassed = LOOKUPS.value("crm.plans", "bypass")
        private_redis.stop()
        down = [await c.get("/telecom/plans", headers=h) for _ in range(5)]
        assert [r.status_code for r in down] == [200] * 5
        assert {r.content for r in down} == {warm.content}
        assert fake_crm.calls["plans"] > 1  # fetched from the CRM: the cache is out of the way
        assert LOOKUPS.value("crm.plans", "bypass") > bypassed
        private_redis.start()
        for _ in range(100):  # the cache comes back after its outage cooldown (1 s)
            hits = LOOKUPS.value("crm.plans", "hit")
            assert (await c.get("/telecom/plans", headers=h)).status_code == 200
            if LOOKUPS.value("crm.plans", "hit") > hits:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("no cache hit after Redis restarted")
        calls = fake_crm.calls["plans"]
        after = [await c.get("/telecom/plans", headers=h) for _ in range(10)]
    assert {r.status_code for r in after} == {200}
    assert {r.content for r in after} == {warm.content}
    assert fake_crm.calls["plans"] == calls  # ten reads, no CRM call: hits again


async def test_crm_down_is_503_with_retry_after_and_a_stale_copy_is_served_in_grace(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRM failing or hanging: 503 + Retry-After, never 500; a stale copy is served in grace."""
    monkeypatch.setenv("CRM_QUEUE_TIMEOUT_MS", "500")
    monkeypatch.setenv("CRM_RETRY_ATTEMPTS", "1")  # one CRM call per load, to count them
    async with serving(pg_shop_db, crm_url=fake_crm.url, cache_ttl_catalog=2.0) as (app, client):
        cache = app.state.shopfront.cache
        shop = await new_shop(client)
        h = shop.headers
        fake_crm.down = True
        cold = await client.get("/telecom/plans", headers=h)
        fake_crm.down = False
        fresh = await client.get("/telecom/plans", headers=h)
        fake_crm.down = True
        await asyncio.sleep(2.2)  # past the 2 s TTL, inside the 2 s grace that follows
        stale_count = LOOKUPS.value("crm.plans", "stale")
        stale = await client.get("/telecom/plans", headers=h)
        assert LOOKUPS.value("crm.plans", "stale") == stale_count + 1
        await cache.wait_idle()  # the one background refresh ran, and failed
        fake_crm.down, fake_crm.hang = False, True
        hung = await client.get("/telecom/addons", headers=h)
    async with serving(pg_shop_db, crm_url=None) as (_, client):
        other = await new_shop(client)
        unconfigured = await client.get("/telecom/plans", headers=other.headers)
    for refused, code, wait in (
        (cold, "crm.unavailable", "5"),
        (hung, "outbound.timeout", "1"),
        (unconfigured, "crm.not_configured", "60"),
    ):
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == PROBLEM
        assert refused.headers["retry-after"] == wait
        assert refused.json()["code"] == code
        assert refused.json()["correlation_id"]
    assert fresh.status_code == 200
    assert (stale.status_code, stale.content) == (200, fresh.content)
    assert stale.headers["etag"] == fresh.headers["etag"]
    assert fake_crm.calls == {"plans": 3, "addons": 1}  # failed, loaded, refresh failed; hung
