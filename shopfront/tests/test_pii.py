"""Encrypted personal data end to end: none in clear at rest or in logs, lookups, verification."""

import contextlib
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from aiohttp import web
from httpx import AsyncClient
from sqlalchemy import make_url

from hardened.config import ConfigError
from hardened.crypto import generate_keyring_entry
from hardened.db.tenancy import tenant_session
from sf_support import (
    ShopDatabase,
    add_member,
    bearer,
    client_for,
    make_settings,
    new_shop,
    sign_in,
)
from shopfront import oauth
from shopfront.app import create_app
from shopfront.keys import KeyCommands
from shopfront.settings import Settings

pytestmark = pytest.mark.anyio

AADHAAR = "4991 1866 5246"  # a valid Verhoeff check digit
PAN = "ABCDE1234F"
BANK = "918273645546372"
ADDRESS = "42 Planted Lane, Pune 411001"
SHOPIFY_TOKEN = "shpat_planted0c0ffee0c0ffee0c0ffee"
GOOGLE_ACCESS = "ya29.planted-google-access-token-value"
GOOGLE_REFRESH = "1//planted-google-refresh-token-value"
PLANTED = (
    AADHAAR.replace(" ", ""),
    PAN,
    BANK,
    ADDRESS,
    SHOPIFY_TOKEN,
    GOOGLE_ACCESS,
    GOOGLE_REFRESH,
)


def _owner(db: ShopDatabase) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(db.owner_url.replace("postgresql+psycopg://", "postgresql://"))


def _leaks(blob: str) -> list[str]:
    """Which planted values appear in ``blob``, as text or as hex (bytea renderings)."""
    lowered = blob.lower()
    return [
        v
        for v in PLANTED
        if v.lower() in lowered or v.encode().hex() in lowered or v.replace(" ", "") in blob
    ]


async def _member(client: AsyncClient, shop: object, role: str) -> dict[str, str]:
    login = await add_member(client, shop, f"{role}-{uuid.uuid4().hex[:6]}@m.example", role=role)  # type: ignore[arg-type]
    return bearer(
        (await sign_in(client, login["shop"], login["email"], login["password"]))["access_token"]
    )


async def _submit(client: AsyncClient, headers: dict[str, str]) -> dict[str, object]:
    body = {"national_id": AADHAAR, "tax_id": PAN, "bank_account": BANK, "address": ADDRESS}
    resp = await client.put("/kyc/me", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def test_the_database_dump_and_the_logs_hold_no_planted_pii_or_token(
    pg_shop_db: ShopDatabase, shop_client_pg: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """KYC numbers, bank account, address and OAuth/Shopify tokens never appear in clear."""
    client = shop_client_pg
    shop = await new_shop(client)
    record = await _submit(client, shop.owner_headers)
    assert record["national_id_last4"] == "5246"
    made = await client.post(
        "/integrations",
        json={
            "platform": "shopify",
            "shop_domain": "planted.myshopify.com",
            "access_token": SHOPIFY_TOKEN,
        },
        headers=shop.headers,
    )
    assert made.status_code == 201, made.text
    assert made.json()["token_last4"] == SHOPIFY_TOKEN[-4:]
    state = client._transport.app.state.shopfront  # type: ignore[attr-defined]
    async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
        account = await oauth.link_account(
            session,
            user_id=uuid.UUID(str(record["user_id"])),
            provider="google",
            subject="1234567890",
            access_token=GOOGLE_ACCESS,
            refresh_token=GOOGLE_REFRESH,
            expires_at=None,
        )
    async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
        (linked,) = await oauth.linked_accounts(session, account.user_id)
        assert (linked.access_token, linked.refresh_token) == (GOOGLE_ACCESS, GOOGLE_REFRESH)
    with _owner(pg_shop_db) as conn:
        rows = []
        for table in ("kyc_records", "oauth_accounts", "integrations", "data_keys"):
            rows += [str(r[0]) for r in conn.execute(f"SELECT row_to_json(t) FROM {table} t")]  # noqa: S608
    assert len(rows) >= 4
    assert _leaks("\n".join(rows)) == []
    url = make_url(pg_shop_db.owner_url)
    dump = subprocess.run(
        [
            "pg_dump",
            "-h",
            url.host or "127.0.0.1",
            "-U",
            url.username or "postgres",
            str(url.database),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "kyc_records" in dump
    assert _leaks(dump) == []
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "audit.kyc_submitted" in logged
    assert _leaks(logged) == []


async def test_staff_find_a_record_by_number_in_any_format(shop_client_pg: AsyncClient) -> None:
    """A blind-index search finds the record by its normalised number; read-only members may not."""
    client = shop_client_pg
    shop = await new_shop(client)
    record = await _submit(client, shop.owner_headers)
    staff = await _member(client, shop, "staff")
    found = await client.get("/kyc/search", params={"national_id": "4991-1866-5246"}, headers=staff)
    assert found.status_code == 200, found.text
    assert [r["id"] for r in found.json()] == [record["id"]]
    by_pan = await client.get("/kyc/search", params={"tax_id": "abcde 1234 f"}, headers=staff)
    assert [r["id"] for r in by_pan.json()] == [record["id"]]
    none = await client.get("/kyc/search", params={"national_id": "4991 1866 5247"}, headers=staff)
    assert none.json() == []
    reader = await _member(client, shop, "read_only")
    refused = await client.get("/kyc/search", params={"tax_id": PAN}, headers=reader)
    assert refused.status_code == 403
    both = await client.get(
        "/kyc/search", params={"tax_id": PAN, "national_id": AADHAAR}, headers=staff
    )
    assert (both.status_code, both.json()["code"]) == (400, "kyc.search_invalid")


async def test_verification_updates_the_record_and_the_member_together(
    pg_shop_db: ShopDatabase, shop_client_pg: AsyncClient
) -> None:
    """A verified record and the member's KYC status change in the same transaction."""
    client = shop_client_pg
    shop = await new_shop(client)
    record = await _submit(client, shop.owner_headers)
    done = await client.post(f"/kyc/{record['id']}/verify", headers=shop.headers)
    assert (done.status_code, done.json()["status"]) == (200, "verified"), done.text
    with _owner(pg_shop_db) as conn:
        row = conn.execute(
            "SELECT kyc_status FROM users WHERE id = %s", (record["user_id"],)
        ).fetchone()
    assert row == ("verified",)


async def test_verification_failing_after_the_kyc_update_changes_neither_record(
    pg_shop_db: ShopDatabase, shop_client_pg: AsyncClient
) -> None:
    """The member update fails after the KYC record was written: both stay as they were."""
    client = shop_client_pg
    shop = await new_shop(client)
    record = await _submit(client, shop.owner_headers)
    with _owner(pg_shop_db) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_kyc() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'member update refused'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_kyc BEFORE UPDATE OF kyc_status ON users"
            " FOR EACH ROW WHEN (NEW.kyc_status = 'verified') EXECUTE FUNCTION refuse_kyc()"
        )
    failed = await client.post(f"/kyc/{record['id']}/verify", headers=shop.headers)
    assert failed.status_code == 500
    with _owner(pg_shop_db) as conn:
        kyc = conn.execute(
            "SELECT status, verified_at FROM kyc_records WHERE id = %s", (record["id"],)
        ).fetchone()
        user = conn.execute(
            "SELECT kyc_status FROM users WHERE id = %s", (record["user_id"],)
        ).fetchone()
    assert kyc == ("pending", None)
    assert user == ("pending",)


async def test_rotation_reencryption_and_shredding_through_the_key_commands(
    pg_shop_db: ShopDatabase, shop_client_pg: AsyncClient
) -> None:
    """Rotate A's key and re-encrypt: A reads on v2; shred A: A unreadable, B intact."""
    client = shop_client_pg
    a, b = await new_shop(client, "a"), await new_shop(client, "b")
    await _submit(client, a.owner_headers)
    await _submit(client, b.owner_headers)
    commands = KeyCommands(client._transport.app.state.shopfront.settings)  # type: ignore[attr-defined]
    try:
        assert await commands.rotate(a.domain) == 2
        assert await commands.reencrypt(progress=False) == {
            "kyc_records": 1,
            "oauth_accounts": 0,
            "integrations": 0,
        }
        status = await commands.status()
        assert status["rows"]["kyc_records"] == {2: 1, 1: 1}  # type: ignore[index]
        mine = await client.get("/kyc/me", headers=a.owner_headers)
        assert (mine.status_code, mine.json()["tax_id_last4"]) == (200, "234F")
        assert await commands.shred(a.domain) == 1
    finally:
        await commands.aclose()
    gone = await client.get("/kyc/me", headers=a.owner_headers)
    assert gone.status_code == 500
    kept = await client.get("/kyc/me", headers=b.owner_headers)
    assert (kept.status_code, kept.json()["national_id_last4"]) == (200, "5246")


def test_production_requires_a_valid_encryption_keyring() -> None:
    """ENCRYPTION_KEY is required in production and a bad one is named, never echoed."""
    strong = {
        n: secrets.token_urlsafe(48) for n in ("jwt_secret", "session_secret", "cookie_secret")
    }
    with pytest.raises(ConfigError, match="ENCRYPTION_KEY: is required"):
        Settings.load(environment="production", **strong)
    bad = "k1:" + "ab" * 20
    with pytest.raises(ConfigError, match="ENCRYPTION_KEY") as caught:
        Settings.load(environment="production", encryption_key=bad, **strong)
    assert bad[3:] not in str(caught.value)
    good = Settings.load(
        environment="production", encryption_key=generate_keyring_entry("k2"), **strong
    )
    assert good.keyring().primary == "k2"
    derived = Settings.load(environment="test", **strong)
    assert derived.keyring().primary == "dev"
    assert [c.ok for c in derived.deploy_checks() if c.name == "ENCRYPTION_KEY is set"] == [False]


@contextlib.asynccontextmanager
async def _kyc_provider(answers: list[int]) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A KYC provider fake over a real socket: answers ``answers`` in turn (then 200)."""
    seen: list[dict[str, str]] = []

    async def verifications(request: web.Request) -> web.Response:
        seen.append(await request.json())
        status = answers.pop(0) if answers else 200
        if status != 200:
            return web.json_response({"error": "down"}, status=status)
        return web.json_response({"verified": True, "reason": None})

    app = web.Application()
    app.router.add_post("/verifications", verifications)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_verification_goes_through_the_provider_and_an_outage_writes_nothing(
    pg_shop_db: ShopDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With KYC_PROVIDER_URL the provider decides; its outage is a 503 and changes no record."""
    monkeypatch.setenv("KYC_RETRY_ATTEMPTS", "1")
    async with _kyc_provider([503]) as (url, seen):
        settings = make_settings(
            pg_shop_db.url, migration_database_url=pg_shop_db.owner_url, kyc_provider_url=url
        )
        app = create_app(settings)
        try:
            async with client_for(app) as client:
                shop = await new_shop(client)
                record = await _submit(client, shop.owner_headers)
                down = await client.post(f"/kyc/{record['id']}/verify", headers=shop.headers)
                assert (down.status_code, down.json()["code"]) == (503, "kyc.provider_unavailable")
                assert "retry-after" in down.headers
                mine = await client.get("/kyc/me", headers=shop.owner_headers)
                assert mine.json()["status"] == "pending"
                done = await client.post(f"/kyc/{record['id']}/verify", headers=shop.headers)
                assert (done.status_code, done.json()["status"]) == (200, "verified"), done.text
        finally:
            await app.state.shopfront.aclose()
    assert [body["tax_id"] for body in seen] == [PAN, PAN]
