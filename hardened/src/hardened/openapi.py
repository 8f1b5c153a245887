"""OpenAPI that says how to call the service, derived from what the guards enforce.

FastAPI documents a route's parameters and bodies, but not how a caller gets in
nor which headers a middleware demands, so ``/docs`` cannot tell anyone how to
authenticate or that a money route needs an ``Idempotency-Key``. Both are
already declared once: each route's requirement (`hardened.auth.Roles.require`,
`hardened.auth.signed_in`, `hardened.auth.public`, beside its definition) and
the `IdempotentRoute` rules the `IdempotencyMiddleware` was registered with.
`install_openapi` reads those same declarations every time the schema is
built, never a hand-kept list, so a new route is documented as it is enforced:

* security: ``components.securitySchemes`` from the given `SecurityScheme`
  list; each operation's ``security`` lists the schemes that can satisfy its
  requirement (a ``signed_in(kind="user")`` route only those whose
  credentials authenticate as users), ``[]`` when it is public, and nothing
  when it declares no requirement (there is nothing true to say). The
  permission and the roles that grant it are appended to the description.
* ``Idempotency-Key``: a header parameter on every operation a registered
  middleware guards (found in ``app.user_middleware``, normalised by the
  middleware's own constructor), required where the rule requires it, its
  description built from the rule and the config (replay window, 409 with
  ``Retry-After`` or the rule's wait, 422 on another payload, what is not
  kept). A parameter the ``idempotency_key`` dependency already declared is
  replaced, not repeated. A rule that names a literal segment where the route
  has a parameter guards only some of the route's paths and is not documented.
* problems (``problems=True``): the 4xx answers those guards give, as
  ``application/problem+json`` with a shared ``Problem`` schema: 401/403 on
  protected operations, 400/409/410/422 on guarded ones, and FastAPI's 422
  validation schema replaced by the problem the service really sends.

`swagger_ui_page` is FastAPI's Swagger UI page with its files served by the
app itself (FastAPI's default loads them from a CDN, so ``/docs`` is blank
offline and its CSP must trust that CDN). Its response carries its own CSP,
`hardened.http.SWAGGER_UI_CSP` with the page's one inline script allowed by
hash instead of any inline script. Needs the ``fastapi`` extra.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hardened._extras import missing_extra

try:
    from fastapi import routing
    from fastapi.openapi.docs import get_swagger_ui_html
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.openapi", "fastapi") from exc

from hardened.auth.permissions import Requirement, requirement_of
from hardened.errors import PROBLEM_CONTENT_TYPE
from hardened.http import swagger_ui_csp
from hardened.idempotency import (
    MAX_KEY_LENGTH,
    HttpIdempotencyConfig,
    IdempotencyMiddleware,
    IdempotentRoute,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

__all__ = [
    "PROBLEM_SCHEMA",
    "IdempotencyGuard",
    "SecurityScheme",
    "document_openapi",
    "idempotency_guards",
    "idempotency_header",
    "install_openapi",
    "security_for",
    "swagger_ui_page",
]

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An RFC 9457 problem document; clients branch on `code`.",
    "required": ["type", "title", "status", "code", "correlation_id"],
    "properties": {
        "type": {"type": "string", "description": "`urn:hardened:problem:` + code"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "Stable error code, `area.snake_case`."},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "correlation_id": {
            "type": ["string", "null"],
            "description": "The request's `X-Request-Id`, for support and logs.",
        },
        "errors": {
            "type": "array",
            "description": "Validation failures, one per field.",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
"""The ``Problem`` component: what `hardened.errors.Problem` renders."""


@dataclass(frozen=True, slots=True)
class SecurityScheme:
    """One way to authenticate: its ``components.securitySchemes`` entry and who it makes you.

    ``kind`` is the `hardened.http.Identity.kind` its credentials authenticate
    as (None: any), so a route that admits one kind lists only its schemes.
    """

    name: str
    scheme: Mapping[str, Any] = field(hash=False)
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyGuard:
    """A registered `IdempotencyMiddleware`'s rules and config, as it normalised them."""

    rules: tuple[IdempotentRoute, ...]
    config: HttpIdempotencyConfig

    def rule_for(self, method: str, path: str) -> IdempotentRoute | None:
        """The rule that decides ``method`` ``path`` (the first match, as the middleware does)."""
        return next((r for r in self.rules if r.matches(method, path)), None)


def security_for(
    requirement: Requirement, schemes: Sequence[SecurityScheme]
) -> list[dict[str, list[str]]]:
    """OpenAPI ``security`` for a declared requirement: [] if public, else who may satisfy it."""
    if requirement.level == "public":
        return []
    wanted = requirement.kind
    return [{s.name: []} for s in schemes if wanted is None or s.kind in (None, wanted)]


def idempotency_guards(app: FastAPI) -> tuple[IdempotencyGuard, ...]:
    """Every `IdempotencyMiddleware` registered on ``app``, outermost first."""
    found: list[IdempotencyGuard] = []
    for entry in app.user_middleware:  # add_middleware puts the outermost first
        factory: Any = entry.cls
        if factory is IdempotencyMiddleware:
            # The middleware's own constructor applies its defaults (rules None: every
            # POST and PATCH, key optional), so the documentation cannot drift from them.
            args: tuple[Any, ...] = entry.args
            kwargs: dict[str, Any] = entry.kwargs
            built = IdempotencyMiddleware(_never_called, *args, **kwargs)
            found.append(IdempotencyGuard(built.rules, built.config))
    return tuple(found)


async def _never_called(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise RuntimeError("only built to read its configuration")


def _header_name(lowered: str) -> str:
    return "-".join(part.capitalize() for part in lowered.split("-"))


def _seconds(value: float) -> str:
    if value >= 3600 and value % 3600 == 0:
        return f"{int(value // 3600)} h"
    return f"{value:g} s"


def idempotency_header(rule: IdempotentRoute, config: HttpIdempotencyConfig) -> dict[str, Any]:
    """The ``Idempotency-Key`` header parameter for an operation ``rule`` guards."""
    primary, *others = config.key_headers
    also = f"; `{'`, `'.join(_header_name(h) for h in others)}` is accepted too" if others else ""
    need = (
        "Required: without it the answer is 400 `idempotency.key_missing`."
        if rule.required
        else "Optional: without it the request runs unguarded."
    )
    payload = (
        f"the fields {', '.join(f'`{f}`' for f in rule.fingerprint_fields)} of the JSON body"
        if rule.fingerprint_fields is not None
        else "method, path, query and body"
    )
    busy = (
        f"waits up to {rule.wait:g} s for it, then 409 `idempotency.in_flight` with `Retry-After`"
        if rule.wait > 0
        else "409 `idempotency.in_flight` with `Retry-After`"
    )
    kept_not = sorted({401, 403} | set(config.transient_statuses))
    not_kept = ", ".join(str(s) for s in kept_not) + ("" if config.store_server_errors else ", 5xx")
    description = (
        f"{need} One fresh key per operation (a UUID; 1-{MAX_KEY_LENGTH} printable ASCII "
        f"characters{also}); a malformed key is 400 `idempotency.key_invalid`. A retry with the "
        f"same key and the same {payload} does not run again: it gets the first answer, replayed "
        f"with `Idempotent-Replayed: true`, for {_seconds(config.retention)}. While the first "
        f"request with the key is still running: {busy}. The same key with another payload: "
        f"422 `idempotency.key_reused`. Answers {not_kept} are not kept: a retry runs again."
    )
    return {
        "name": _header_name(primary),
        "in": "header",
        "required": rule.required,
        "description": description,
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_KEY_LENGTH,
            "pattern": "^[\\x20-\\x7e]+$",
        },
    }


def _requirements(dependant: Any) -> Iterator[Requirement]:
    for sub in getattr(dependant, "dependencies", ()):
        found = requirement_of(getattr(sub, "call", None))
        if found is not None:
            yield found
        yield from _requirements(sub)


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """The routes FastAPI puts in the schema (included routers resolved as it resolves them)."""
    walk = getattr(routing, "iter_route_contexts", None)
    candidates = app.routes if walk is None else walk(app.routes)
    for route in candidates:
        original = getattr(route, "original_route", route)
        if isinstance(original, routing.APIRoute) and getattr(route, "include_in_schema", False):
            yield route


def _problem(description: str, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": dict(_PROBLEM_REF)}},
    }
    if headers:
        response["headers"] = dict(headers)
    return response


def _add_response(operation: dict[str, Any], status: int, response: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    existing = responses.get(str(status))
    if existing is None:
        responses[str(status)] = response
    elif PROBLEM_CONTENT_TYPE in existing.get("content", {}):
        existing["description"] = f"{existing['description']} {response['description']}"


def _permission_note(requirement: Requirement) -> str | None:
    if requirement.level == "permission" and requirement.permission is not None:
        roles = requirement.roles
        granted = (
            [r for r in roles.order if roles.allows(r, requirement.permission)] if roles else []
        )
        who = f" (roles: {', '.join(granted)})" if granted else ""
        return f"**Permission:** `{requirement.permission}`{who}."
    if requirement.level == "signed_in":
        only = f" (`{requirement.kind}` credentials only)" if requirement.kind else ""
        return f"**Permission:** any signed-in caller{only}."
    return None


def _document_security(
    operation: dict[str, Any],
    method: str,
    requirement: Requirement | None,
    schemes: Sequence[SecurityScheme],
    *,
    problems: bool,
) -> None:
    if requirement is None:
        return
    security = security_for(requirement, schemes)
    operation["security"] = security
    note = _permission_note(requirement)
    if note:
        described = operation.get("description")
        operation["description"] = f"{described}\n\n{note}" if described else note
    if not problems or not security:
        return
    _add_response(
        operation,
        401,
        _problem("No credential, or one that did not verify (`auth.*`)."),
    )
    csrf = method in _UNSAFE and any(
        s.scheme.get("in") == "cookie" for s in schemes if {s.name: []} in security
    )
    refused = "The caller's role or credential kind does not allow this (`auth.forbidden`)."
    if csrf:
        refused += " A cookie session without a valid CSRF token: `csrf.missing`, `csrf.invalid`."
    _add_response(operation, 403, _problem(refused))


def _document_idempotency(
    operation: dict[str, Any],
    rule: IdempotentRoute,
    config: HttpIdempotencyConfig,
    *,
    problems: bool,
) -> None:
    header = idempotency_header(rule, config)
    names = set(config.key_headers)
    kept = [
        p
        for p in operation.get("parameters", [])
        if not (p.get("in") == "header" and str(p.get("name", "")).lower() in names)
    ]
    operation["parameters"] = [header, *kept]
    if not problems:
        return
    refused = (
        "Idempotency-Key missing or malformed "
        "(`idempotency.key_missing`, `idempotency.key_invalid`)."
        if rule.required
        else "Idempotency-Key malformed (`idempotency.key_invalid`)."
    )
    _add_response(operation, 400, _problem(refused))
    retry_after = {
        "Retry-After": {
            "description": "Seconds until the first request's lease ends.",
            "schema": {"type": "integer"},
        }
    }
    _add_response(
        operation,
        409,
        _problem(
            "A request with this key is still running (`idempotency.in_flight`).", retry_after
        ),
    )
    _add_response(
        operation,
        410,
        _problem("It ran, but its answer was too large to keep (`idempotency.response_not_kept`)."),
    )
    _add_response(
        operation,
        422,
        _problem("The key was first used with another payload (`idempotency.key_reused`)."),
    )


def _problem_validation(operation: dict[str, Any]) -> None:
    """FastAPI's 422 schema (``HTTPValidationError``) → the problem the handlers really send."""
    validation = operation.get("responses", {}).get("422")
    if validation is None or PROBLEM_CONTENT_TYPE in validation.get("content", {}):
        return
    operation["responses"]["422"] = _problem(
        "The request did not pass validation (`request.validation_failed`, with `errors`) "
        "or its body is not JSON (`request.malformed_json`)."
    )


def document_openapi(
    schema: dict[str, Any],
    app: FastAPI,
    *,
    schemes: Sequence[SecurityScheme] = (),
    problems: bool = True,
) -> dict[str, Any]:
    """Add security, ``Idempotency-Key`` and problem responses to ``schema`` (in place)."""
    components = schema.setdefault("components", {})
    if schemes:
        components.setdefault("securitySchemes", {}).update(
            {s.name: dict(s.scheme) for s in schemes}
        )
    if problems:
        components.setdefault("schemas", {}).setdefault("Problem", copy.deepcopy(PROBLEM_SCHEMA))
    guards = idempotency_guards(app)
    paths = schema.get("paths", {})
    for route in _api_routes(app):
        found = list(_requirements(getattr(route, "dependant", None)))
        requirement = found[0] if len(found) == 1 else None
        for method in sorted(route.methods or ()):
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if problems:
                _problem_validation(operation)
            _document_security(operation, method, requirement, schemes, problems=problems)
            for guard in guards:
                rule = guard.rule_for(method, route.path_format)
                if rule is not None:
                    _document_idempotency(operation, rule, guard.config, problems=problems)
                    break
    if problems:
        _drop_unreferenced(schema, ("HTTPValidationError", "ValidationError"))
    return schema


def _drop_unreferenced(schema: dict[str, Any], names: Sequence[str]) -> None:
    """Remove FastAPI's validation schemas once nothing refers to them (in this order)."""
    schemas = schema.get("components", {}).get("schemas", {})
    for name in names:
        if name not in schemas:
            continue
        others = {k: v for k, v in schemas.items() if k != name}
        rest = {k: v for k, v in schema.items() if k != "components"}
        if f'"#/components/schemas/{name}"' not in json.dumps([rest, others]):
            del schemas[name]


def install_openapi(
    app: FastAPI, *, schemes: Sequence[SecurityScheme] = (), problems: bool = True
) -> None:
    """Make ``app.openapi()`` return FastAPI's schema with `document_openapi` applied.

    Applied lazily, when the schema is first built (and again whenever FastAPI
    rebuilds it), so routes and middleware added after this call count.
    """
    generate = app.openapi
    documented: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not documented or documented[0] is not schema:
            document_openapi(schema, app, schemes=schemes, problems=problems)
            documented[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def swagger_ui_page(
    *,
    openapi_url: str,
    title: str,
    assets_url: str,
    favicon_url: str,
    parameters: Mapping[str, Any] | None = None,
) -> HTMLResponse:
    """FastAPI's Swagger UI page, its files from ``assets_url`` (the app's own, never a CDN).

    ``assets_url`` serves swagger-ui-dist's ``swagger-ui-bundle.js`` and
    ``swagger-ui.css``. The online validator stays off (it would call out).
    """
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{assets_url}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets_url}/swagger-ui.css",
        swagger_favicon_url=favicon_url,
        swagger_ui_parameters={"validatorUrl": None, **(parameters or {})},
    )
    html = bytes(page.body).decode()
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    ]
    page.headers["content-security-policy"] = swagger_ui_csp(hashes)
    return page
