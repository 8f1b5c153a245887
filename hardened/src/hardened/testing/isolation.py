"""Cross-tenant isolation harness: every route, called as tenant B with tenant A's ids.

Seed 003 asked for "an automated test to verify all store-scoped endpoints
filter by shopId". Listing the routes by hand is how a new route slips through,
so the harness enumerates the app's routes itself and fails when a route has
neither a probe nor an explicit place in ``public``. A probe says how to call a
route as B against A's data and what isolation looks like there:

* ``not_found`` (the default): the answer is 404. A 403 would confirm that A's
  id exists, so it fails too.
* ``absent``: the answer is 2xx and none of A's identifiers (``secrets``)
  appear anywhere in the body (list and search routes).

Any 5xx is a failure whatever the expectation. The client passed to `run`
must already carry tenant B's credentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hardened.testing._routes import RouteKey, route_table

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?\}")

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    import httpx

__all__ = [
    "IsolationFailure",
    "Probe",
    "RouteKey",
    "app_routes",
    "assert_isolated",
    "call",
    "tenant_models_without_mixin",
]


@dataclass(frozen=True, slots=True)
class Probe:
    """How to call one route as tenant B against tenant A's data."""

    path_params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    expect: Literal["not_found", "absent"] = "not_found"
    secrets: tuple[str, ...] = ()
    """Strings of tenant A (ids, emails, codes) that must not appear in the body."""


@dataclass(frozen=True, slots=True)
class IsolationFailure:
    route: RouteKey
    reason: str


def app_routes(app: Any) -> list[RouteKey]:
    """Every (method, path) an ASGI app routes, from Starlette/FastAPI routing tables."""
    return sorted(route_table(app))


async def call(
    client: httpx.AsyncClient,
    key: RouteKey,
    probe: Probe,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send ``probe`` to ``key`` with ``headers`` added (KeyError: a path param is missing)."""
    method, template = key
    params = dict(probe.path_params)
    # "{name}" or "{name:convertor}" (Starlette's syntax, which str.format would misread).
    path = _PARAM.sub(lambda m: params[m.group(1)], template)
    return await client.request(
        method,
        path,
        params=dict(probe.query),
        json=probe.json,
        content=probe.content,
        headers={**(headers or {}), **probe.headers},
    )


async def _check(client: httpx.AsyncClient, key: RouteKey, probe: Probe) -> str | None:
    try:
        response = await call(client, key, probe)
    except KeyError as exc:
        return f"probe lacks path parameter {exc}"
    status = response.status_code
    if status >= 500:
        return f"answered {status}"
    if probe.expect == "not_found":
        return None if status == 404 else f"expected 404, got {status}"
    if not 200 <= status < 300:
        return f"expected 2xx without tenant A's data, got {status}"
    body = response.text
    leaked = [s for s in probe.secrets if s in body]
    return f"body contains tenant A's {leaked}" if leaked else None


async def assert_isolated(
    client: httpx.AsyncClient,
    app: Any,
    probes: Mapping[RouteKey, Probe],
    *,
    public: Collection[RouteKey] = (),
) -> list[RouteKey]:
    """Run every probe; raise AssertionError listing every failure and every unprobed route.

    Returns the routes that were probed, so a test can also assert on coverage.
    """
    routes = app_routes(app)
    failures = [
        IsolationFailure(key, "no isolation probe (add one, or list it public)")
        for key in routes
        if key not in probes and key not in public
    ]
    failures.extend(
        IsolationFailure(key, "probe for a route the app does not have")
        for key in probes
        if key not in routes
    )
    probed = [key for key in routes if key in probes]
    for key in probed:
        reason = await _check(client, key, probes[key])
        if reason:
            failures.append(IsolationFailure(key, reason))
    if failures:
        lines = "\n".join(f"  {f.route[0]} {f.route[1]}: {f.reason}" for f in failures)
        msg = f"tenant isolation failed on {len(failures)} route(s):\n{lines}"
        raise AssertionError(msg)
    return probed


def tenant_models_without_mixin(base: Any, mixin: type, *, column: str = "tenant_id") -> list[str]:
    """Mapped classes of ``base`` that have a ``column`` but do not use ``mixin``."""
    offenders = []
    for mapper in base.registry.mappers:
        cls = mapper.class_
        if column in mapper.columns and not issubclass(cls, mixin):
            offenders.append(cls.__name__)
    return sorted(offenders)
