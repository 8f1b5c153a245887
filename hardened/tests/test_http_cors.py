"""CORS: exact and anchored-pattern origins, preflight, and blocked origins logged and counted."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from hardened.http._cors import CORSMiddleware, CORSPolicy

if TYPE_CHECKING:
    from hardened.types import Receive, Scope, Send

SHOP = "https://a-shop.myshopify.com"
POLICY = CORSPolicy(
    allow_origins=("https://app.example.com",),
    allow_origin_patterns=("https://*.myshopify.com",),
    expose_headers=("x-request-id",),
    allow_credentials=True,
)


class App:
    """Answers 200 and counts calls; can set headers of its own."""

    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.calls = 0
        self.headers = headers or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"ok"})


def client_for(app: App, policy: CORSPolicy = POLICY) -> httpx.AsyncClient:
    guarded = CORSMiddleware(app, policy=policy)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://api")


def blocked_count(kind: str) -> float:
    return REGISTRY.get_sample_value("hardened_http_cors_blocked_total", {"kind": kind}) or 0.0


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "content-type, idempotency-key",
    }


@pytest.mark.anyio
@pytest.mark.parametrize("origin", ["https://app.example.com", SHOP, "https://A.MyShopify.com"])
async def test_allowed_origins_get_cors_headers(origin: str) -> None:
    """Exact and pattern-matched origins get their origin echoed, credentials, exposed headers."""
    app = App()
    async with client_for(app) as client:
        response = await client.get("/orders", headers={"origin": origin})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-expose-headers"] == "x-request-id"
    assert response.headers["vary"] == "Origin"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.com/x.myshopify.com",
        "https://a.myshopify.com.evil.com",
        "https://myshopify.com",
        "https://a.b.myshopify.com",
        "http://a.myshopify.com",
        "https://a.myshopify.com:8443",
        "https://a_b.myshopify.com",
        "https://app.example.com.evil.com",
        "null",
    ],
)
async def test_look_alike_origins_are_blocked(origin: str) -> None:
    """Suffix, path, scheme, port, nested-label and 'null' look-alikes never match."""
    assert not POLICY.allows(origin)
    async with client_for(App()) as client:
        response = await client.get("/orders", headers={"origin": origin})
    assert cors_headers(response) == {}


@pytest.mark.anyio
async def test_preflight_is_answered_directly_with_max_age() -> None:
    """An allowed preflight gets 204 with methods, headers and Max-Age 600; the app never runs."""
    app = App()
    async with client_for(app) as client:
        response = await client.options("/orders", headers=preflight_headers(SHOP))
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.headers["access-control-max-age"] == "600"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "idempotency-key" in response.headers["access-control-allow-headers"]
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["vary"] == "Origin"
    assert app.calls == 0


@pytest.mark.anyio
async def test_blocked_preflight_is_403_problem_logged_once_and_counted() -> None:
    """A preflight from a blocked origin: 403 cors.origin_blocked, no CORS headers, 1 log, +1."""
    app = App()
    before = blocked_count("preflight")
    async with client_for(app) as client:
        with capture_logs() as logs:
            response = await client.options(
                "/orders", headers=preflight_headers("https://evil.example")
            )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (403, "cors.origin_blocked")
    assert "correlation_id" in body
    assert cors_headers(response) == {}
    assert app.calls == 0
    events = [e for e in logs if e["event"] == "cors.blocked"]
    assert len(events) == 1
    assert events[0]["origin"] == "https://evil.example"
    assert events[0]["path"] == "/orders"
    assert events[0]["kind"] == "preflight"
    assert blocked_count("preflight") == before + 1


@pytest.mark.anyio
async def test_blocked_simple_request_passes_without_cors_headers_logged_once_and_counted() -> None:
    """A simple request from a blocked origin reaches the app, gets no CORS headers, 1 log, +1."""
    app = App(headers=[(b"access-control-allow-origin", b"*")])  # even if the app set one
    before = blocked_count("simple")
    async with client_for(app) as client:
        with capture_logs() as logs:
            response = await client.post("/orders", headers={"origin": "https://evil.example"})
    assert response.status_code == 200
    assert app.calls == 1
    assert cors_headers(response) == {}
    assert response.headers["vary"] == "Origin"
    events = [e for e in logs if e["event"] == "cors.blocked"]
    assert len(events) == 1
    assert (events[0]["origin"], events[0]["path"], events[0]["kind"]) == (
        "https://evil.example",
        "/orders",
        "simple",
    )
    assert blocked_count("simple") == before + 1


@pytest.mark.anyio
async def test_same_origin_request_is_untouched_apart_from_vary() -> None:
    """Without Origin, the app runs and no CORS header or log appears; Vary: Origin is kept."""
    app = App(headers=[(b"vary", b"Accept-Encoding")])
    async with client_for(app) as client:
        with capture_logs() as logs:
            response = await client.get("/orders")
    assert response.status_code == 200
    assert cors_headers(response) == {}
    assert response.headers["vary"] == "Accept-Encoding, Origin"
    assert logs == []


@pytest.mark.anyio
async def test_wildcard_policy_answers_star_and_reflects_requested_headers() -> None:
    """With '*' origins and headers (no credentials), '*' is sent, requested headers reflected."""
    policy = CORSPolicy(allow_origins=("*",), allow_headers=("*",), max_age=60)
    async with client_for(App(), policy) as client:
        simple = await client.get("/", headers={"origin": "https://anyone.example"})
        preflight = await client.options("/", headers=preflight_headers("https://anyone.example"))
    assert simple.headers["access-control-allow-origin"] == "*"
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert preflight.headers["access-control-allow-headers"] == "content-type, idempotency-key"
    assert preflight.headers["access-control-max-age"] == "60"
    assert preflight.headers["vary"] == "Origin, Access-Control-Request-Headers"


@pytest.mark.anyio
async def test_options_without_request_method_is_not_a_preflight() -> None:
    """An OPTIONS with Origin but no Access-Control-Request-Method goes to the app as usual."""
    app = App()
    async with client_for(app) as client:
        response = await client.options("/", headers={"origin": SHOP})
    assert response.status_code == 200
    assert app.calls == 1
    assert response.headers["access-control-allow-origin"] == SHOP


def test_port_wildcard_pattern_matches_any_port_only() -> None:
    """'http://localhost:*' matches any port on localhost and nothing else."""
    policy = CORSPolicy(allow_origin_patterns=("http://localhost:*",))
    assert policy.allows("http://localhost:5173")
    assert not policy.allows("http://localhost")
    assert not policy.allows("http://localhost.evil.com:5173")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"allow_origins": ("*",), "allow_credentials": True}, "allow_credentials"),
        ({"allow_headers": ("*",), "allow_credentials": True}, "allow_credentials"),
        ({"allow_origins": ("null",)}, "null"),
        ({"allow_origins": ("https://*.example.com",)}, "allow_origin_patterns|label"),
        ({"allow_origin_patterns": ("https://*.com",)}, "left-most"),
        ({"allow_origin_patterns": ("https://a.*.example.com",)}, "left-most"),
        ({"allow_origin_patterns": ("https://evil.com/x.example.com",)}, "scheme://host"),
        ({"max_age": -1}, "max_age"),
    ],
)
def test_unsafe_policies_are_rejected_at_construction(
    options: dict[str, object], message: str
) -> None:
    """Credentials with '*', the null origin, broad or malformed patterns fail fast."""
    with pytest.raises(ValueError, match=message):
        CORSPolicy(**options)  # type: ignore[arg-type]
