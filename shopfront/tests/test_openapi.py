"""The OpenAPI says how to authenticate and which writes need a key; /docs works offline."""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
import socket
import uuid
from html.parser import HTMLParser
from string import Formatter
from typing import TYPE_CHECKING, Any

import pytest

from hardened.testing import declared_requirements
from sf_support import api_key, new_shop

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx
    from fastapi import FastAPI

PROBLEM = "application/problem+json"
ALL_SCHEMES = {"ApiKey", "AccessToken", "CookieSession"}
USER_SCHEMES = {"AccessToken", "CookieSession"}


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def _key_headers(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p
        for p in operation.get("parameters", [])
        if p["in"] == "header" and p["name"].lower() in {"idempotency-key", "x-idempotency-key"}
    ]


def _concrete(path: str) -> str:
    """The template with a made-up UUID for each parameter (the router finds the route)."""
    names = {name for _, name, _, _ in Formatter().parse(path) if name}
    return path.format(**{name: str(uuid.uuid4()) for name in names})


async def _call_without_key(
    client: httpx.AsyncClient, method: str, path: str, operation: dict[str, Any], **headers: str
) -> httpx.Response:
    """The operation with a harmless body of its declared media type, and no Idempotency-Key."""
    content = operation.get("requestBody", {}).get("content", {})
    media = next(iter(content), None)
    body = b"" if media is None else (b"{}" if "json" in media else b"sku\n")
    if media is not None:
        headers["content-type"] = media
    return await client.request(method, _concrete(path), content=body, headers=headers)


def _missing_key(response: httpx.Response) -> bool:
    return (
        response.status_code == 400
        and response.headers["content-type"] == PROBLEM
        and response.json()["code"] == "idempotency.key_missing"
    )


@pytest.mark.anyio
async def test_openapi_declares_the_three_ways_to_authenticate(client: httpx.AsyncClient) -> None:
    """API keys and access tokens are bearer schemes, the cookie session an apiKey cookie."""
    schemes = (await client.get("/openapi.json")).json()["components"]["securitySchemes"]
    assert set(schemes) == ALL_SCHEMES
    assert schemes["ApiKey"]["type"] == "http"
    assert schemes["ApiKey"]["scheme"] == "bearer"
    assert "sfk_" in schemes["ApiKey"]["description"]
    assert schemes["AccessToken"] == {**schemes["AccessToken"], "type": "http", "scheme": "bearer"}
    assert schemes["AccessToken"]["bearerFormat"] == "JWT"
    cookie = schemes["CookieSession"]
    assert (cookie["type"], cookie["in"], cookie["name"]) == ("apiKey", "cookie", "access_token")
    assert "x-csrf-token" in cookie["description"].lower()


@pytest.mark.anyio
async def test_every_operation_security_is_its_declared_permission(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Public ↔ [], own-account routes ↔ the user schemes only, any permission ↔ all three."""
    schema = (await client.get("/openapi.json")).json()
    declared = declared_requirements(app)
    seen = 0
    for method, path, operation in _operations(schema):
        requirement = declared[(method, path)]
        assert requirement is not None, f"{method} {path} declares nothing"
        assert "security" in operation, f"{method} {path} documents no security"
        listed = {name for entry in operation["security"] for name in entry}
        assert all(entry[name] == [] for entry in operation["security"] for name in entry)
        if requirement.level == "public":
            assert operation["security"] == [], f"{method} {path} is public"
        elif requirement.kind == "user":
            assert listed == USER_SCHEMES, f"{method} {path} is for members only"
        else:
            assert listed == ALL_SCHEMES, f"{method} {path}"
        if requirement.permission is not None:
            assert f"`{requirement.permission}`" in operation["description"]
        if requirement.level != "public":
            assert operation["responses"]["401"]["content"][PROBLEM]
            assert operation["responses"]["403"]["content"][PROBLEM]
        seen += 1
    assert seen == len(list(_operations(schema))) > 40
    public = {(m, p) for m, p, op in _operations(schema) if op["security"] == []}
    assert {
        ("POST", "/tenants"),
        ("POST", "/auth/login"),
        ("GET", "/health/live"),
        ("GET", "/health/ready"),
    } <= public


@pytest.mark.anyio
async def test_idempotency_key_is_documented_exactly_where_the_service_requires_it(
    client: httpx.AsyncClient,
) -> None:
    """Required header ↔ the middleware's 400 before anything runs; any header ↔ a 400 as owner."""
    schema = (await client.get("/openapi.json")).json()
    shop = await new_shop(client, "openapi")
    owner = f"Bearer {await api_key(client, shop.owner_headers, role='owner')}"
    required, anonymous_400, documented, owner_400 = set(), set(), set(), set()
    for method, path, operation in _operations(schema):
        headers = _key_headers(operation)
        assert len(headers) <= 1, f"{method} {path} declares the key twice"
        if headers:
            documented.add((method, path))
            if headers[0]["required"]:
                required.add((method, path))
        # Anonymous: only the middleware (before any route's own check) asks for the key.
        if _missing_key(await _call_without_key(client, method, path, operation)):
            anonymous_400.add((method, path))
        if _missing_key(
            await _call_without_key(client, method, path, operation, authorization=owner)
        ):
            owner_400.add((method, path))
    assert required == anonymous_400
    assert {("POST", "/orders"), ("POST", "/wallet/refunds")} <= required
    assert documented == owner_400
    for method, path in required:
        operation = schema["paths"][path][method.lower()]
        (header,) = _key_headers(operation)
        assert header["name"] == "Idempotency-Key"
        text = header["description"]
        promises = ("400", "key_missing", "Idempotent-Replayed", "24 h", "409", "Retry-After")
        for promise in (*promises, "422", "idempotency.key_reused"):
            assert promise in text, promise
        responses = operation["responses"]
        assert {"400", "409", "422"} <= set(responses)
        assert "Retry-After" in responses["409"]["headers"]
        assert all(PROBLEM in responses[s]["content"] for s in ("400", "409", "422"))


class _Links(HTMLParser):
    """Every URL the page would load: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls.extend(v for k, v in attrs if k in {"src", "href"} and v)


def _inline_scripts(html: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", html, re.DOTALL)


@pytest.mark.anyio
async def test_docs_page_loads_only_local_assets(client: httpx.AsyncClient) -> None:
    """/docs references same-origin paths only, they serve JS/CSS/PNG, and its CSP trusts no CDN."""
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "http:" not in docs.text
    assert "https:" not in docs.text
    links = _Links()
    links.feed(docs.text)
    spec = re.findall(r"url: '([^']*)'", docs.text)
    assert spec == ["/openapi.json"]
    urls = [*links.urls, *spec]
    assert len(urls) == 4
    expected = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}
    for url in urls:
        assert url.startswith("/")
        assert not url.startswith("//")
        served = await client.get(url)
        assert served.status_code == 200, url
        kind = next(v for k, v in expected.items() if url.endswith(k))
        assert kind in served.headers["content-type"], url
        assert len(served.content) > 100
    csp = docs.headers["content-security-policy"]
    assert "http" not in csp
    assert "'unsafe-inline'" not in csp
    (script,) = _inline_scripts(docs.text)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    assert "style-src 'self';" in csp


@pytest.mark.anyio
async def test_docs_assets_are_the_packaged_files_served_without_network(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With outbound connections refused, /docs and its files still serve the package's bytes."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    package = importlib.resources.files("fastapi_swagger") / "resources"
    assert (await client.get("/docs")).status_code == 200
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        served = await client.get(f"/docs/static/{name}")
        assert served.status_code == 200
        assert served.content == (package / name).read_bytes()
    for other in ("__init__.py", "", "../main.py", "x/swagger-ui.css"):
        refused = await client.get(f"/docs/static/{other}")
        assert refused.status_code == 404, other
        assert refused.headers["content-type"] == PROBLEM


@pytest.mark.anyio
async def test_catalog_reads_document_etag_304_and_the_crm_outage(
    client: httpx.AsyncClient,
) -> None:
    """Cached catalog reads declare If-None-Match, ETag on 200, a 304; CRM reads a 503 problem."""
    schema = (await client.get("/openapi.json")).json()
    telecom = {
        "/telecom/plans": "array",
        "/telecom/addons": "array",
        "/telecom/installations": "array",
        "/telecom/categories": "array",
        "/telecom/metadata": "object",
        "/telecom/availability": "array",
    }
    for path in [*telecom, "/catalog/items"]:
        operation = schema["paths"][path]["get"]
        (header,) = [p for p in operation["parameters"] if p["in"] == "header"]
        assert header["name"] == "if-none-match"
        assert not header.get("required", False)
        responses = operation["responses"]
        assert "ETag" in responses["200"]["headers"]
        assert responses["200"]["content"]["application/json"]["schema"]
        assert "content" not in responses["304"]
        assert "ETag" in responses["304"]["headers"]
        assert "`catalog:read`" in operation["description"]
        if path in telecom:
            assert responses["503"]["content"][PROBLEM]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }
            assert "Retry-After" in responses["503"]["headers"]
            body = responses["200"]["content"]["application/json"]["schema"]
            kind = body.get("type") or schema["components"]["schemas"][
                body["$ref"].rsplit("/", 1)[1]
            ].get("type")
            assert kind == telecom[path], path
