"""Wallet routes over HTTP: Idempotency-Key semantics on every write, and honest books."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from sf_support import Shop, ShopDatabase, client_for, fund, make_settings, new_shop
from shopfront.app import create_app
from shopfront.housekeeping import sweep

pytestmark = pytest.mark.anyio


@pytest.fixture
async def wallet_app(shop_db: ShopDatabase) -> FastAPI:
    """An app on the parametrized database (SQLite and PostgreSQL)."""
    return create_app(make_settings(shop_db.url, migration_database_url=shop_db.owner_url))


async def _funded(client: AsyncClient, app: FastAPI, amount: int = 100) -> Shop:
    shop = await new_shop(client)
    await fund(app, shop, amount)
    return shop


def _key(shop: Shop, key: str | None = None) -> dict[str, str]:
    return {**shop.headers, "idempotency-key": key or str(uuid.uuid4())}


async def test_reserve_capture_refund_release_keep_the_books(wallet_app: FastAPI) -> None:
    """Reserve 40, capture 30 (10 back), refund 5, reserve and release 20: balance 75."""
    async with client_for(wallet_app) as client:
        shop = await _funded(client, wallet_app)
        hold = await client.post("/wallet/reservations", json={"amount": 40}, headers=_key(shop))
        assert hold.status_code == 201, hold.text
        rid = hold.json()["id"]
        assert (await client.get("/wallet", headers=shop.headers)).json() == {
            "balance": 100,
            "reserved": 40,
            "available": 60,
        }
        spent = await client.post(
            f"/wallet/reservations/{rid}/capture", json={"amount": 30}, headers=_key(shop)
        )
        refund = await client.post(
            "/wallet/refunds",
            json={"amount": 5, "operation_id": spent.json()["id"]},
            headers=_key(shop),
        )
        too_much = await client.post(
            "/wallet/refunds",
            json={"amount": 26, "operation_id": spent.json()["id"]},
            headers=_key(shop),
        )
        other = await client.post("/wallet/reservations", json={"amount": 20}, headers=_key(shop))
        released = await client.post(
            f"/wallet/reservations/{other.json()['id']}/release", headers=_key(shop)
        )
        final = (await client.get("/wallet", headers=shop.headers)).json()
    await wallet_app.state.shopfront.db.aclose()
    assert spent.status_code == 200
    assert spent.json()["amount"] == 30
    assert refund.status_code == 201
    assert too_much.status_code == 409
    assert released.status_code == 200
    assert final == {"balance": 75, "reserved": 0, "available": 75}


async def test_writes_need_a_key_and_replay_with_it(wallet_app: FastAPI) -> None:
    """No key → 400; same key → the original answer, replayed; other payload → 422."""
    async with client_for(wallet_app) as client:
        shop = await _funded(client, wallet_app)
        missing = await client.post(
            "/wallet/reservations", json={"amount": 10}, headers=shop.headers
        )
        key = _key(shop)
        first = await client.post("/wallet/reservations", json={"amount": 10}, headers=key)
        again = await client.post("/wallet/reservations", json={"amount": 10}, headers=key)
        changed = await client.post("/wallet/reservations", json={"amount": 11}, headers=key)
        wallet = (await client.get("/wallet", headers=shop.headers)).json()
    await wallet_app.state.shopfront.db.aclose()
    assert missing.status_code == 400
    assert missing.json()["code"] == "idempotency.key_missing"
    assert missing.headers["content-type"] == "application/problem+json"
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert changed.status_code == 422
    assert changed.json()["code"] == "idempotency.key_reused"
    assert wallet["reserved"] == 10


async def test_refusals_write_nothing(wallet_app: FastAPI) -> None:
    """Not enough credits → 409 and nothing held; a bad amount → 422; a foreign id → 404."""
    async with client_for(wallet_app) as client:
        shop = await _funded(client, wallet_app, 50)
        poor = await client.post("/wallet/reservations", json={"amount": 51}, headers=_key(shop))
        negative = await client.post(
            "/wallet/reservations", json={"amount": -1}, headers=_key(shop)
        )
        unknown = await client.post(
            f"/wallet/reservations/{uuid.uuid4()}/capture", json={}, headers=_key(shop)
        )
        wallet = (await client.get("/wallet", headers=shop.headers)).json()
    await wallet_app.state.shopfront.db.aclose()
    assert poor.status_code == 409
    assert poor.json()["code"] == "ledger.insufficient_credits"
    assert negative.status_code == 422
    assert unknown.status_code == 404
    assert wallet == {"balance": 50, "reserved": 0, "available": 50}


async def test_housekeeping_returns_expired_holds(wallet_app: FastAPI) -> None:
    """A hold past its expiry goes back to the wallet on the next sweep, and only once."""
    async with client_for(wallet_app) as client:
        shop = await _funded(client, wallet_app)
        hold = await client.post(
            "/wallet/reservations", json={"amount": 30, "ttl_seconds": 60}, headers=_key(shop)
        )
        later = datetime.now(UTC) + timedelta(minutes=2)
        state = wallet_app.state.shopfront
        swept = [await sweep(state, now=later), await sweep(state, now=later)]
        wallet = (await client.get("/wallet", headers=shop.headers)).json()
        expired = (
            await client.get(f"/wallet/reservations/{hold.json()['id']}", headers=shop.headers)
        ).json()
    await wallet_app.state.shopfront.db.aclose()
    assert [s.holds_released for s in swept] == [1, 0]
    assert expired["status"] == "expired"
    assert wallet == {"balance": 100, "reserved": 0, "available": 100}
