import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from alembic.script import ScriptDirectory

from hardened.crypto import generate_keyring_entry
from sf_support import client_for
from shopfront.app import create_app
from shopfront.cli import main
from shopfront.migrate import alembic_config
from shopfront.settings import Settings

_SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "SESSION_SECRET", "COOKIE_SECRET")


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS and k != "ENVIRONMENT"}
    env.update(values)
    return env


def test_serve_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    """`shopfront serve` in production with missing and short secrets exits 2 naming each one."""
    short = "short-secret-value-123"
    proc = subprocess.run(
        [sys.executable, "-m", "shopfront", "serve", "--port", "1"],
        env=_env(ENVIRONMENT="production", JWT_SECRET=short),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "JWT_SECRET: must be at least 32 bytes" in proc.stderr
    assert "SESSION_SECRET: is required" in proc.stderr
    assert "COOKIE_SECRET: is required" in proc.stderr
    assert short not in proc.stderr + proc.stdout
    assert not (tmp_path / "shopfront.db").exists()


def test_check_reports_not_ready_in_development(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`shopfront check` exits 1 on development defaults and says why."""
    monkeypatch.chdir(tmp_path)  # development keeps its secrets in the working directory
    for name in (*_SERVICE_VARS, "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] environment is production" in out
    assert "[FAIL] JWT_SECRET is set" in out
    assert "NOT ready to deploy" in out


def _as(url: str, user: str, password: str | None = None) -> str:
    parts = urlsplit(url)
    auth = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port or 5432}"))


def _production(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    env = {
        "ENVIRONMENT": "production",
        "AUTH_REQUIRE_REDIS_FOR_TOKENS": "true",
        "HSTS": "true",
        "ALLOWED_HOSTS": "api.shop.example",
        **{name: secrets.token_urlsafe(48) for name in _SERVICE_VARS[2:]},
        "ENCRYPTION_KEY": generate_keyring_entry("k1"),
        **values,
    }
    for name in ("MIGRATION_DATABASE_URL", "DB_APP_ROLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _drop_role(database: str, role: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f"DROP OWNED BY {role}")
    admin = urlunsplit(urlsplit(database)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def roles(postgres_url: str) -> Iterator[list[str]]:
    """Fresh role names for one test (roles are cluster-wide), dropped afterwards."""
    made: list[str] = []
    yield made
    for role in reversed(made):
        _drop_role(postgres_url, role)


def _new_role(roles: list[str]) -> str:
    roles.append(f"sf_role_{secrets.token_hex(4)}")
    return roles[-1]


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def test_check_fails_when_the_database_and_redis_are_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`shopfront check` connects: a complete production config with nothing listening fails."""
    _production(
        monkeypatch,
        DATABASE_URL="postgresql://app:s3cret-pw@127.0.0.1:1/shop",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] database reachable: app@127.0.0.1:1/shop" in out
    assert "[FAIL] Redis reachable: 127.0.0.1:1/0" in out
    assert "NOT ready to deploy" in out
    assert "s3cret-pw" not in out


def test_migrate_lets_the_app_role_in_database_url_log_in_with_its_password(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    postgres_url: str,
    redis_url: str,
    roles: list[str],
) -> None:
    """After `migrate` the role in DATABASE_URL logs in (a SCRAM verifier stored); check passes."""
    role, password = _new_role(roles), "pw-" + secrets.token_hex(8)
    _production(
        monkeypatch,
        MIGRATION_DATABASE_URL=postgres_url,
        DATABASE_URL=_as(postgres_url, role, password),
        DB_APP_ROLE=role,
        REDIS_URL=redis_url,
    )
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert f"role {role} can log in (is the app role; its password from DATABASE_URL)" in out
    with psycopg.connect(postgres_url) as conn:
        login, verifier, superuser, bypass = conn.execute(
            "SELECT rolcanlogin, rolpassword, rolsuper, rolbypassrls FROM pg_authid"
            " WHERE rolname = %s",
            (role,),
        ).fetchone()
    assert (login, superuser, bypass) == (True, False, False)
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert password not in verifier
    with psycopg.connect(_as(postgres_url, role)) as conn:  # trust auth: LOGIN is what counts
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (0,)

    assert main(["check"]) == 0
    report = capsys.readouterr().out
    assert f"[ok] migrations at head: at {_head()}, head {_head()}" in report
    assert f"[ok] app role bound by row-level security: {role}: not superuser" in report
    assert "[ok] app role can read and write: 4 rights on" in report
    assert "[ok] row-level security forced on tenant tables" in report
    assert "[ok] Redis reachable" in report
    assert report.rstrip().endswith("ready to deploy")
    assert password not in report


def test_migrate_makes_another_login_user_a_member_of_the_app_role(
    monkeypatch: pytest.MonkeyPatch, postgres_url: str, roles: list[str]
) -> None:
    """A DATABASE_URL user other than the app role becomes a login member of it, bound by RLS."""
    app_role, login = _new_role(roles), _new_role(roles)
    _production(
        monkeypatch,
        MIGRATION_DATABASE_URL=postgres_url,
        DATABASE_URL=_as(postgres_url, login),
        DB_APP_ROLE=app_role,
    )
    assert main(["migrate"]) == 0
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            "SELECT r.rolcanlogin, r.rolbypassrls, pg_has_role(r.rolname, %s, 'USAGE'),"
            " a.rolcanlogin FROM pg_roles r, pg_roles a WHERE r.rolname = %s AND a.rolname = %s",
            (app_role, login, app_role),
        ).fetchone()
    assert row == (True, False, True, False)
    with psycopg.connect(_as(postgres_url, login)) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_check_fails_before_migrations_and_when_connected_as_the_owner(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    postgres_url: str,
    redis_url: str,
) -> None:
    """An empty database is not at head, and a superuser connection is not bound by RLS: exit 1."""
    _production(monkeypatch, DATABASE_URL=postgres_url, REDIS_URL=redis_url)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] migrations at head: at nothing, head {_head()}: run shopfront migrate" in out
    assert re.search(r"\[FAIL\] app role bound by row-level security: \w+: superuser", out)
    assert "[ok] database reachable" in out


def _dev(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # development keeps its SQLite file and secrets here
    for name in (*_SERVICE_VARS, "ENVIRONMENT", "MIGRATION_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


async def _get(path: str, key: str) -> httpx.Response:
    app = create_app(Settings.load())
    try:
        async with client_for(app) as client:
            return await client.get(path, headers={"authorization": f"Bearer {key}"})
    finally:
        await app.state.shopfront.db.aclose()


def test_create_shop_and_top_up_give_a_working_key_and_credits_in_development(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`create-shop` prints a working API key; `top-up` adds credits, logged as a security event."""
    _dev(monkeypatch, tmp_path)
    monkeypatch.setenv("OWNER_PASSWORD", "correct horse battery staple")
    assert main(["migrate"]) == 0
    argv = ["create-shop", "--name", "Acme", "--domain", "Acme.myshopify.com"]
    argv += ["--owner-email", "owner@acme.test", "--owner-password-env", "OWNER_PASSWORD"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    key = re.search(r"api key \(admin, shown once\): (sfk_\S+)", out)
    tenant = re.search(r"shop acme\.myshopify\.com \(([0-9a-f-]{36})\)", out)
    assert key, out
    assert tenant, out
    assert "correct horse" not in out

    import asyncio

    shop = asyncio.run(_get(f"/tenants/{tenant.group(1)}", key.group(1)))
    assert shop.status_code == 200, shop.text
    assert main(["top-up", "--domain", "acme.myshopify.com", "--amount", "1500"]) == 0
    captured = capsys.readouterr()
    assert "+1500 credits, 1500 available" in captured.out
    assert "security.credits_granted" in captured.out + captured.err
    wallet = asyncio.run(_get("/wallet", key.group(1)))
    assert wallet.json()["available"] == 1500, wallet.text


def test_create_shop_refuses_a_bad_domain_and_top_up_refuses_outside_development(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A domain outside the suffixes is exit 1 with the reason; top-up in production is exit 2."""
    _dev(monkeypatch, tmp_path)
    monkeypatch.setenv("OWNER_PASSWORD", "correct horse battery staple")
    assert main(["migrate"]) == 0
    argv = ["create-shop", "--name", "Acme", "--domain", "acme.example.org"]
    argv += ["--owner-email", "owner@acme.test", "--owner-password-env", "OWNER_PASSWORD"]
    assert main(argv) == 1
    assert "domain" in capsys.readouterr().err
    _production(monkeypatch, DATABASE_URL="sqlite+aiosqlite:///shopfront.db")
    assert main(["top-up", "--domain", "acme.myshopify.com", "--amount", "10"]) == 2
    assert "ENVIRONMENT: top-up grants free credits: development only" in capsys.readouterr().err
