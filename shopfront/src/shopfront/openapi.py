"""shopfront's OpenAPI and ``/docs``: how to authenticate, which writes need a key, no CDN.

The schema's security and ``Idempotency-Key`` documentation are derived by
`hardened.openapi` from what is enforced: each route's declared permission
(`shopfront.permissions`) and the rules the idempotency middleware was given
(`shopfront.exactly_once.GUARDED_ROUTES`). This module only names the three
ways in, as `shopfront.identity` accepts them:

* ``ApiKey``: ``Authorization: Bearer sfk_…``, a shop API key with its own role
  (never accepted on a member's own-account routes);
* ``AccessToken``: ``Authorization: Bearer <JWT>``, a member's access token;
* ``CookieSession``: the ``access_token`` cookie set by a cookie-mode sign-in;
  unsafe requests also echo the ``csrf_token`` cookie in ``X-CSRF-Token``.

``/docs`` is Swagger UI with its files served from ``/docs/static`` out of the
``fastapi-swagger`` package's data (only the three files the page loads), so
the page works offline and its CSP names no other origin. The files are
mounted, not routed: they are framework assets like ``/docs`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.staticfiles import StaticFiles

from hardened.openapi import SecurityScheme, install_openapi, swagger_ui_page
from shopfront.auth import ACCESS_COOKIE
from shopfront.services.api_keys import API_KEY_PREFIX

if TYPE_CHECKING:
    import os

    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

    from shopfront.state import AppState

__all__ = ["ASSETS", "DOCS_ASSETS_PATH", "DOCS_PATH", "install_docs", "security_schemes"]

DOCS_PATH = "/docs"
DOCS_ASSETS_PATH = "/docs/static"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
"""The files the page loads, the only ones served from the package."""


class _SwaggerAssets(StaticFiles):
    """`StaticFiles` over fastapi-swagger's resources, limited to `ASSETS` (else 404)."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path not in ASSETS:
            return "", None
        return super().lookup_path(path)


def security_schemes(state: AppState) -> tuple[SecurityScheme, ...]:
    """The ways `shopfront.identity` authenticates a caller, with the kind each yields."""
    csrf = state.auth.csrf
    ttl = state.settings.access_token_ttl
    return (
        SecurityScheme(
            "ApiKey",
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": f"{API_KEY_PREFIX}…",
                "description": (
                    f"A shop API key, `Authorization: Bearer {API_KEY_PREFIX}…` (made with "
                    "`POST /api-keys`); it acts with its own role."
                ),
            },
            kind="api_key",
        ),
        SecurityScheme(
            "AccessToken",
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": (
                    "A member's access token, `Authorization: Bearer <JWT>`, from "
                    "`POST /auth/login` (or `/auth/refresh`); it acts with the member's "
                    f"role and lasts {ttl} s."
                ),
            },
            kind="user",
        ),
        SecurityScheme(
            "CookieSession",
            {
                "type": "apiKey",
                "in": "cookie",
                "name": ACCESS_COOKIE,
                "description": (
                    'Browsers: `POST /auth/login` with `"mode": "cookie"` sets the HttpOnly '
                    f"`{ACCESS_COOKIE}` and `session` cookies and a readable "
                    f"`{csrf.csrf_cookie}` cookie. Every POST, PUT, PATCH and DELETE must echo "
                    f"that cookie in the `{csrf.header}` header (403 `csrf.missing` or "
                    "`csrf.invalid` otherwise)."
                ),
            },
            kind="user",
        ),
    )


def install_docs(app: FastAPI, state: AppState) -> None:
    """The documented schema at ``/openapi.json`` and Swagger UI at ``/docs``, offline."""
    install_openapi(app, schemes=security_schemes(state))
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} - Swagger UI"

    async def docs(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return swagger_ui_page(
            openapi_url=root + openapi_url,
            title=title,
            assets_url=root + DOCS_ASSETS_PATH,
            favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon-32x32.png",
        )

    app.add_route(DOCS_PATH, docs, include_in_schema=False)
    assets = _SwaggerAssets(packages=[("fastapi_swagger", "resources")])
    app.mount(DOCS_ASSETS_PATH, assets, name="docs-assets")
