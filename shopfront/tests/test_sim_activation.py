"""SIM activation: once per key, charged once, through provider faults and killed workers."""

import asyncio
import secrets
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from fake_sim import FakeSimProvider, running_fake_sim
from hardened.db.tenancy import tenant_session
from hardened.db.transaction import run_transaction
from hardened.idempotency import scoped_key
from sf_storm import workers
from sf_support import (
    GENEROUS_LIMITS,
    Shop,
    ShopDatabase,
    client_for,
    fund,
    idem,
    make_settings,
    new_shop,
)
from shopfront.app import create_app
from shopfront.models import IDEMPOTENCY, LEDGER, SimActivation

pytestmark = pytest.mark.anyio

PRICE = 500


def _iccid() -> str:
    return "8981" + "".join(secrets.choice("0123456789") for _ in range(15))


async def _books(app: FastAPI, shop: Shop) -> dict[str, Any]:
    """The shop's wallet, its captures and releases, and the ledger's invariant findings."""
    state = app.state.shopfront

    async def read(session: Any) -> dict[str, Any]:
        wallet = await state.ledger.open_account(session, shop.tenant_id)
        balance = await state.ledger.balance(session, wallet)
        ops = LEDGER.operations
        kinds = dict(
            (
                await session.execute(
                    select(ops.c.kind, func.count())
                    .where(ops.c.account_id == wallet)
                    .group_by(ops.c.kind)
                )
            ).all()
        )
        return {
            "balance": balance.balance,
            "reserved": balance.reserved,
            "kinds": kinds,
            "problems": await state.ledger.check_invariants(session),
        }

    return await run_transaction(state.db.sessions, read)


def _app(shop_db: ShopDatabase, sim: FakeSimProvider, **overrides: Any) -> FastAPI:
    settings = make_settings(
        shop_db.url, migration_database_url=shop_db.owner_url, sim_provider_url=sim.url, **overrides
    )
    return create_app(settings)


def _activation(iccid: str) -> dict[str, str]:
    return {"iccid": iccid, "plan": "basic"}


async def test_activation_runs_once_and_replays(shop_db: ShopDatabase) -> None:
    """A retry with the key returns the same activation; the provider and the wallet saw one."""
    async with running_fake_sim() as sim:
        app = _app(shop_db, sim)
        async with client_for(app) as client:
            shop = await new_shop(client)
            await fund(app, shop, 1000)
            headers = {**shop.headers, "x-idempotency-key": str(uuid.uuid4())}
            iccid = _iccid()
            first = await client.post("/sims/activations", json=_activation(iccid), headers=headers)
            again = await client.post("/sims/activations", json=_activation(iccid), headers=headers)
            other = await client.post(
                "/sims/activations", json=_activation(_iccid()), headers=headers
            )
            books = await _books(app, shop)
        await app.state.shopfront.db.aclose()
    assert first.status_code == 201, first.text
    assert again.status_code == 201
    assert again.json() == first.json()
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency.key_reused"
    assert sim.by_iccid == {iccid: 1}
    assert books == {
        "balance": 1000 - PRICE,
        "reserved": 0,
        "kinds": {"top_up": 1, "reserve": 1, "capture": 1},
        "problems": [],
    }


async def test_provider_outage_is_503_and_the_retry_resumes(
    shop_db: ShopDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Provider 500 then timeout → 503 with the hold kept; the retry activates and charges once."""
    monkeypatch.setenv("SIM_QUEUE_TIMEOUT_MS", "500")
    async with running_fake_sim() as sim:
        app = _app(shop_db, sim)
        async with client_for(app) as client:
            shop = await new_shop(client)
            await fund(app, shop, 1000)
            headers = {**shop.headers, "idempotency-key": str(uuid.uuid4())}
            iccid = _iccid()
            sim.fail_next = 1
            failed = await client.post(
                "/sims/activations", json=_activation(iccid), headers=headers
            )
            held = await _books(app, shop)
            sim.hang = True
            timed_out = await client.post(
                "/sims/activations", json=_activation(iccid), headers=headers
            )
            sim.hang = False
            done = await client.post("/sims/activations", json=_activation(iccid), headers=headers)
            books = await _books(app, shop)
        await app.state.shopfront.db.aclose()
    for resp, code in ((failed, "sim.provider_unavailable"), (timed_out, "outbound.timeout")):
        assert resp.status_code == 503
        assert resp.json()["code"] == code
        assert int(resp.headers["retry-after"]) >= 1
    assert held["reserved"] == PRICE
    assert done.status_code == 201, done.text
    assert sim.by_iccid == {iccid: 1}
    assert books["kinds"] == {"top_up": 1, "reserve": 1, "capture": 1}
    assert (books["balance"], books["reserved"], books["problems"]) == (1000 - PRICE, 0, [])


async def test_refused_sim_releases_the_hold_and_charges_nothing(shop_db: ShopDatabase) -> None:
    """A provider refusal is a 422 every time with the key; the hold is released, not captured."""
    async with running_fake_sim() as sim:
        app = _app(shop_db, sim)
        sim.refuse = True
        try:
            async with client_for(app) as client:
                shop = await new_shop(client)
                await fund(app, shop, 1000)
                headers = {**shop.headers, "idempotency-key": str(uuid.uuid4())}
                body = _activation(_iccid())
                answers = [
                    await client.post("/sims/activations", json=body, headers=headers)
                    for _ in range(2)
                ]
                books = await _books(app, shop)
        finally:
            sim.refuse = False
        await app.state.shopfront.db.aclose()
    assert [a.status_code for a in answers] == [422, 422]
    assert {a.json()["code"] for a in answers} == {"sim.refused"}
    assert sim.calls == 1  # the refusal is stored: the retry does not ask again
    assert books["kinds"] == {"top_up": 1, "reserve": 1, "release": 1}
    assert (books["balance"], books["reserved"], books["problems"]) == (1000, 0, [])


def _env(db: ShopDatabase, sim_url: str) -> dict[str, str]:
    return {
        **GENEROUS_LIMITS,
        "ENVIRONMENT": "test",
        "DATABASE_URL": db.url,
        "AUTO_MIGRATE": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "SESSION_SECRET": secrets.token_urlsafe(48),
        "COOKIE_SECRET": secrets.token_urlsafe(48),
        "SIM_PROVIDER_URL": sim_url,
        "IDEMPOTENCY_LEASE": "1",
    }


async def _durable(
    app: FastAPI, shop: Shop, sim: FakeSimProvider, key: str, iccid: str
) -> dict[str, Any]:
    """What survived a kill: the key's recovery point, the provider, the row, the hold."""
    state = app.state.shopfront
    record = scoped_key(
        tenant=shop.tenant_id, principal=None, method="POST", route="/sims/activations", key=key
    )

    async def recovery_point(session: Any) -> str | None:
        t = IDEMPOTENCY.c
        row = (await session.execute(select(t.state, t.phase).where(t.key == record))).one()
        return "done" if row.state == "done" else row.phase

    async def rows(session: Any) -> int:
        query = select(func.count()).where(SimActivation.iccid == iccid)
        return int(await session.scalar(query))

    books = await _books(app, shop)
    tenant = uuid.UUID(shop.tenant_id)
    return {
        "recovery_point": await run_transaction(state.db.sessions, recovery_point),
        "provider_activations": sim.by_iccid.get(iccid, 0),
        "activation_rows": await run_transaction(
            lambda: tenant_session(state.db.sessions, tenant), rows
        ),
        "reserved": books["reserved"],
        "kinds": books["kinds"],
    }


def _expected(point: str, *, provider: int, rows: int, captured: bool = False) -> dict[str, Any]:
    kinds = {"top_up": 1, "reserve": 1, **({"capture": 1} if captured else {})}
    return {
        "recovery_point": point,
        "provider_activations": provider,
        "activation_rows": rows,
        "reserved": 0 if captured else PRICE,
        "kinds": kinds,
    }


# SIM_CRASH_AFTER=X: what is durable at the kill (X's effect and recovery point, nothing later).
CRASH_POINTS = {
    "reserve": _expected("reserve", provider=0, rows=0),
    "provider_answered": _expected("reserve", provider=1, rows=0),  # activated, not recorded
    "activate": _expected("activate", provider=1, rows=0),
    "record": _expected("record", provider=1, rows=1),
    "capture": _expected("done", provider=1, rows=1, captured=True),
}


@pytest.mark.parametrize("phase", list(CRASH_POINTS))
async def test_worker_killed_at_each_phase_activates_and_charges_once(
    pg_shop_db: ShopDatabase, phase: str
) -> None:
    """SIGKILL after each phase leaves exactly it durable; a retry activates and charges once."""
    local = create_app(make_settings(pg_shop_db.url))
    async with running_fake_sim() as sim:
        env = _env(pg_shop_db, sim.url)
        with workers(1, {**env, "SIM_CRASH_AFTER": phase}) as [url]:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                shop = await new_shop(client)
                await fund(local, shop, 1000)
                key = str(uuid.uuid4())
                headers = {**shop.headers, "idempotency-key": key}
                body = _activation(_iccid())
                with pytest.raises(httpx.TransportError):  # the worker died mid-request
                    await client.post("/sims/activations", json=body, headers=headers)
        at_kill = await _durable(local, shop, sim, key, body["iccid"])
        with workers(1, env) as [url]:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                answers = [await _until_done(client, body, headers)]
                answers.append(await client.post("/sims/activations", json=body, headers=headers))
        books = await _books(local, shop)
    await local.state.shopfront.db.aclose()
    assert at_kill == CRASH_POINTS[phase]
    assert [a.status_code for a in answers] == [201, 201], answers[0].text
    assert answers[0].json() == answers[1].json()
    assert sim.by_iccid == {body["iccid"]: 1}
    assert books["kinds"] == {"top_up": 1, "reserve": 1, "capture": 1}
    assert (books["balance"], books["reserved"], books["problems"]) == (1000 - PRICE, 0, [])


async def test_a_killed_workers_key_is_free_again_after_the_short_default_lease(
    pg_shop_db: ShopDatabase,
) -> None:
    """With the default 5 s lease, a SIGKILLed worker's key answers 409 for at most ~5 s."""
    local = create_app(make_settings(pg_shop_db.url))
    async with running_fake_sim() as sim:
        env = {k: v for k, v in _env(pg_shop_db, sim.url).items() if k != "IDEMPOTENCY_LEASE"}
        with workers(1, {**env, "SIM_CRASH_AFTER": "reserve"}) as [url]:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                shop = await new_shop(client)
                await fund(local, shop, 1000)
                headers = {**shop.headers, "idempotency-key": str(uuid.uuid4())}
                body = _activation(_iccid())
                with pytest.raises(httpx.TransportError):
                    await client.post("/sims/activations", json=body, headers=headers)
        with workers(1, env) as [url]:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                busy = []
                for _ in range(200):
                    done = await client.post("/sims/activations", json=body, headers=headers)
                    if done.status_code != 409:
                        break
                    busy.append(int(done.headers["retry-after"]))
                    await asyncio.sleep(0.2)
    await local.state.shopfront.db.aclose()
    assert done.status_code == 201, done.text
    assert all(1 <= wait <= 5 for wait in busy), busy
    assert sim.by_iccid == {body["iccid"]: 1}


async def test_requests_past_the_in_flight_cap_are_shed_at_once(pg_shop_db: ShopDatabase) -> None:
    """With MAX_IN_FLIGHT_REQUESTS=1 and one request held, the next is a 503 with Retry-After."""
    async with running_fake_sim() as sim:
        settings = make_settings(pg_shop_db.url, sim_provider_url=sim.url, max_in_flight_requests=1)
        app = create_app(settings)
        try:
            async with client_for(app) as client:
                shop = await new_shop(client)
                await fund(app, shop, 1000)
                sim.gate = asyncio.Event()
                held = asyncio.create_task(
                    client.post(
                        "/sims/activations", json=_activation(_iccid()), headers=idem(shop.headers)
                    )
                )
                await sim.arrived.wait()
                shed = await client.get("/catalog/items", headers=shop.headers)
                live = await client.get("/health/live")
                sim.gate.set()
                finished = await held
                after = await client.get("/catalog/items", headers=shop.headers)
        finally:
            await app.state.shopfront.db.aclose()
    assert (shed.status_code, shed.json()["code"]) == (503, "service.overloaded")
    assert int(shed.headers["retry-after"]) >= 1
    assert live.status_code == 200  # probes are never shed
    assert finished.status_code == 201, finished.text
    assert after.status_code == 200


async def _until_done(
    client: httpx.AsyncClient, body: dict[str, str], headers: dict[str, str]
) -> httpx.Response:
    """Retry while the dead worker's lease is live (409), as a client honouring Retry-After."""
    import anyio

    for _ in range(50):
        resp = await client.post("/sims/activations", json=body, headers=headers)
        if resp.status_code != 409:
            return resp
        await anyio.sleep(0.2)
    return resp


async def test_concurrent_activations_with_one_key_run_once(shop_db: ShopDatabase) -> None:
    """Five at once with one key while the provider is slow: one runs, the others get 409."""
    async with running_fake_sim() as sim:
        app = _app(shop_db, sim)
        async with client_for(app) as client:
            shop = await new_shop(client)
            await fund(app, shop, 1000)
            headers = {**shop.headers, "idempotency-key": str(uuid.uuid4())}
            body = _activation(_iccid())
            sim.delay = 0.5
            answers = await asyncio.gather(
                *(client.post("/sims/activations", json=body, headers=headers) for _ in range(5))
            )
            books = await _books(app, shop)
        await app.state.shopfront.db.aclose()
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409, 409]
    busy = [a for a in answers if a.status_code == 409]
    assert {a.json()["code"] for a in busy} == {"idempotency.in_flight"}
    assert all(int(a.headers["retry-after"]) >= 1 for a in busy)
    assert (sim.calls, sim.by_iccid) == (1, {body["iccid"]: 1})
    assert books["kinds"] == {"top_up": 1, "reserve": 1, "capture": 1}
