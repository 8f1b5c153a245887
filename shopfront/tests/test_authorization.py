"""Authorization inside a shop: the route x role matrix, invitations, owners, API key lifecycle."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select, update

from fake_crm import FakeCrm
from hardened.db.tenancy import tenant_session
from hardened.testing import Caller, Probe, assert_authorization
from sf_support import (
    OWNER_PASSWORD,
    Shop,
    ShopDatabase,
    api_key,
    bearer,
    client_for,
    idem,
    make_settings,
    new_shop,
    open_shop,
    sign_in,
)
from shopfront.app import create_app
from shopfront.models import ApiKey, Invitation, User
from shopfront.permissions import ROLES
from shopfront.tenant_auth import Tenancy

EXEMPT = {
    # FastAPI's own documentation routes: no dependencies can be declared on them.
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/openapi.json"),
}
ROLE_ORDER = ("read_only", "staff", "admin", "owner")
MATRIX_DOC = Path(__file__).resolve().parents[2] / "docs" / "authorization-matrix.md"


@pytest.fixture
async def pg_app(pg_shop_db: ShopDatabase, fake_crm: FakeCrm) -> FastAPI:
    """An app on PostgreSQL behind RLS, in-process stores, its catalog read from a local CRM."""
    return create_app(
        make_settings(
            pg_shop_db.url, migration_database_url=pg_shop_db.owner_url, crm_url=fake_crm.url
        )
    )


MEMBER_PASSWORD = "pw-pw-pw"
SELF_ENDING = {("POST", "/auth/logout"), ("POST", "/auth/logout-all")}


async def _member(client: AsyncClient, shop: Shop, role: str, email: str | None = None) -> str:
    """Invite (as the owner) and sign up a member with ``role``; their access token."""
    email = email or f"{role}-{uuid.uuid4().hex[:6]}@members.example"
    invited = await client.post(
        "/invitations", json={"email": email, "role": role}, headers=shop.owner_headers
    )
    assert invited.status_code == 201, invited.text
    joined = await client.post(
        "/auth/signup",
        json={
            "shop": shop.domain,
            "invitation": invited.json()["token"],
            "password": MEMBER_PASSWORD,
        },
    )
    assert joined.status_code == 201, joined.text
    return str((await sign_in(client, shop.domain, email, MEMBER_PASSWORD))["access_token"])


async def _callers(client: AsyncClient, shop: Shop) -> list[Caller]:
    callers = []
    for role in ROLE_ORDER:
        if role == "owner":
            account = (shop.domain, shop.owner_email, OWNER_PASSWORD)
            token = shop.owner_headers["authorization"].split()[1]
        else:
            email = f"{role}@members.example"
            account = (shop.domain, email, MEMBER_PASSWORD)
            token = await _member(client, shop, role, email)
        callers.append(Caller(role, bearer(token), kind="user", account=account))
        key = await api_key(client, shop.owner_headers, role)
        callers.append(Caller(role, bearer(key), kind="api_key"))
    return callers


def _renewer(client: AsyncClient) -> Callable[[Caller], Awaitable[Caller]]:
    async def renew(caller: Caller) -> Caller:
        if caller.account is None:  # an API key survives its own calls
            return caller
        signed = await sign_in(client, *caller.account)
        return replace(caller, headers=bearer(signed["access_token"]))

    return renew


def _unsafe_headers(key: tuple[str, str]) -> dict[str, str]:
    return idem() if key[0] in {"POST", "PATCH", "PUT", "DELETE"} else {}


PROBES = {
    ("POST", "/orders/import"): Probe(content=b"", headers={"content-type": "text/csv"}),
    # Harmless for every caller that passes: an invalid role is a 422 after authorization.
    ("PATCH", "/members/{user_id}"): Probe(
        path_params={"user_id": str(uuid.uuid4())}, json={"role": "nobody"}
    ),
}


@pytest.mark.anyio
async def test_every_route_allows_exactly_the_roles_it_declares(pg_app: FastAPI) -> None:
    """Each route x role (user token and API key): allowed, or 403 auth.forbidden; anonymous 401."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            callers = await _callers(client, shop)
            matrix = await assert_authorization(
                client,
                pg_app,
                ROLES,
                callers,
                probes=PROBES,
                exempt={*EXEMPT, ("WEBSOCKET", "/ws/notifications")},
                headers_for=_unsafe_headers,
                destructive=SELF_ENDING,
                renew=_renewer(client),
            )
    finally:
        await pg_app.state.shopfront.db.aclose()
    counts = matrix.counts()
    assert len(matrix.routes) == 64
    assert len(callers) == 8
    assert sum(counts.values()) == 64 * 9  # eight callers and anonymous on every route
    assert counts["denied"] > 0
    assert counts["unauthenticated"] > 0
    print(f"\nauthorization matrix: {len(matrix.routes)} routes x {len(callers)} callers")  # noqa: T201
    print(dict(counts))  # noqa: T201
    print(matrix.table())  # noqa: T201
    documented = MATRIX_DOC.read_text(encoding="utf-8")
    assert matrix.table() in documented, f"{MATRIX_DOC} is out of date: paste the table above"


@pytest.mark.anyio
async def test_a_route_without_a_declared_permission_fails_the_matrix(pg_app: FastAPI) -> None:
    """A planted route that opens a tenant session but declares nothing fails the harness."""

    @pg_app.get("/planted")
    async def planted(t: Tenancy) -> dict[str, str]:
        return {"shop": str(t.tenant_id)}

    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            callers = [Caller("owner", shop.owner_headers, kind="user")]
            with pytest.raises(AssertionError, match=r"GET /planted as -: declares no permission"):
                await assert_authorization(
                    client,
                    pg_app,
                    ROLES,
                    callers,
                    probes=PROBES,
                    exempt={*EXEMPT, ("WEBSOCKET", "/ws/notifications")},
                    headers_for=_unsafe_headers,
                )
    finally:
        await pg_app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_sign_up_without_invitation_gets_no_rights(pg_app: FastAPI) -> None:
    """Knowing a shop's domain is not enough: sign-up needs an invitation, and a bad one is 401."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            refused = await client.post(
                "/auth/signup",
                json={"shop": shop.domain, "invitation": "inv_guess", "password": MEMBER_PASSWORD},
            )
            login = await client.post(
                "/auth/login",
                json={
                    "shop": shop.domain,
                    "email": "attacker@x.example",
                    "password": MEMBER_PASSWORD,
                },
            )
            coupon = await client.post(
                "/coupons", json={"code": "FREE", "percent_off": 100, "usage_limit": 9}
            )
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert (refused.status_code, refused.json()["code"]) == (401, "auth.invalid_invitation")
    assert login.status_code == 401
    assert (coupon.status_code, coupon.json()["code"]) == (401, "auth.missing_credentials")


@pytest.mark.anyio
async def test_staff_can_neither_make_coupons_nor_read_members(pg_app: FastAPI) -> None:
    """A staff member places orders but gets 403 on coupon writes, members and wallet spending."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            staff = bearer(await _member(client, shop, "staff"))
            order = await client.post(
                "/orders",
                json={
                    "customer_id": shop.customer_id,
                    "lines": [{"item_id": shop.item_id, "quantity": 1}],
                },
                headers=idem(staff),
            )
            refused = [
                await client.post(
                    "/coupons",
                    json={"code": "FREE", "percent_off": 100, "usage_limit": 9},
                    headers=staff,
                ),
                await client.get("/members", headers=staff),
                await client.post("/wallet/reservations", json={"amount": 1}, headers=idem(staff)),
            ]
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert order.status_code == 201, order.text
    for response in refused:
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "auth.forbidden"
        assert "permission" not in response.json()


@pytest.mark.anyio
async def test_invitations_are_single_use_expiring_and_name_email_and_role(
    pg_app: FastAPI, pg_shop_db: ShopDatabase
) -> None:
    """An invitation signs up its email with its role once; reused or expired it is the same 401."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            invited = await client.post(
                "/invitations",
                json={"email": "Staff@Members.Example", "role": "staff"},
                headers=shop.owner_headers,
            )
            token = invited.json()["token"]
            body = {"shop": shop.domain, "invitation": token, "password": MEMBER_PASSWORD}
            first = await client.post("/auth/signup", json=body)
            again = await client.post("/auth/signup", json=body)
            signed = await sign_in(client, shop.domain, "staff@members.example", MEMBER_PASSWORD)
            listed = await client.get("/members", headers=shop.owner_headers)
            late = await client.post(
                "/invitations",
                json={"email": "late@members.example", "role": "staff"},
                headers=shop.owner_headers,
            )
            state = pg_app.state.shopfront
            async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
                await session.execute(
                    update(Invitation)
                    .where(
                        Invitation.tenant_id == uuid.UUID(shop.tenant_id),
                        Invitation.id == uuid.UUID(late.json()["id"]),
                    )
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
                await session.commit()
            expired = await client.post(
                "/auth/signup",
                json={
                    "shop": shop.domain,
                    "invitation": late.json()["token"],
                    "password": MEMBER_PASSWORD,
                },
            )
            outbox = [m for m in state.mailer.sent if m.kind == "invitation"]
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert invited.status_code == 201
    assert invited.json()["email"] == "staff@members.example"
    assert first.status_code == 201
    assert (again.status_code, again.json()["code"]) == (401, "auth.invalid_invitation")
    assert (expired.status_code, expired.json()["code"]) == (401, "auth.invalid_invitation")
    assert signed["access_token"]
    roles = {m["email"]: m["role"] for m in listed.json()["items"]}
    assert roles["staff@members.example"] == "staff"
    assert roles[shop.owner_email] == "owner"
    assert {m.token for m in outbox} == {token, late.json()["token"]}


@pytest.mark.anyio
async def test_sign_up_answers_alike_whether_or_not_the_email_has_an_account(
    pg_app: FastAPI,
) -> None:
    """An invitation for an email that is already a member fails exactly like a bad one."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            # Two invitations for one email: the second acceptance finds the email taken.
            tokens = []
            for _ in range(2):
                invited = await client.post(
                    "/invitations",
                    json={"email": "twice@members.example", "role": "staff"},
                    headers=shop.owner_headers,
                )
                tokens.append(invited.json()["token"])
            first = await client.post(
                "/auth/signup",
                json={"shop": shop.domain, "invitation": tokens[0], "password": MEMBER_PASSWORD},
            )
            taken = await client.post(
                "/auth/signup",
                json={"shop": shop.domain, "invitation": tokens[1], "password": MEMBER_PASSWORD},
            )
            bogus = await client.post(
                "/auth/signup",
                json={
                    "shop": shop.domain,
                    "invitation": "inv_nothing",
                    "password": MEMBER_PASSWORD,
                },
            )
            no_shop = await client.post(
                "/auth/signup",
                json={
                    "shop": "nowhere.myshopify.com",
                    "invitation": tokens[1],
                    "password": MEMBER_PASSWORD,
                },
            )
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert first.status_code == 201

    def shape(response: object) -> tuple[int, dict[str, object]]:
        body = dict(response.json())  # type: ignore[attr-defined]
        body.pop("correlation_id")
        return response.status_code, body  # type: ignore[attr-defined]

    assert shape(taken) == shape(bogus) == shape(no_shop)
    assert shape(taken)[0] == 401


@pytest.mark.anyio
async def test_only_owners_touch_owners_and_nobody_grants_above_their_role(
    pg_app: FastAPI,
) -> None:
    """An admin cannot invite, promote, demote or remove an owner, nor mint an owner key."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            admin = bearer(await _member(client, shop, "admin"))
            owner_id = await _owner_id(client, shop)
            staff_token = await _member(client, shop, "staff", "s@members.example")
            staff_id = await _user_id(client, shop, "s@members.example")
            answers = {
                "invite owner": await client.post(
                    "/invitations", json={"email": "o@x.example", "role": "owner"}, headers=admin
                ),
                "promote to owner": await client.patch(
                    f"/members/{staff_id}", json={"role": "owner"}, headers=admin
                ),
                "demote owner": await client.patch(
                    f"/members/{owner_id}", json={"role": "staff"}, headers=admin
                ),
                "remove owner": await client.delete(f"/members/{owner_id}", headers=admin),
                "owner key": await client.post(
                    "/api-keys", json={"name": "k", "role": "owner"}, headers=admin
                ),
            }
            promoted = await client.patch(
                f"/members/{staff_id}", json={"role": "admin"}, headers=admin
            )
            stale = await client.get("/customers", headers=bearer(staff_token))
    finally:
        await pg_app.state.shopfront.db.aclose()
    for what, response in answers.items():
        assert response.status_code == 403, (what, response.text)
        assert response.json()["code"] in {"member.owner_required", "member.role_too_high"}, what
    assert (promoted.status_code, promoted.json()["role"]) == (200, "admin")
    # A role change signs the member out: the old token (old role) stops at once.
    assert (stale.status_code, stale.json()["code"]) == (401, "auth.token_revoked")


async def _owner_id(client: AsyncClient, shop: Shop) -> str:
    return await _user_id(client, shop, shop.owner_email)


async def _user_id(client: AsyncClient, shop: Shop, email: str) -> str:
    listed = await client.get("/members", headers=shop.owner_headers)
    return str(next(m["id"] for m in listed.json()["items"] if m["email"] == email))


@pytest.mark.anyio
async def test_concurrent_demotions_always_leave_an_owner(pg_app: FastAPI) -> None:
    """Four owners demoting each other at once: at most three win, the shop keeps an owner."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            tokens = [shop.owner_headers["authorization"].split()[1]]
            tokens += [
                await _member(client, shop, "owner", f"o{n}@members.example") for n in range(3)
            ]
            listed = await client.get("/members", headers=shop.owner_headers)
            owners = [m["id"] for m in listed.json()["items"] if m["role"] == "owner"]
            answers = await asyncio.gather(
                *(
                    client.patch(f"/members/{target}", json={"role": "staff"}, headers=bearer(t))
                    for t in tokens
                    for target in owners
                )
            )
            state = pg_app.state.shopfront
            async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
                remaining = (
                    await session.scalars(select(User.id).where(User.role == "owner"))
                ).all()
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert len(owners) == 4
    statuses = {r.status_code for r in answers}
    assert statuses <= {200, 401, 403, 409}, [r.text for r in answers if r.status_code >= 500]
    demoted = {r.json()["id"] for r in answers if r.status_code == 200}
    assert len(demoted) <= 3  # at most all but one
    assert len(remaining) == 4 - len(demoted) >= 1


@pytest.mark.anyio
async def test_setting_the_role_a_member_has_signs_nobody_out(pg_app: FastAPI) -> None:
    """PATCH with the member's current role changes nothing, so their sessions live on."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            owner_id = await _owner_id(client, shop)
            same = await client.patch(
                f"/members/{owner_id}", json={"role": "owner"}, headers=shop.owner_headers
            )
            still = await client.get("/members", headers=shop.owner_headers)
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert (same.status_code, same.json()["role"]) == (200, "owner")
    assert still.status_code == 200


@pytest.mark.anyio
async def test_the_last_owner_can_be_neither_demoted_nor_removed(pg_app: FastAPI) -> None:
    """The only owner demoting or removing themselves gets 409 member.last_owner."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            owner_id = await _owner_id(client, shop)
            demote = await client.patch(
                f"/members/{owner_id}", json={"role": "admin"}, headers=shop.owner_headers
            )
            remove = await client.delete(f"/members/{owner_id}", headers=shop.owner_headers)
    finally:
        await pg_app.state.shopfront.db.aclose()
    for response in (demote, remove):
        assert (response.status_code, response.json()["code"]) == (409, "member.last_owner")


@pytest.mark.anyio
async def test_shop_and_owner_are_created_together_once(pg_app: FastAPI) -> None:
    """Ten concurrent creations of one domain: one shop, one owner, nine 409 domain_taken."""
    body = {
        "name": "Race",
        "domain": f"race-{uuid.uuid4().hex[:6]}.myshopify.com",
        "owner_email": "owner@race.example",
        "owner_password": OWNER_PASSWORD,
    }
    try:
        async with client_for(pg_app) as client:
            answers = await asyncio.gather(*(client.post("/tenants", json=body) for _ in range(10)))
            created = [a for a in answers if a.status_code == 201]
            signed = await sign_in(client, body["domain"], body["owner_email"])
            state = pg_app.state.shopfront
            tenant = uuid.UUID(created[0].json()["id"])
            async with tenant_session(state.db.sessions, tenant) as session:
                users = (await session.scalars(select(User))).all()
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"tenant.domain_taken"}
    assert [(u.email, u.role) for u in users] == [("owner@race.example", "owner")]
    assert str(users[0].id) == created[0].json()["owner_id"]
    assert signed["access_token"]


@pytest.mark.anyio
async def test_opening_shops_is_limited_per_client_ip(pg_shop_db: ShopDatabase) -> None:
    """The fourth shop opened from one address within the window is a 429."""
    app = create_app(
        make_settings(
            pg_shop_db.url, migration_database_url=pg_shop_db.owner_url, rate_limit_signup="3/3600"
        )
    )
    try:
        async with client_for(app) as client:
            for n in range(3):
                await open_shop(client, f"ip{n}")
            fourth = await client.post(
                "/tenants",
                json={
                    "name": "x",
                    "domain": "fourth.myshopify.com",
                    "owner_email": "o@x.example",
                    "owner_password": OWNER_PASSWORD,
                },
            )
    finally:
        await app.state.shopfront.db.aclose()
    assert (fourth.status_code, fourth.json()["violated_policy"]) == (429, "signup_ip")


@pytest.mark.anyio
async def test_api_keys_rotate_with_overlap_revoke_at_once_and_store_only_hashes(
    pg_app: FastAPI,
) -> None:
    """Several keys; rotation keeps both valid for the overlap; revoke and expiry end a key."""
    try:
        async with client_for(pg_app) as client:
            shop = await new_shop(client)
            owner = shop.owner_headers
            first = await client.post(
                "/api-keys", json={"name": "ci", "role": "staff"}, headers=owner
            )
            old_key = first.json()["key"]
            rotated = await client.post(
                f"/api-keys/{first.json()['id']}/rotate", json={"overlap": 3600}, headers=owner
            )
            new_key = rotated.json()["key"]
            both = [
                (await client.get("/orders", headers=bearer(k))).status_code
                for k in (old_key, new_key)
            ]
            twice = await client.post(
                f"/api-keys/{first.json()['id']}/rotate", json={}, headers=owner
            )
            cut = await client.post(
                f"/api-keys/{rotated.json()['id']}/rotate", json={"overlap": 0}, headers=owner
            )
            after_cut = await client.get("/orders", headers=bearer(new_key))
            newest = cut.json()["key"]
            revoked = await client.delete(f"/api-keys/{cut.json()['id']}", headers=owner)
            after_revoke = await client.get("/orders", headers=bearer(newest))
            expiring = await api_key(client, owner, "read_only")
            state = pg_app.state.shopfront
            async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
                await session.execute(
                    update(ApiKey)
                    .where(ApiKey.tenant_id == uuid.UUID(shop.tenant_id))
                    .where(ApiKey.name == "read_only key")
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
                await session.commit()
                rows = (await session.scalars(select(ApiKey))).all()
            expired = await client.get("/orders", headers=bearer(expiring))
            listed = await client.get("/api-keys", headers=owner)
    finally:
        await pg_app.state.shopfront.db.aclose()
    assert both == [200, 200]
    assert (twice.status_code, twice.json()["code"]) == (409, "api_key.rotated")
    assert (after_cut.status_code, after_cut.json()["code"]) == (401, "auth.invalid_credentials")
    assert revoked.status_code == 204
    assert (after_revoke.status_code, after_revoke.json()["code"]) == (
        401,
        "auth.invalid_credentials",
    )
    assert expired.status_code == 401
    stored = " ".join(f"{r.key_hash} {r.name}" for r in rows)
    for key in (old_key, new_key, newest, expiring):
        assert key not in stored
        assert key.split("_", 2)[2] not in stored
    by_id = {k["id"]: k for k in listed.json()["items"]}
    assert by_id[first.json()["id"]]["replaced_by"] == rotated.json()["id"]
    assert by_id[first.json()["id"]]["last_used_at"] is not None
    assert "key" not in by_id[first.json()["id"]]
    assert len(listed.json()["items"]) >= 5
