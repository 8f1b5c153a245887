"""hardened.openapi: security, Idempotency-Key and problems documented from what is enforced."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from hardened.auth import Roles, public, signed_in
from hardened.http import SWAGGER_UI_CSP
from hardened.idempotency import (
    HttpIdempotencyConfig,
    IdempotencyKey,
    IdempotencyMiddleware,
    IdempotentRoute,
    StoreBackend,
    idempotency_key,
)
from hardened.openapi import SecurityScheme, install_openapi, swagger_ui_page
from hardened.stores import MemoryStore

ROLES = Roles.ladder(("reader", {"things:read"}), ("writer", {"things:write"}))
SCHEMES = (
    SecurityScheme("Key", {"type": "http", "scheme": "bearer"}, kind="api_key"),
    SecurityScheme("Token", {"type": "http", "scheme": "bearer"}, kind="user"),
    SecurityScheme("Anything", {"type": "apiKey", "in": "cookie", "name": "c"}),
)


def _app(rules: tuple[IdempotentRoute, ...] | None, **config: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/things", dependencies=[ROLES.require("things:read")])
    async def list_things() -> list[str]:
        """List."""
        return []

    @app.post("/things", dependencies=[ROLES.require("things:write")])
    async def make_thing(
        key: Annotated[IdempotencyKey | None, Depends(idempotency_key(required=False))],
    ) -> dict[str, str]:
        return {}

    @app.patch("/things/{thing_id}", dependencies=[ROLES.require("things:write")])
    async def edit_thing(thing_id: str) -> dict[str, str]:
        return {}

    @app.post("/things/{thing_id}/archive", dependencies=[ROLES.require("things:write")])
    async def archive(thing_id: str) -> dict[str, str]:
        return {}

    @app.post("/me/logout", dependencies=[signed_in(kind="user")])
    async def logout() -> None:
        return None

    @app.get("/open", dependencies=[public()])
    async def open_route() -> None:
        return None

    @app.get("/undeclared")
    async def undeclared() -> None:
        return None

    install_openapi(app, schemes=SCHEMES)
    app.add_middleware(
        IdempotencyMiddleware,
        backend=StoreBackend(MemoryStore()),
        secret=b"s" * 32,
        rules=rules,
        config=HttpIdempotencyConfig(**config),
    )
    return app


def _key(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in operation.get("parameters", []) if p["name"].lower() == "idempotency-key"]


def test_security_follows_each_routes_declared_requirement() -> None:
    """Public → [], one kind → its schemes (and any-kind ones), permission → all, none → unset."""
    paths = _app(None).openapi()["paths"]
    assert paths["/open"]["get"]["security"] == []
    assert "security" not in paths["/undeclared"]["get"]
    assert paths["/me/logout"]["post"]["security"] == [{"Token": []}, {"Anything": []}]
    everyone: list[dict[str, list[str]]] = [{"Key": []}, {"Token": []}, {"Anything": []}]
    assert paths["/things"]["get"]["security"] == everyone
    assert "`things:read` (roles: reader, writer)" in paths["/things"]["get"]["description"]
    assert "`things:write` (roles: writer)" in paths["/things"]["post"]["description"]
    assert set(paths["/things"]["get"]["responses"]) >= {"401", "403"}
    assert "401" not in paths["/open"]["get"]["responses"]
    cookie_refusal = paths["/things"]["post"]["responses"]["403"]["description"]
    assert "csrf.missing" in cookie_refusal
    assert "csrf" not in paths["/things"]["get"]["responses"]["403"]["description"]


def test_default_middleware_rules_document_an_optional_key_on_every_post_and_patch() -> None:
    """rules=None guards POST and PATCH with an optional key: documented there, optional, once."""
    paths = _app(None).openapi()["paths"]
    for path, method in (
        ("/things", "post"),
        ("/things/{thing_id}", "patch"),
        ("/things/{thing_id}/archive", "post"),
        ("/me/logout", "post"),
    ):
        (header,) = _key(paths[path][method])
        assert header["required"] is False, path
        assert header["description"].startswith("Optional")
        assert "key_missing" not in paths[path][method]["responses"]["400"]["description"]
    assert not _key(paths["/things"]["get"])
    assert not _key(paths["/open"]["get"])


def test_rules_decide_what_is_documented_like_they_decide_what_is_guarded() -> None:
    """Exact, templated and literal rules; wait, fingerprint fields and the config in the text."""
    rules = (
        IdempotentRoute("/things$", wait=2, fingerprint_fields=("name",)),
        IdempotentRoute("/things/7/archive"),
        IdempotentRoute("/things/{thing_id}", methods=frozenset({"PATCH"}), required=False),
    )
    paths = _app(rules, retention=3600.0, key_headers=("idempotency-key",)).openapi()["paths"]
    (made,) = _key(paths["/things"]["post"])
    assert made["required"] is True
    text = made["description"]
    assert "waits up to 2 s" in text
    assert "`name`" in text
    assert "for 1 h" in text
    assert "X-Idempotency-Key" not in text
    assert _key(paths["/things/{thing_id}"]["patch"])[0]["required"] is False
    # A literal id guards one thing's path, not the route: documenting it would be a lie.
    assert not _key(paths["/things/{thing_id}/archive"]["post"])
    assert not _key(paths["/me/logout"]["post"])


def test_schema_is_documented_once_and_again_when_fastapi_rebuilds_it() -> None:
    """Repeated calls return one documented schema; a route added later is documented too."""
    app = _app(None)
    first = app.openapi()
    assert app.openapi() is first
    assert first["paths"]["/things"]["get"]["description"].count("**Permission:**") == 1

    @app.post("/late", dependencies=[ROLES.require("things:write")])
    async def late() -> None:
        return None

    rebuilt = app.openapi()
    assert rebuilt["paths"]["/late"]["post"]["security"]
    assert _key(rebuilt["paths"]["/late"]["post"])


def test_swagger_ui_page_allows_only_its_own_inline_script() -> None:
    """The page loads its files from the given prefix; its CSP names that one script's hash."""
    page = swagger_ui_page(
        openapi_url="/openapi.json", title="t", assets_url="/static", favicon_url="/static/f.png"
    )
    html = bytes(page.body).decode()
    assert 'src="/static/swagger-ui-bundle.js"' in html
    assert 'href="/static/swagger-ui.css"' in html
    assert "https:" not in html
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = page.headers["content-security-policy"]
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    assert "unsafe-inline" not in csp
    assert "http" not in csp


def test_the_docs_csp_trusts_no_other_origin() -> None:
    """SWAGGER_UI_CSP allows the page's own origin (and data: images) and nothing remote."""
    sources = " ".join(SWAGGER_UI_CSP.split(";"))
    assert "http" not in sources
    assert "*" not in sources
    assert "script-src 'self' 'unsafe-inline';" in SWAGGER_UI_CSP
    assert "style-src 'self';" in SWAGGER_UI_CSP
    assert "img-src 'self' data:;" in SWAGGER_UI_CSP
