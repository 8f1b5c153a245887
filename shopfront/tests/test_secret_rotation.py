"""Every secret rotates: what was issued under the old value survives its rotation.

Tokens, sessions, CSRF tokens and idempotent retries work after a restart with the
new secret and the old one as ``*_PREVIOUS``, and stop once the previous is dropped.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt
import pytest

from hardened.config import ConfigError
from hardened.crypto import generate_keyring_entry
from sf_support import bearer, client_for, idem, make_settings, new_shop, order_body, sign_in
from shopfront.cli import main
from shopfront.migrate import upgrade_async
from shopfront.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from fastapi import FastAPI

OLD, NEW = secrets.token_urlsafe(48), secrets.token_urlsafe(48)


def today() -> date:
    """The date `Settings` counts secret ages from (UTC)."""
    return datetime.now(UTC).date()


@pytest.fixture
async def restart(
    sqlite_url: str, redis_url: str, app_factory: Callable[..., FastAPI]
) -> Callable[..., FastAPI]:
    """Build an app on one database and Redis (sessions outlive it), as after a restart."""
    await upgrade_async(sqlite_url)
    base = {
        "jwt_secret": secrets.token_urlsafe(48),
        "session_secret": secrets.token_urlsafe(48),
        "cookie_secret": secrets.token_urlsafe(48),
    }

    def start(**overrides: Any) -> FastAPI:
        settings = make_settings(
            sqlite_url, redis_url=redis_url, cookie_secure=False, **{**base, **overrides}
        )
        return app_factory(settings)

    return start


@pytest.mark.anyio
async def test_access_token_of_the_old_jwt_secret_works_until_the_previous_is_dropped(
    restart: Callable[..., FastAPI],
) -> None:
    """Issued under the old secret: accepted after a restart with it as previous, 401 without."""
    async with client_for(restart(jwt_secret=OLD)) as before:
        shop = await new_shop(before)
        token = (await sign_in(before, shop.domain, shop.owner_email))["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    rotated = {"jwt_secret": NEW, "jwt_key_id": "k2"}
    previous = {"jwt_secret_previous": OLD, "jwt_previous_key_id": "k1"}
    async with client_for(restart(**rotated, **previous)) as overlap:
        kept = await overlap.get("/auth/sessions", headers=bearer(token))
        fresh = (await sign_in(overlap, shop.domain, shop.owner_email))["access_token"]
    assert kept.status_code == 200, kept.text
    assert jwt.get_unverified_header(fresh)["kid"] == "k2"
    past = datetime.now(UTC) - timedelta(seconds=1)
    for after in (restart(**rotated), restart(**rotated, **previous, jwt_previous_until=past)):
        async with client_for(after) as client:
            dropped = await client.get("/auth/sessions", headers=bearer(token))
            still = await client.get("/auth/sessions", headers=bearer(fresh))
        assert (dropped.status_code, dropped.json()["code"]) == (401, "auth.invalid_token")
        assert still.status_code == 200


@pytest.mark.anyio
async def test_csrf_token_from_before_a_cookie_secret_rotation_passes_with_the_previous(
    restart: Callable[..., FastAPI],
) -> None:
    """A cookie session's CSRF token survives COOKIE_SECRET rotation with the previous set."""
    async with client_for(restart(cookie_secret=OLD)) as before:
        shop = await new_shop(before)
        login = await before.post(
            "/auth/login",
            json={
                "shop": shop.domain,
                "email": shop.owner_email,
                "password": "correct horse battery staple",
                "mode": "cookie",
            },
        )
        assert login.status_code == 200, login.text
        cookies = before.cookies
        csrf = cookies["csrf_token"]
    async with client_for(restart(cookie_secret=NEW)) as dropped:
        dropped.cookies.update(cookies)
        refused = await dropped.post("/auth/logout", headers={"x-csrf-token": csrf})
    assert (refused.status_code, refused.json()["code"]) == (403, "csrf.invalid")
    async with client_for(restart(cookie_secret=NEW, cookie_secret_previous=OLD)) as overlap:
        overlap.cookies.update(cookies)
        passed = await overlap.post("/auth/logout", headers={"x-csrf-token": csrf})
    assert passed.status_code == 204, passed.text


@pytest.mark.anyio
async def test_refresh_token_and_retry_survive_a_session_secret_rotation(
    restart: Callable[..., FastAPI],
) -> None:
    """With SESSION_SECRET_PREVIOUS a refresh token refreshes and an order retry replays."""
    async with client_for(restart(session_secret=OLD)) as before:
        shop = await new_shop(before)
        refresh = (await sign_in(before, shop.domain, shop.owner_email))["refresh_token"]
        headers = idem(shop.headers)
        order = await before.post("/orders", json=order_body(shop), headers=headers)
    assert order.status_code == 201, order.text
    async with client_for(restart(session_secret=NEW)) as dropped:
        lost = await dropped.post("/auth/refresh", json={"refresh_token": refresh})
        mismatch = await dropped.post("/orders", json=order_body(shop), headers=headers)
    assert (lost.status_code, lost.json()["code"]) == (401, "auth.invalid_refresh")
    assert mismatch.status_code == 422
    async with client_for(restart(session_secret=NEW, session_secret_previous=OLD)) as overlap:
        refreshed = await overlap.post("/auth/refresh", json={"refresh_token": refresh})
        retry = await overlap.post("/orders", json=order_body(shop), headers=headers)
    assert refreshed.status_code == 200, refreshed.text
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == order.json()


def test_previous_secrets_follow_the_secret_rules_and_are_never_generated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weak, repeated or kid-less previous secrets name their variable; development makes none."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"session_secret_previous": "changeme" * 8}, "SESSION_SECRET_PREVIOUS"),
        ({"cookie_secret_previous": "short"}, "COOKIE_SECRET_PREVIOUS"),
        ({"jwt_secret": NEW, "jwt_secret_previous": NEW, "jwt_previous_key_id": "k0"}, "equals"),
        ({"jwt_secret_previous": OLD}, "JWT_PREVIOUS_KEY_ID: is required"),
        ({"jwt_secret_previous": OLD, "jwt_previous_key_id": "k1"}, "must differ"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            make_settings("sqlite://", **overrides)
        assert "changeme" not in str(info.value)
        assert NEW not in str(info.value)
        assert OLD not in str(info.value)
    monkeypatch.chdir(tmp_path)
    for name in ("JWT_SECRET_PREVIOUS", "SESSION_SECRET_PREVIOUS", "COOKIE_SECRET_PREVIOUS"):
        monkeypatch.delenv(name, raising=False)
    dev = Settings.load(environment="development")
    assert dev.jwt_secret is not None
    assert dev.jwt_secret_previous is None
    assert dev.session_secret_previous is dev.cookie_secret_previous is None


def test_stale_secrets_fail_readiness_in_production() -> None:
    """In production a secret past SECRET_MAX_AGE_DAYS is a failed check naming each variable."""
    strong = {
        n: secrets.token_urlsafe(48) for n in ("jwt_secret", "session_secret", "cookie_secret")
    }
    strong["encryption_key"] = generate_keyring_entry("k1")
    stale = today() - timedelta(days=120)
    prod = Settings.load(environment="production", secrets_rotated_at=stale, **strong)
    [check] = [c for c in prod.deploy_checks() if c.name.startswith("secrets younger")]
    assert not check.ok
    for variable in ("JWT_SECRET", "SESSION_SECRET", "COOKIE_SECRET"):
        assert f"{variable} rotated 120 days ago" in check.detail
    assert all(value not in check.detail for value in strong.values())
    assert prod.secret_warnings() == []
    fresh = Settings.load(environment="production", secrets_rotated_at=today(), **strong)
    assert all(c.ok for c in fresh.deploy_checks() if c.name.startswith("secrets younger"))


def test_check_warns_about_stale_secrets_in_development(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`shopfront check` in development lists each stale secret as a warning, never its value."""
    monkeypatch.chdir(tmp_path)
    for name in ("ENVIRONMENT", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JWT_SECRET", NEW)
    monkeypatch.setenv("SECRETS_ROTATED_AT", (today() - timedelta(days=91)).isoformat())
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[warn] JWT_SECRET rotated 91 days ago" in out
    assert "[warn] COOKIE_SECRET rotated 91 days ago" in out
    assert "SECRET_MAX_AGE_DAYS=90" in out
    assert NEW not in out
    assert out.rstrip().endswith("NOT ready to deploy")
    monkeypatch.setenv("SECRET_MAX_AGE_DAYS", "120")
    assert main(["check"]) == 1
    assert "[warn]" not in capsys.readouterr().out


@pytest.mark.anyio
async def test_reset_links_and_invitations_mailed_before_a_rotation_still_work(
    restart: Callable[..., FastAPI],
) -> None:
    """Reset links and invitations made under the old SESSION_SECRET redeem in the overlap."""
    before_app = restart(session_secret=OLD)
    async with client_for(before_app) as before:
        shop = await new_shop(before)
        asked = await before.post(
            "/auth/password-reset", json={"shop": shop.domain, "email": shop.owner_email}
        )
        assert asked.status_code == 202, asked.text
        invited = await before.post(
            "/invitations",
            json={"email": "late@member.example", "role": "staff"},
            headers=shop.owner_headers,
        )
        assert invited.status_code == 201, invited.text
    (mail,) = [m for m in before_app.state.shopfront.mailer.sent if m.kind == "password_reset"]
    reset = {"shop": shop.domain, "token": mail.token, "new_password": "a new long passphrase"}
    join = {"shop": shop.domain, "invitation": invited.json()["token"], "password": "x" * 20}
    async with client_for(restart(session_secret=NEW)) as dropped:
        refused = await dropped.post("/auth/password-reset/confirm", json=reset)
        not_joined = await dropped.post("/auth/signup", json=join)
    assert (refused.status_code, refused.json()["code"]) == (401, "auth.invalid_reset_token")
    assert (not_joined.status_code, not_joined.json()["code"]) == (401, "auth.invalid_invitation")
    async with client_for(restart(session_secret=NEW, session_secret_previous=OLD)) as overlap:
        confirmed = await overlap.post("/auth/password-reset/confirm", json=reset)
        joined = await overlap.post("/auth/signup", json=join)
    assert confirmed.status_code == 204, confirmed.text
    assert joined.status_code == 201, joined.text
