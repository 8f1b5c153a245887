"""shopfront's CRM reads through the ``crm`` governor, end to end over HTTP against a faulty CRM.

The CRM is `fake_crm` on a real socket (answers after 300 ms unless a test
says otherwise), the database PostgreSQL behind RLS, the stores in-process.
Governor settings come from ``CRM_*`` variables set before the app is built.
Every assertion counts effects: the fake's calls, tokens and peak
concurrency, the governor's counters, status codes — never timings. Reads
that must reach the CRM ask for distinct (shop, endpoint) pairs, since a
cached pair never does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pytest

from fake_crm import ENDPOINTS, FakeCrm, mark_of
from hardened.observability.metrics import fast_counter
from sf_support import Shop, client_for, make_settings, new_shop
from shopfront.app import create_app
from shopfront.cli import main
from shopfront.outbound import governor_checks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import httpx
    from fastapi import FastAPI

    from sf_support import ShopDatabase

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

PROBLEM = "application/problem+json"
RETRIES = fast_counter("outbound_retries_total", "Retries scheduled.", ("dependency",))
REJECTIONS = fast_counter(
    "outbound_rejections_total",
    "Calls refused or given up by the governor, by reason.",
    ("dependency", "reason"),
)
REAUTHS = fast_counter(
    "outbound_reauths_total",
    "Token fetches because the upstream rejected a token.",
    ("dependency",),
)


@contextlib.asynccontextmanager
async def serving(
    db: ShopDatabase, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app on ``db`` (governors from the environment as it is now) and its client."""
    settings = make_settings(
        db.url, migration_database_url=db.owner_url, max_in_flight_requests=0, **overrides
    )
    app = create_app(settings)
    try:
        async with client_for(app) as client:
            yield app, client
    finally:
        await app.state.shopfront.aclose()


def _reads(shops: list[Shop]) -> list[tuple[Shop, str]]:
    """Every (shop, endpoint) pair: each one a distinct, uncached CRM read."""
    return [(shop, kind) for shop in shops for kind in ENDPOINTS]


async def _get(client: httpx.AsyncClient, read: tuple[Shop, str]) -> httpx.Response:
    shop, kind = read
    return await client.get(f"/telecom/{kind}", headers=shop.headers)


def _refused(resp: httpx.Response, *codes: str) -> str:
    """Assert a problem 503 with one of ``codes`` and a Retry-After; its code."""
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == PROBLEM
    assert int(resp.headers["retry-after"]) >= 1
    code = str(resp.json()["code"])
    assert code in codes, resp.text
    return code


def _answered(resp: httpx.Response, shop: Shop) -> None:
    """Assert a 200 carrying ``shop``'s own catalog."""
    assert resp.status_code == 200, resp.text
    assert mark_of(shop.tenant_id) in resp.text


async def test_a_429_with_retry_after_is_retried_by_the_governor_and_the_read_succeeds(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CRM 429 with Retry-After: 1 once: one governor retry, 2 CRM calls, the read is 200."""
    monkeypatch.setenv("CRM_RETRY_ATTEMPTS", "3")
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (_, client):
        shop = await new_shop(client)
        fake_crm.status, fake_crm.retry_after, fake_crm.fail_times = 429, "1", 1
        retries = RETRIES.value("crm")
        read = await client.get("/telecom/plans", headers=shop.headers)
        again = await client.get("/telecom/plans", headers=shop.headers)
    _answered(read, shop)
    assert again.content == read.content  # cached: the recovered answer was stored
    assert fake_crm.fail_times == 0  # the 429 was sent
    assert fake_crm.calls == {"plans": 2}
    assert RETRIES.value("crm") == retries + 1


async def test_repeated_503s_open_the_breaker_which_stops_crm_calls_and_degrades_readiness(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After 4 failed CRM calls the breaker opens: reads are 503 breaker_open, the CRM is spared."""
    monkeypatch.setenv("CRM_BREAKER_MINIMUM_CALLS", "4")
    monkeypatch.setenv("CRM_RETRY_ATTEMPTS", "1")  # one CRM call per read, to count them
    monkeypatch.setenv("CRM_BREAKER_OPEN_MS", "600000")  # stays open for the whole test
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (_, client):
        reads = _reads([await new_shop(client, "alpha"), await new_shop(client, "beta")])
        healthy = await client.get("/health/ready")
        fake_crm.down = True
        failing = [await _get(client, read) for read in reads[:4]]
        calls_when_opened = fake_crm.total
        refused_before = REJECTIONS.value("crm", "breaker_open")
        refused = [await _get(client, read) for read in reads[4:-1]]
        degraded = await client.get("/health/ready")
        fake_crm.down = False  # the CRM is back, but the breaker stays open until its time is up
        still_open = await _get(client, reads[-1])
    assert (healthy.status_code, healthy.json()["status"]) == (200, "ok")
    assert healthy.json()["checks"]["outbound.crm"]["status"] == "ok"
    for resp in failing:
        _refused(resp, "crm.unavailable")
    assert calls_when_opened == 4
    for resp in [*refused, still_open]:
        _refused(resp, "outbound.breaker_open")
        assert int(resp.headers["retry-after"]) <= 600
    assert fake_crm.total == 4  # not one call while open
    assert REJECTIONS.value("crm", "breaker_open") == refused_before + len(refused) + 1
    assert (degraded.status_code, degraded.json()["status"]) == (200, "degraded")
    crm_check = degraded.json()["checks"]["outbound.crm"]
    assert (crm_check["status"], crm_check["critical"]) == ("failing", False)
    assert degraded.json()["checks"]["database"]["status"] == "ok"
    assert degraded.json()["checks"]["outbound.sim"]["status"] == "ok"


async def test_a_connection_reset_on_a_get_is_retried_and_is_a_503_when_every_attempt_resets(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset once: retried, 200 after 2 calls; reset every time: 3 calls, 503 crm.unavailable."""
    monkeypatch.setenv("CRM_RETRY_ATTEMPTS", "3")
    fake_crm.delay = 0.0
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (_, client):
        shop = await new_shop(client)
        fake_crm.reset, fake_crm.fail_times = True, 1
        once = await client.get("/telecom/plans", headers=shop.headers)
        fake_crm.fail_times = None  # every attempt from now on is reset
        always = await client.get("/telecom/addons", headers=shop.headers)
    _answered(once, shop)
    _refused(always, "crm.unavailable")
    assert always.headers["retry-after"] == "5"
    assert fake_crm.calls == {"plans": 2, "addons": 3}


async def test_a_hanging_crm_is_a_503_with_retry_after_never_a_500(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CRM that never answers, 300 ms per attempt: each read a timeout 503 with Retry-After."""
    monkeypatch.setenv("CRM_QUEUE_TIMEOUT_MS", "300")
    monkeypatch.setenv("CRM_RETRY_ATTEMPTS", "3")
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (app, client):
        shop = await new_shop(client)
        fake_crm.hang = True
        # Two reads, 6 attempts: below the breaker's 10 minimum calls, so each one times out.
        hung = [await _get(client, (shop, kind)) for kind in ENDPOINTS[:2]]
        breaker = app.state.shopfront.governors["crm"].breaker.state
    for resp in hung:
        _refused(resp, "outbound.timeout", "outbound.deadline_exceeded")
    assert breaker == "closed"
    for kind in ENDPOINTS[:2]:  # each read tried, at most once per attempt allowed
        assert 1 <= fake_crm.calls[kind] <= 3


async def test_an_expired_upstream_token_is_renewed_once_even_for_50_concurrent_reads(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One token for the first reads; each expiry costs exactly one re-auth; every read is 200."""
    # The CRM's cap (600 a minute, burst 30) would make some of ~100 calls at once outwait
    # their deadline. Off, so only the auth flow decides.
    monkeypatch.setenv("CRM_QUEUE_INTERVAL_CAP", "0")
    fake_crm.require_token = True
    credentials = {"crm_client_id": "shopfront", "crm_client_secret": "crm-secret"}
    async with serving(pg_shop_db, crm_url=fake_crm.url, **credentials) as (app, client):
        shops = [await new_shop(client, f"shop{n}") for n in range(9)]
        reads = _reads(shops)  # 54 distinct reads
        first, second = await _get(client, reads[0]), await _get(client, reads[1])
        tokens_at_start = fake_crm.tokens_issued
        fake_crm.expire_token()
        renewed = await _get(client, reads[2])
        tokens_after_expiry, rejected_after_expiry = fake_crm.tokens_issued, fake_crm.rejected
        reauths = REAUTHS.value("crm")
        fake_crm.expire_token()
        storm = await asyncio.gather(*(_get(client, read) for read in reads[3:53]))
        auth = app.state.shopfront.crm.auth
    for resp, (shop, _) in zip([first, second, renewed, *storm], reads, strict=False):
        _answered(resp, shop)
    assert len(storm) == 50
    assert tokens_at_start == 1  # two reads, one token
    assert (tokens_after_expiry, rejected_after_expiry) == (2, 1)  # one 401, one re-auth
    assert fake_crm.tokens_issued == 3  # 50 reads sent the expired token: one re-auth for all
    assert 1 <= fake_crm.rejected - rejected_after_expiry <= 50
    assert REAUTHS.value("crm") == reauths + 1
    assert (auth.fetches, auth.reauths) == (3, 2)
    assert sum(fake_crm.calls.values()) == 53 + fake_crm.rejected  # each read, plus each replay


async def test_the_bulkhead_lets_at_most_its_concurrency_reach_the_crm(
    pg_shop_db: ShopDatabase, fake_crm: FakeCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRM_QUEUE_CONCURRENCY=2: 10 concurrent uncached reads all 200, never 3 at the CRM at once."""
    # The cap spaces calls beyond its burst and would itself bound the overlap: off.
    monkeypatch.setenv("CRM_QUEUE_INTERVAL_CAP", "0")
    monkeypatch.setenv("CRM_QUEUE_CONCURRENCY", "2")
    fake_crm.delay = 0.3
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (_, client):
        reads = _reads([await new_shop(client, "alpha"), await new_shop(client, "beta")])
        replies = await asyncio.gather(*(_get(client, read) for read in reads[:10]))
        bounded = fake_crm.max_in_progress
    for resp, (shop, _) in zip(replies, reads, strict=False):
        _answered(resp, shop)
    assert fake_crm.total == 10
    assert bounded == 2  # the other eight queued, none refused
    # The control: the same reads through a wide bulkhead overlap at the CRM.
    monkeypatch.setenv("CRM_QUEUE_CONCURRENCY", "15")
    fake_crm.delay, fake_crm.max_in_progress = 1.0, 0
    async with serving(pg_shop_db, crm_url=fake_crm.url) as (_, client):
        replies = await asyncio.gather(*(_get(client, read) for read in reads[:10]))
    assert {resp.status_code for resp in replies} == {200}
    assert fake_crm.max_in_progress > 2


def test_governor_checks_show_the_effective_settings_or_name_the_bad_variable() -> None:
    """governor_checks: the crm line shows CRM_QUEUE_CONCURRENCY=7; "x" is one failing check."""
    checks = {check.name: check for check in governor_checks({"CRM_QUEUE_CONCURRENCY": "7"})}
    assert set(checks) == {
        "outbound crm",
        "outbound sim",
        "outbound billing",
        "outbound sms",
        "outbound kyc",
    }
    assert all(check.ok for check in checks.values())
    crm = checks["outbound crm"].detail.split()
    assert "CRM_QUEUE_CONCURRENCY=7" in crm
    assert "CRM_QUEUE_TIMEOUT_MS=2000" in crm  # shopfront's CRM default, not the library's
    assert "SIM_QUEUE_CONCURRENCY=15" in checks["outbound sim"].detail.split()
    bad = governor_checks({"CRM_QUEUE_CONCURRENCY": "x"})
    assert [(check.ok, "CRM_QUEUE_CONCURRENCY" in check.detail) for check in bad] == [(False, True)]


def test_shopfront_check_prints_the_outbound_settings_and_fails_on_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`shopfront check` prints CRM_QUEUE_CONCURRENCY=7 from the environment; "x" fails, named."""
    monkeypatch.chdir(tmp_path)  # development keeps its secrets in the working directory
    for name in ("DATABASE_URL", "REDIS_URL", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRM_QUEUE_CONCURRENCY", "7")
    main(["check"])
    shown = capsys.readouterr().out
    monkeypatch.setenv("CRM_QUEUE_CONCURRENCY", "x")
    assert main(["check"]) == 1
    failed = capsys.readouterr().out
    crm_line = next(line for line in shown.splitlines() if "outbound crm" in line)
    assert "CRM_QUEUE_CONCURRENCY=7" in crm_line.split()
    bad_line = next(line for line in failed.splitlines() if "outbound settings" in line)
    assert "FAIL" in bad_line
    assert "CRM_QUEUE_CONCURRENCY" in bad_line


@pytest.mark.parametrize(
    "value",
    [
        "x",
        "1.5",
        "0",
    ],
)
def test_an_app_built_with_a_bad_governor_variable_refuses_to_start_naming_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """CRM_QUEUE_CONCURRENCY not a count >= 1: create_app raises ValueError naming the variable."""
    monkeypatch.setenv("CRM_QUEUE_CONCURRENCY", value)
    with pytest.raises(ValueError, match="CRM_QUEUE_CONCURRENCY"):
        create_app(make_settings(sqlite_url))
