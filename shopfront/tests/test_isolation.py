"""Tenant B, holding tenant A's ids, can neither read nor change A's rows through any route."""

import psycopg
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from psycopg import sql

from fake_crm import ENDPOINTS, mark_of, running_fake_crm
from fake_sim import running_fake_sim
from hardened.db.tenancy import TenantScoped
from hardened.testing import Probe, assert_isolated, tenant_models_without_mixin
from sf_support import (
    Shop,
    ShopDatabase,
    client_for,
    fund,
    idem,
    make_settings,
    new_shop,
    order_body,
)
from shopfront.app import create_app
from shopfront.models import Base

PUBLIC = {
    ("POST", "/tenants"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/openapi.json"),
    # Identity routes: no resource ids; the shop in the body or the caller's own
    # token decides everything (their own tests live in test_auth.py).
    ("POST", "/auth/signup"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/logout"),
    ("POST", "/auth/logout-all"),
    ("GET", "/auth/sessions"),
    ("POST", "/auth/password"),
    ("POST", "/auth/password-reset"),
    ("POST", "/auth/password-reset/confirm"),
    # The token names its shop; the caller's own token decides the member (test_email_tokens.py).
    ("POST", "/auth/email/verify"),
    ("POST", "/auth/email/change"),
    ("POST", "/auth/email/change/confirm"),
    # The caller's own KYC record: no resource id (test_pii.py).
    ("GET", "/kyc/me"),
    ("PUT", "/kyc/me"),
    ("WEBSOCKET", "/ws/notifications"),
}
CSV = "external_ref,customer_email,sku,quantity,note\r\n"
A_NATIONAL_ID, A_TAX_ID = "4991 1866 5246", "ALPHA1234A"
A_INTEGRATION = {
    "platform": "shopify",
    "shop_domain": "alpha.myshopify.com",
    "access_token": "shpat_alpha_only_token",
}


async def _seed_a(client: AsyncClient, app: FastAPI) -> tuple[Shop, dict[str, str]]:
    a = await new_shop(client, "alpha")
    await fund(app, a, 100)
    h = a.headers
    coupon = (
        await client.post(
            "/coupons", json={"code": "A-ONLY", "percent_off": 5, "usage_limit": 9}, headers=h
        )
    ).json()
    imported = await client.post(
        "/orders/import",
        content=CSV + "A-REF-1,c@alpha.example,PLAN-1,1,\r\n",
        headers={**h, "content-type": "text/csv"},
    )
    assert imported.status_code == 201, imported.text
    order = (
        await client.post("/orders", json=order_body(a, coupon="A-ONLY"), headers=idem(h))
    ).json()
    await client.post(
        f"/orders/{order['id']}/transitions", json={"to": "paid", "version": 1}, headers=h
    )
    shipment = (
        await client.post(
            f"/orders/{order['id']}/shipments", json={"carrier": "DHL", "version": 2}, headers=h
        )
    ).json()
    invitation = (
        await client.post(
            "/invitations",
            json={"email": "invited@alpha.example", "role": "staff"},
            headers=a.owner_headers,
        )
    ).json()
    # A's catalog list and telecom catalog are cached before B asks the same paths.
    listed = await client.get("/catalog/items", headers=h)
    assert listed.status_code == 200, listed.text
    for kind in ENDPOINTS:
        read = await client.get(f"/telecom/{kind}", headers=h)
        assert read.status_code == 200, read.text
    keys = (await client.get("/api-keys", headers=a.owner_headers)).json()["items"]
    members = (await client.get("/members", headers=a.owner_headers)).json()["items"]
    kyc = await client.put(
        "/kyc/me", json={"national_id": A_NATIONAL_ID, "tax_id": A_TAX_ID}, headers=a.owner_headers
    )
    assert kyc.status_code == 200, kyc.text
    integration = await client.post("/integrations", json=A_INTEGRATION, headers=h)
    assert integration.status_code == 201, integration.text
    return a, {
        "kyc_id": kyc.json()["id"],
        "integration_id": integration.json()["id"],
        **await _seed_wallet(client, a),
        "key_id": keys[0]["id"],
        "invitation_id": invitation["id"],
        "owner_id": members[0]["id"],
        "coupon_id": coupon["id"],
        "order_id": order["id"],
        "order_number": order["number"],
        "shipment_id": shipment["id"],
    }


async def _seed_wallet(client: AsyncClient, a: Shop) -> dict[str, str]:
    h = a.headers
    spent = (await client.post("/wallet/reservations", json={"amount": 30}, headers=idem(h))).json()
    capture = await client.post(
        f"/wallet/reservations/{spent['id']}/capture", json={}, headers=idem(h)
    )
    held = await client.post("/wallet/reservations", json={"amount": 20}, headers=idem(h))
    assert capture.status_code == 200, capture.text
    return {
        "spent_id": spent["id"],
        "capture_id": capture.json()["id"],
        "held_id": held.json()["id"],
    }


def _member_probes(a: Shop, ids: dict[str, str]) -> dict[tuple[str, str], Probe]:
    key, invitation, owner = ids["key_id"], ids["invitation_id"], ids["owner_id"]
    return {
        ("GET", "/api-keys"): Probe(expect="absent", secrets=(key,)),
        ("POST", "/api-keys"): Probe(
            json={"name": "b key", "role": "staff"}, expect="absent", secrets=(key,)
        ),
        ("POST", "/api-keys/{key_id}/rotate"): Probe(path_params={"key_id": key}, json={}),
        ("DELETE", "/api-keys/{key_id}"): Probe(path_params={"key_id": key}),
        ("GET", "/members"): Probe(expect="absent", secrets=(owner, a.owner_email)),
        ("PATCH", "/members/{user_id}"): Probe(
            path_params={"user_id": owner}, json={"role": "read_only"}
        ),
        ("DELETE", "/members/{user_id}"): Probe(path_params={"user_id": owner}),
        ("GET", "/invitations"): Probe(
            expect="absent", secrets=(invitation, "invited@alpha.example")
        ),
        ("POST", "/invitations"): Probe(
            json={"email": "invited@alpha.example", "role": "staff"},
            expect="absent",
            secrets=(invitation,),
        ),
        ("DELETE", "/invitations/{invitation_id}"): Probe(
            path_params={"invitation_id": invitation}
        ),
    }


def _probes(a: Shop, ids: dict[str, str], b: Shop) -> dict[tuple[str, str], Probe]:
    secrets = (a.customer_id, a.item_id, ids["order_id"], ids["order_number"], "c@alpha.example")
    return {
        **_member_probes(a, ids),
        ("GET", "/tenants/{tenant_id}"): Probe(path_params={"tenant_id": a.tenant_id}),
        ("POST", "/customers"): Probe(
            json={"email": "c@alpha.example", "name": "Same email, other shop"},
            expect="absent",
            secrets=(a.customer_id,),
        ),
        ("GET", "/customers"): Probe(expect="absent", secrets=secrets),
        ("GET", "/customers/{customer_id}"): Probe(path_params={"customer_id": a.customer_id}),
        ("POST", "/catalog/items"): Probe(
            json={"kind": "plan", "sku": "PLAN-1-B", "name": "n", "price_cents": 1},
            expect="absent",
            secrets=(a.item_id,),
        ),
        ("GET", "/catalog/items"): Probe(expect="absent", secrets=(a.item_id,)),
        ("GET", "/catalog/items/{item_id}"): Probe(path_params={"item_id": a.item_id}),
        ("POST", "/coupons"): Probe(
            json={"code": "A-ONLY", "percent_off": 5, "usage_limit": 1},
            expect="absent",
            secrets=(ids["coupon_id"],),
        ),
        ("GET", "/coupons/{coupon_id}"): Probe(path_params={"coupon_id": ids["coupon_id"]}),
        ("POST", "/orders"): Probe(
            json=order_body(a), headers=idem()
        ),  # A's customer and item: not found
        ("POST", "/orders/import"): Probe(
            content=(CSV + "A-REF-1,c@beta.example,PLAN-1,1,\r\n").encode(),
            headers={"content-type": "text/csv"},
            expect="absent",
            secrets=(ids["order_id"],),
        ),
        ("GET", "/orders"): Probe(expect="absent", secrets=secrets),
        ("GET", "/orders/{order_id}"): Probe(path_params={"order_id": ids["order_id"]}),
        ("GET", "/orders/{order_id}/history"): Probe(path_params={"order_id": ids["order_id"]}),
        ("POST", "/orders/{order_id}/transitions"): Probe(
            path_params={"order_id": ids["order_id"]}, json={"to": "cancelled", "version": 2}
        ),
        ("POST", "/orders/{order_id}/shipments"): Probe(
            path_params={"order_id": ids["order_id"]}, json={"carrier": "UPS", "version": 2}
        ),
        ("GET", "/wallet"): Probe(expect="absent", secrets=(ids["held_id"], ids["spent_id"])),
        ("POST", "/wallet/reservations"): Probe(
            json={"amount": 10}, headers=idem(), expect="absent", secrets=(ids["held_id"],)
        ),
        ("GET", "/wallet/reservations/{reservation_id}"): Probe(
            path_params={"reservation_id": ids["held_id"]}
        ),
        ("POST", "/wallet/reservations/{reservation_id}/capture"): Probe(
            path_params={"reservation_id": ids["held_id"]}, json={}, headers=idem()
        ),
        ("POST", "/wallet/reservations/{reservation_id}/release"): Probe(
            path_params={"reservation_id": ids["held_id"]}, headers=idem()
        ),
        ("POST", "/wallet/refunds"): Probe(
            json={"amount": 1, "operation_id": ids["capture_id"]}, headers=idem()
        ),
        ("POST", "/sims/activations"): Probe(
            json={"iccid": "8981100000000000001", "plan": "basic"},
            headers=idem(),
            expect="absent",
            secrets=(ids["held_id"],),
        ),
        ("GET", "/shipments/{shipment_id}"): Probe(path_params={"shipment_id": ids["shipment_id"]}),
        **{
            ("GET", f"/telecom/{kind}"): Probe(expect="absent", secrets=(mark_of(a.tenant_id),))
            for kind in ENDPOINTS
        },
        ("PATCH", "/shipments/{shipment_id}"): Probe(
            path_params={"shipment_id": ids["shipment_id"]},
            json={"status": "returned", "version": 1},
        ),
        ("GET", "/kyc/search"): Probe(
            query={"national_id": A_NATIONAL_ID}, expect="absent", secrets=(ids["kyc_id"],)
        ),
        ("POST", "/kyc/{record_id}/verify"): Probe(path_params={"record_id": ids["kyc_id"]}),
        ("GET", "/integrations"): Probe(expect="absent", secrets=(ids["integration_id"],)),
        ("POST", "/integrations"): Probe(
            json=A_INTEGRATION, expect="absent", secrets=(ids["integration_id"],)
        ),
        ("DELETE", "/integrations/{integration_id}"): Probe(
            path_params={"integration_id": ids["integration_id"]}
        ),
    }


@pytest.mark.anyio
async def test_every_route_isolates_tenants(shop_db: ShopDatabase) -> None:
    """Every route answers B with 404 or nothing of A's; A's rows are unchanged afterwards."""
    async with running_fake_sim() as sim, running_fake_crm() as crm:
        settings = make_settings(
            shop_db.url,
            migration_database_url=shop_db.owner_url,
            sim_provider_url=sim.url,
            crm_url=crm.url,
        )
        app = create_app(settings)
        await _probe_all(app, shop_db)


async def _probe_all(app: FastAPI, shop_db: ShopDatabase) -> None:
    try:
        async with client_for(app) as client:
            a, ids = await _seed_a(client, app)
            b = await new_shop(client, "beta")
            await fund(app, b, 1000)
            client.headers.update(b.headers)
            probed = await assert_isolated(client, app, _probes(a, ids, b), public=PUBLIC)
            client.headers.update(a.headers)
            order = (await client.get(f"/orders/{ids['order_id']}")).json()
            shipment = (await client.get(f"/shipments/{ids['shipment_id']}")).json()
            coupon = (await client.get(f"/coupons/{ids['coupon_id']}")).json()
            wallet = (await client.get("/wallet")).json()
            held = (await client.get(f"/wallet/reservations/{ids['held_id']}")).json()
            members = (await client.get("/members")).json()["items"]
            keys = (await client.get("/api-keys")).json()["items"]
            invitations = (await client.get("/invitations")).json()["items"]
            integrations = (await client.get("/integrations")).json()
            kyc = (await client.get("/kyc/me", headers=a.owner_headers)).json()
    finally:
        await app.state.shopfront.crm.aclose()
        await app.state.shopfront.db.aclose()
    assert len(probed) == 46
    assert [i["id"] for i in integrations] == [ids["integration_id"]]
    assert (kyc["id"], kyc["status"]) == (ids["kyc_id"], "pending")
    assert [(m["id"], m["role"]) for m in members] == [(ids["owner_id"], "owner")]
    key = next(k for k in keys if k["id"] == ids["key_id"])
    assert (key["revoked_at"], key["replaced_by"]) == (None, None)
    assert [i["id"] for i in invitations] == [ids["invitation_id"]]
    assert (order["status"], order["version"]) == ("shipped", 3)
    assert (shipment["status"], shipment["version"]) == ("label_created", 1)
    assert coupon["used"] == 1
    assert wallet == {"balance": 70, "reserved": 20, "available": 50}
    assert held["status"] == "held"


def test_every_model_with_a_tenant_column_uses_the_mixin() -> None:
    """No mapped class carries tenant_id without TenantScoped (and so without scoping)."""
    assert tenant_models_without_mixin(Base, TenantScoped) == []


TENANT_TABLES_SQL = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
WHERE a.attname = 'tenant_id' AND c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace
"""


@pytest.mark.anyio
async def test_rls_alone_hides_foreign_rows_from_the_app_role(pg_shop_db: ShopDatabase) -> None:
    """As the app role, raw SQL with tenant A set sees no row of B in any tenant table."""
    async with running_fake_crm() as crm:
        app = create_app(make_settings(pg_shop_db.url, crm_url=crm.url))
        try:
            async with client_for(app) as client:
                a, _ = await _seed_a(client, app)
                b = await new_shop(client, "beta")
                await client.post("/orders", json=order_body(b), headers=idem(b.headers))
        finally:
            await app.state.shopfront.crm.aclose()
            await app.state.shopfront.db.aclose()
    owner = pg_shop_db.owner_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(owner) as conn:
        tables = conn.execute(TENANT_TABLES_SQL).fetchall()
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'shopfront_app'"
        ).fetchone()
        owners = {
            r[0]
            for r in conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")
        }
    assert len(tables) == 18  # every table with a tenant_id column
    assert all(enabled and forced for _, enabled, forced in tables), tables
    assert role == (False, False)
    assert "shopfront_app" not in owners
    app_url = pg_shop_db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(app_url) as conn:
        count = sql.SQL("SELECT count(*) FROM {}")
        unset = {t: conn.execute(count.format(sql.Identifier(t))).fetchone() for t, _, _ in tables}
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (a.tenant_id,))
        others = sql.SQL("SELECT count(*) FROM {} WHERE tenant_id <> %s")
        foreign = {
            t: conn.execute(others.format(sql.Identifier(t)), (a.tenant_id,)).fetchone()
            for t, _, _ in tables
        }
        own = conn.execute("SELECT count(*) FROM orders").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO customers (id, tenant_id, email, name, created_at)"
                " VALUES (gen_random_uuid(), %s, 'x@y.z', 'x', now())",
                (b.tenant_id,),
            )
    assert set(unset.values()) == {(0,)}
    assert set(foreign.values()) == {(0,)}
    assert own == (2,)
