"""Development mode as a first-time user meets it: cookie sign-in over plain HTTP, quiet logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from sf_support import OWNER_PASSWORD, client_for, make_settings
from shopfront.app import create_app
from shopfront.migrate import upgrade_async
from test_readme import _free_port

if TYPE_CHECKING:
    from pathlib import Path


async def _cookie_sign_in(sqlite_url: str, **settings: object) -> tuple[httpx.Response, int]:
    await upgrade_async(sqlite_url)
    app = create_app(make_settings(sqlite_url, **settings))
    try:
        async with client_for(app) as client:
            shop = {"name": "Acme", "domain": "acme.myshopify.com"}
            opened = await client.post(
                "/tenants",
                json={**shop, "owner_email": "o@acme.test", "owner_password": OWNER_PASSWORD},
            )
            assert opened.status_code == 201, opened.text
            login = await client.post(
                "/auth/login",
                json={
                    "shop": shop["domain"],
                    "email": "o@acme.test",
                    "password": OWNER_PASSWORD,
                    "mode": "cookie",
                },
            )
            assert login.status_code == 200, login.text
            # The client sends back only what a browser would on http://shop.test.
            sessions = await client.get("/auth/sessions")
            return login, sessions.status_code
    finally:
        await app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_development_cookies_are_not_secure_so_cookie_sign_in_works_over_http(
    sqlite_url: str,
) -> None:
    """In development session cookies lack `Secure`, so a plain-HTTP client signs in with them."""
    login, status = await _cookie_sign_in(sqlite_url, environment="development")
    cookies = login.headers.get_list("set-cookie")
    assert len(cookies) == 3
    assert not any("secure" in c.lower() for c in cookies)
    assert status == 200


@pytest.mark.anyio
async def test_outside_development_cookies_stay_secure(sqlite_url: str) -> None:
    """Outside development every session and CSRF cookie is `Secure` unless COOKIE_SECURE=false."""
    login, status = await _cookie_sign_in(sqlite_url, environment="test")
    cookies = login.headers.get_list("set-cookie")
    assert len(cookies) == 3
    assert all("secure" in c.lower() for c in cookies)
    assert status == 401  # a plain-HTTP client never sends them back


def _serve_dev(cwd: Path, *flags: str) -> str:
    """Run `shopfront serve` on development defaults, call two routes, stop it; its output."""
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "ENVIRONMENT", "MIGRATION_DATABASE_URL"}
    }
    env["SHUTDOWN_DRAIN_SECONDS"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shopfront", "serve", "--port", str(port), *flags],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not start: {proc.communicate()[0].decode()[-2000:]}")
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert live.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode()
    return out


def test_serve_logs_requests_only_with_access_log_and_never_floods(tmp_path: Path) -> None:
    """Without --access-log no request line is logged, with it one per request; no library debug."""
    quiet = _serve_dev(tmp_path)
    loud = _serve_dev(tmp_path, "--access-log")
    assert '"GET /health/live HTTP/1.1" 200' not in quiet
    assert '"GET /health/live HTTP/1.1" 200' in loud
    assert '"GET /health/ready HTTP/1.1" 200' in loud
    for out in (quiet, loud):
        assert "aiosqlite" not in out
        assert len(out.splitlines()) < 40, out
