"""Security headers: sane defaults, HSTS only when configured, per-path CSP, app headers win."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from hardened.http._headers import (
    API_CSP,
    HSTS,
    SWAGGER_UI_CSP,
    SecurityHeaders,
    SecurityHeadersMiddleware,
)

if TYPE_CHECKING:
    from hardened.types import Receive, Scope, Send


async def fetch(
    path: str = "/",
    *,
    config: SecurityHeaders | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> httpx.Response:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers or []})
        await send({"type": "http.response.body", "body": b"{}"})

    guarded = SecurityHeadersMiddleware(app, config=config)
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="https://api") as client:
        return await client.get(path)


@pytest.mark.anyio
async def test_defaults_lock_down_a_json_api() -> None:
    """By default: nosniff, DENY, strict referrer, COOP same-origin and CSP default-src 'none'."""
    response = await fetch()
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert (
        response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    )
    assert "permissions-policy" not in response.headers


@pytest.mark.anyio
async def test_hsts_is_sent_only_when_configured() -> None:
    """No HSTS by default; HSTS() sends two years with includeSubDomains, preload when asked."""
    assert "strict-transport-security" not in (await fetch()).headers
    plain = await fetch(config=SecurityHeaders(hsts=HSTS()))
    assert plain.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    preload = await fetch(config=SecurityHeaders(hsts=HSTS(preload=True)))
    assert preload.headers["strict-transport-security"] == (
        "max-age=63072000; includeSubDomains; preload"
    )


def test_hsts_preload_requires_a_preloadable_policy() -> None:
    """Preload with under a year or without includeSubDomains fails at configuration time."""
    with pytest.raises(ValueError, match="preload"):
        HSTS(max_age=3600, preload=True)
    with pytest.raises(ValueError, match="preload"):
        HSTS(include_subdomains=False, preload=True)


@pytest.mark.anyio
async def test_app_headers_are_never_overridden() -> None:
    """A header the app already set (any case) is kept as is, not duplicated."""
    response = await fetch(
        headers=[(b"X-Frame-Options", b"SAMEORIGIN"), (b"content-security-policy", b"sandbox")]
    )
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers.get_list("content-security-policy") == ["sandbox"]
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.anyio
async def test_docs_prefix_gets_its_relaxed_csp_and_nothing_else_does() -> None:
    """A per-prefix override relaxes CSP under /docs only (by segment), other headers unchanged."""
    config = SecurityHeaders(csp_overrides={"/docs": SWAGGER_UI_CSP, "/docs/raw": None})
    docs = await fetch("/docs", config=config)
    nested = await fetch("/docs/oauth2-redirect", config=config)
    raw = await fetch("/docs/raw/x", config=config)
    lookalike = await fetch("/docsbad", config=config)
    assert docs.headers["content-security-policy"] == SWAGGER_UI_CSP
    assert nested.headers["content-security-policy"] == SWAGGER_UI_CSP
    assert "content-security-policy" not in raw.headers
    assert lookalike.headers["content-security-policy"] == API_CSP
    assert docs.headers["x-frame-options"] == "DENY"


@pytest.mark.anyio
async def test_headers_can_be_turned_off_and_permissions_policy_on() -> None:
    """None disables a header; permissions_policy adds Permissions-Policy."""
    config = SecurityHeaders(
        frame_options=None, content_security_policy=None, permissions_policy="camera=()"
    )
    response = await fetch(config=config)
    assert "x-frame-options" not in response.headers
    assert "content-security-policy" not in response.headers
    assert response.headers["permissions-policy"] == "camera=()"


def test_config_is_frozen_and_rejects_header_injection() -> None:
    """Overrides are copied read-only, and CR/LF in a header value is refused."""
    overrides = {"/docs": SWAGGER_UI_CSP}
    config = SecurityHeaders(csp_overrides=overrides)
    overrides["/docs"] = "default-src *"
    assert config.csp_for("/docs") == SWAGGER_UI_CSP
    with pytest.raises(TypeError):
        config.csp_overrides["/x"] = None  # type: ignore[index]
    with pytest.raises(ValueError, match="single-line"):
        SecurityHeaders(referrer_policy="no-referrer\r\nSet-Cookie: a=b")
    with pytest.raises(ValueError, match="start with '/'"):
        SecurityHeaders(csp_overrides={"docs": None})


@pytest.mark.anyio
async def test_non_http_scopes_pass_through_untouched() -> None:
    """Lifespan (and WebSocket) scopes reach the app with the original send."""
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(send)

    async def send(message: object) -> None:
        raise AssertionError

    async def receive() -> dict[str, object]:
        return {}

    await SecurityHeadersMiddleware(app)({"type": "lifespan"}, receive, send)
    assert seen == [send]
