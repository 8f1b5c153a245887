"""Email verification at sign-up and email change: keyed-hashed, single-use, expiring tokens."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql

from hardened.crypto import derive_key
from hardened.db.tenancy import tenant_session
from sf_support import OWNER_PASSWORD, add_member, bearer, client_for, make_settings, new_shop
from shopfront.models import EmailToken, Invitation, PasswordReset, User

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx
    from fastapi import FastAPI

    from sf_support import Shop, ShopDatabase

PROBLEM = "application/problem+json"
MEMBER = "member@members.example"


@pytest.fixture
def app(shop_db: ShopDatabase, app_factory: Callable[..., FastAPI]) -> FastAPI:
    """An app on ``shop_db`` (SQLite, or PostgreSQL behind RLS as the app role)."""
    return app_factory(make_settings(shop_db.url, migration_database_url=shop_db.owner_url))


def _outbox(app: FastAPI, kind: str) -> list[Any]:
    return [m for m in app.state.shopfront.mailer.sent if m.kind == kind]


async def _member(app: FastAPI, shop: Shop, email: str) -> User:
    state = app.state.shopfront
    async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
        user = await session.scalar(select(User).where(User.email == email))
    assert user is not None
    return user


async def _expire_tokens(app: FastAPI, shop: Shop) -> None:
    state = app.state.shopfront
    async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
        await session.execute(
            update(EmailToken)
            .where(EmailToken.tenant_id == uuid.UUID(shop.tenant_id))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()


async def _signed_in(client: httpx.AsyncClient, shop: Shop, email: str) -> dict[str, str]:
    login = await client.post(
        "/auth/login", json={"shop": shop.domain, "email": email, "password": OWNER_PASSWORD}
    )
    assert login.status_code == 200, login.text
    return bearer(login.json()["access_token"])


def _refused(response: httpx.Response, status: int, code: str) -> bool:
    return (
        response.status_code == status
        and response.headers["content-type"] == PROBLEM
        and response.json()["code"] == code
    )


@pytest.mark.anyio
async def test_sign_up_mails_a_token_that_verifies_the_email_exactly_once(app: FastAPI) -> None:
    """Sign-up mails the new member a token; it sets email_verified_at once, then is a 400."""
    async with client_for(app) as client:
        shop = await new_shop(client)
        await add_member(client, shop, MEMBER)
        before = await _member(app, shop, MEMBER)
        (mail,) = _outbox(app, "email_verification")
        first = await client.post("/auth/email/verify", json={"token": mail.token})
        again = await client.post("/auth/email/verify", json={"token": mail.token})
        after = await _member(app, shop, MEMBER)
    assert (mail.shop, mail.email) == (shop.domain, MEMBER)
    assert mail.token.startswith(f"sfv_{uuid.UUID(shop.tenant_id).hex}_")
    assert before.email_verified_at is None
    assert first.status_code == 204, first.text
    assert after.email_verified_at is not None
    assert _refused(again, 400, "auth.invalid_email_token"), again.text


@pytest.mark.anyio
async def test_expired_and_forged_verification_tokens_are_refused(app: FastAPI) -> None:
    """An expired token, one naming another shop, and a made-up one: the same 400, no change."""
    async with client_for(app) as client:
        shop = await new_shop(client, "one")
        other = await new_shop(client, "two")
        await add_member(client, shop, MEMBER)
        (mail,) = _outbox(app, "email_verification")
        moved = mail.token.replace(uuid.UUID(shop.tenant_id).hex, uuid.UUID(other.tenant_id).hex)
        answers = [
            await client.post("/auth/email/verify", json={"token": token})
            for token in (moved, "sfv_nothing", mail.token.replace("sfv_", "sfc_"))
        ]
        await _expire_tokens(app, shop)
        expired = await client.post("/auth/email/verify", json={"token": mail.token})
        user = await _member(app, shop, MEMBER)
    bodies = [
        {k: v for k, v in a.json().items() if k != "correlation_id"} for a in [*answers, expired]
    ]
    assert all(_refused(a, 400, "auth.invalid_email_token") for a in [*answers, expired])
    assert all(body == bodies[0] for body in bodies)
    assert user.email_verified_at is None


@pytest.mark.anyio
async def test_the_table_holds_only_keyed_hashes_of_email_tokens(app: FastAPI) -> None:
    """Every column of every email token row, read raw: no token, only its HMAC under its key."""
    async with client_for(app) as client:
        shop = await new_shop(client)
        member = await add_member(client, shop, MEMBER)
        headers = await _signed_in(client, shop, MEMBER)
        changed = await client.post(
            "/auth/email/change",
            json={"new_email": "new@members.example", "password": member["password"]},
            headers=headers,
        )
        state = app.state.shopfront
        async with tenant_session(state.db.sessions, uuid.UUID(shop.tenant_id)) as session:
            raw = text("SELECT * FROM email_tokens").execution_options(tenant_checked=True)
            rows = (await session.execute(raw)).all()
    tokens = [m.token for m in state.mailer.sent if m.kind.startswith("email_")]
    assert changed.status_code == 202, changed.text
    assert len(rows) == len(tokens) == 2
    stored = " ".join(str(value) for row in rows for value in row)
    key = derive_key(state.auth.reset_key, "shopfront email tokens")
    for token in tokens:
        assert token not in stored
        assert token.rsplit("_", 1)[1] not in stored
        assert hashlib.sha256(token.encode()).hexdigest() not in stored
        assert hmac.new(key, token.encode(), hashlib.sha256).hexdigest() in stored


@pytest.mark.anyio
async def test_email_change_needs_the_password_mails_the_new_address_and_confirm_swaps(
    app: FastAPI,
) -> None:
    """A wrong password is 401 with no mail; the token goes to the new address; confirm swaps."""
    new = "moved@members.example"
    async with client_for(app) as client:
        shop = await new_shop(client)
        await add_member(client, shop, MEMBER)
        headers = await _signed_in(client, shop, MEMBER)
        wrong = await client.post(
            "/auth/email/change", json={"new_email": new, "password": "not it"}, headers=headers
        )
        mailed_after_wrong = len(_outbox(app, "email_change"))
        asked = await client.post(
            "/auth/email/change",
            json={"new_email": new, "password": OWNER_PASSWORD},
            headers=headers,
        )
        (mail,) = _outbox(app, "email_change")
        unchanged = await _member(app, shop, MEMBER)
        confirmed = await client.post("/auth/email/change/confirm", json={"token": mail.token})
        again = await client.post("/auth/email/change/confirm", json={"token": mail.token})
        old_login = await client.post(
            "/auth/login", json={"shop": shop.domain, "email": MEMBER, "password": OWNER_PASSWORD}
        )
        await _signed_in(client, shop, new)
        moved = await _member(app, shop, new)
    assert _refused(wrong, 401, "auth.invalid_credentials"), wrong.text
    assert mailed_after_wrong == 0
    assert asked.status_code == 202, asked.text
    assert (mail.shop, mail.email) == (shop.domain, new)
    assert mail.token.startswith("sfc_")
    assert (unchanged.email, unchanged.email_verified_at) == (MEMBER, None)
    assert confirmed.status_code == 204, confirmed.text
    assert _refused(again, 400, "auth.invalid_email_token"), again.text
    assert old_login.status_code == 401
    assert moved.id == unchanged.id
    assert moved.email_verified_at is not None


@pytest.mark.anyio
async def test_a_taken_email_is_409_and_the_change_token_stays_usable(app: FastAPI) -> None:
    """Confirming to an address another member took meanwhile is 409; once freed, it works."""
    taken = "taken@members.example"
    async with client_for(app) as client:
        shop = await new_shop(client)
        await add_member(client, shop, MEMBER)
        headers = await _signed_in(client, shop, MEMBER)
        asked = await client.post(
            "/auth/email/change",
            json={"new_email": taken, "password": OWNER_PASSWORD},
            headers=headers,
        )
        (mail,) = _outbox(app, "email_change")
        await add_member(client, shop, taken)
        conflict = await client.post("/auth/email/change/confirm", json={"token": mail.token})
        still = await _member(app, shop, MEMBER)
        holder = await _member(app, shop, taken)
        removed = await client.delete(f"/members/{holder.id}", headers=shop.owner_headers)
        confirmed = await client.post("/auth/email/change/confirm", json={"token": mail.token})
        moved = await _member(app, shop, taken)
    assert asked.status_code == 202, asked.text
    assert _refused(conflict, 409, "auth.email_taken"), conflict.text
    assert still.email_verified_at is None
    assert removed.status_code == 204, removed.text
    assert confirmed.status_code == 204, confirmed.text
    assert moved.id == still.id


@pytest.mark.anyio
async def test_only_the_latest_token_of_its_purpose_works(app: FastAPI) -> None:
    """A second change request supersedes the first; a change token does not verify; expiry."""
    async with client_for(app) as client:
        shop = await new_shop(client)
        await add_member(client, shop, MEMBER)
        headers = await _signed_in(client, shop, MEMBER)
        for new in ("first@members.example", "second@members.example"):
            asked = await client.post(
                "/auth/email/change",
                json={"new_email": new, "password": OWNER_PASSWORD},
                headers=headers,
            )
            assert asked.status_code == 202, asked.text
        first, second = _outbox(app, "email_change")
        stale = await client.post("/auth/email/change/confirm", json={"token": first.token})
        crossed = await client.post("/auth/email/verify", json={"token": second.token})
        same = await client.post(
            "/auth/email/change",
            json={"new_email": MEMBER, "password": OWNER_PASSWORD},
            headers=headers,
        )
        await _expire_tokens(app, shop)
        expired = await client.post("/auth/email/change/confirm", json={"token": second.token})
        user = await _member(app, shop, MEMBER)
    assert _refused(stale, 400, "auth.invalid_email_token"), stale.text
    assert _refused(crossed, 400, "auth.invalid_email_token"), crossed.text
    assert _refused(same, 422, "request.validation_failed"), same.text
    assert _refused(expired, 400, "auth.invalid_email_token"), expired.text
    assert user.email == MEMBER


@pytest.mark.anyio
async def test_email_routes_are_rate_limited(
    shop_db: ShopDatabase, app_factory: Callable[..., FastAPI]
) -> None:
    """Token redemption is limited per client IP, change requests per member (429 problems)."""
    app = app_factory(
        make_settings(
            shop_db.url,
            migration_database_url=shop_db.owner_url,
            rate_limit_signup="4/3600",
            rate_limit_password_reset="1/3600",
        )
    )
    async with client_for(app) as client:
        shop = await new_shop(client)
        headers = shop.owner_headers
        body = {"new_email": "o2@x.example", "password": OWNER_PASSWORD}
        changes = [await client.post("/auth/email/change", json=body, headers=headers)]
        changes.append(await client.post("/auth/email/change", json=body, headers=headers))
        redeemed = [
            await client.post(path, json={"token": "sfv_guess"})
            for path in ("/auth/email/verify", "/auth/email/change/confirm") * 3
        ]
    assert [c.status_code for c in changes] == [202, 429]
    assert changes[1].json()["violated_policy"] == "email_change"
    assert [r.status_code for r in redeemed] == [400] * 4 + [429] * 2
    assert {r.json()["violated_policy"] for r in redeemed[4:]} == {"email_token_ip"}


def _psql(stmt: Any) -> tuple[str, dict[str, Any]]:
    compiled = stmt.compile(dialect=postgresql.dialect())  # pyformat: what psycopg takes
    return str(compiled), dict(compiled.params)


# 20 shops x 200 members, each with a used and a live token of every kind. The token rows
# are what the planner weighs; the members they point at are left out (foreign keys are not
# checked while seeding), so the seed does not depend on every column of ``users``.
SEED = """
SET session_replication_role = replica;
CREATE TEMP TABLE seed_users AS
SELECT gen_random_uuid() AS id, t.id AS tenant_id, n
FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 20)) t, generate_series(1, 200) n;
INSERT INTO email_tokens
    (id, tenant_id, user_id, purpose, email, token_hash, created_at, expires_at, used_at)
SELECT gen_random_uuid(), tenant_id, id, 'verify', 'u@x.example', md5(random()::text) || 'a',
       now(), now() + interval '1 hour', CASE WHEN k = 1 THEN now() END
FROM seed_users, generate_series(1, 2) k;
INSERT INTO password_resets (id, tenant_id, user_id, token_hash, expires_at, used_at)
SELECT gen_random_uuid(), tenant_id, id, md5(random()::text), now() + interval '1 hour',
       CASE WHEN k = 1 THEN now() END
FROM seed_users, generate_series(1, 2) k;
INSERT INTO invitations
    (id, tenant_id, email, role, token_hash, created_by, created_at, expires_at, accepted_at)
SELECT gen_random_uuid(), tenant_id, 'i@x.example', 'staff', md5(random()::text), 'seed',
       now(), now() + interval '1 hour', CASE WHEN k = 1 THEN now() END
FROM seed_users, generate_series(1, 2) k;
SET session_replication_role = DEFAULT;
"""


def _lookup(model: Any, live: Any, tenant: uuid.UUID, now: datetime) -> Any:
    """The statement the service runs to use a token (update the live row with that hash)."""
    stmt = update(model).where(
        model.tenant_id == tenant, model.token_hash == "0" * 64, live, model.expires_at > now
    )
    if model is EmailToken:
        stmt = stmt.where(EmailToken.purpose == "verify")
    return stmt.values({live.left.key: now})


LOOKUPS = {
    "email_tokens": (EmailToken, EmailToken.used_at.is_(None), "ix_email_tokens_live"),
    "password_resets": (
        PasswordReset,
        PasswordReset.used_at.is_(None),
        "ix_password_resets_live",
    ),
    "invitations": (Invitation, Invitation.accepted_at.is_(None), "ix_invitations_live"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("table", sorted(LOOKUPS))
async def test_token_lookup_uses_the_partial_index(pg_shop_db: ShopDatabase, table: str) -> None:
    """EXPLAIN of using a token shows the partial live-token index, which covers live rows only."""
    model, live, index = LOOKUPS[table]
    owner = pg_shop_db.owner_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(owner) as conn:
        conn.execute(SEED)
        conn.execute("ANALYZE")
        conn.execute("SET enable_seqscan = off")
        row = conn.execute("SELECT tenant_id FROM seed_users LIMIT 1").fetchone()
        assert row is not None
        sql, params = _psql(_lookup(model, live, row[0], datetime.now(UTC)))
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params))
        definition = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,)
        ).fetchone()
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan
    assert definition is not None
    assert "UNIQUE" in definition[0]
    assert "(tenant_id, token_hash)" in definition[0]
    assert definition[0].endswith(f"WHERE ({live.left.key} IS NULL)"), definition[0]
