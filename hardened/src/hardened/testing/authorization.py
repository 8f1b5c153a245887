"""Authorization matrix harness: every route, called as every role, allowed or denied as declared.

The twin of the tenant-isolation walker (`hardened.testing.isolation`). That
one proves a caller cannot reach another tenant's rows; this one proves that
inside their own tenant a caller can do exactly what their role grants. It
reads what each route declared (`hardened.auth.Roles.require`, `signed_in`,
`public`: the dependency beside the route) and calls the route once per
caller, with that caller's credentials:

* declared and granted: the answer is neither 401 nor 403 (nor any 5xx): the
  request got past authorization, whatever the handler then made of it (a
  404 for a made-up id, a 422 for an empty body are fine);
* declared and not granted: 403 problem+json ``auth.forbidden`` (never 404:
  inside one's own tenant the route's existence is no secret);
* not public, called without credentials: 401;
* public: anything below 500 but a 403 ``auth.forbidden`` (a sign-in route's
  own 401 for a wrong password is its business);
* a route that declares nothing fails the run, unless it is listed in
  ``exempt`` (framework routes such as ``/docs``, WebSockets that
  authenticate in their handshake).

A `Probe` (shared with the isolation harness) says how to call a route when
the default (made-up UUIDs for path parameters, no body) is not enough; probes
should be harmless (they run once per caller), and a denied caller must be
refused before the handler runs, so nothing it sends can take effect. Routes
that end the caller's own credential when allowed (sign out, password change)
are listed in ``destructive``: after such a call the harness asks ``renew``
for fresh credentials for that caller. The returned `Matrix` holds every
cell, for the test to report.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from string import Formatter
from typing import TYPE_CHECKING, Any, Literal

from hardened.auth.permissions import Requirement, requirement_of
from hardened.testing._routes import RouteKey, route_table
from hardened.testing.isolation import Probe, call

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence

    import httpx

    from hardened.auth.permissions import Roles

__all__ = [
    "AuthorizationFailure",
    "Caller",
    "Cell",
    "Matrix",
    "assert_authorization",
    "declared_requirements",
]

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Credentials of one role (``kind``: the `Identity.kind` they authenticate as)."""

    role: str
    headers: Mapping[str, str]
    kind: str | None = None
    account: Any = field(default=None, compare=False)
    """Whatever ``renew`` needs to sign this caller in again (e.g. email and password)."""

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.role}" if self.kind else self.role


@dataclass(frozen=True, slots=True)
class Cell:
    """One route called by one caller."""

    route: RouteKey
    caller: str
    expected: Literal["allowed", "denied", "unauthenticated"]
    status: int
    code: str | None


@dataclass(frozen=True, slots=True)
class AuthorizationFailure:
    route: RouteKey
    caller: str
    reason: str


@dataclass(frozen=True, slots=True)
class Matrix:
    """What the walk found: every checked cell, and the routes it covered."""

    routes: tuple[RouteKey, ...]
    cells: tuple[Cell, ...] = field(repr=False)

    def counts(self) -> Counter[str]:
        """Cells by expectation (allowed, denied, unauthenticated)."""
        return Counter(c.expected for c in self.cells)

    def table(self) -> str:
        """The matrix as Markdown: a row per route, a column per caller (A allowed, D denied)."""
        callers = list(dict.fromkeys(c.caller for c in self.cells if c.caller != "anonymous"))
        mark = {"allowed": "A", "denied": "D", "unauthenticated": "-"}
        grid: dict[RouteKey, dict[str, str]] = {}
        for cell in self.cells:
            grid.setdefault(cell.route, {})[cell.caller] = mark[cell.expected]
        lines = [
            "| route | " + " | ".join(callers) + " |",
            "|---|" + "---|" * len(callers),
        ]
        for route in self.routes:
            row = grid.get(route, {})
            lines.append(
                f"| {route[0]} {route[1]} | " + " | ".join(row.get(c, "") for c in callers) + " |"
            )
        return "\n".join(lines)


def _requirements(dependant: Any) -> Iterable[Requirement]:
    for sub in getattr(dependant, "dependencies", ()):
        found = requirement_of(getattr(sub, "call", None))
        if found is not None:
            yield found
        yield from _requirements(sub)


def declared_requirements(app: Any) -> dict[RouteKey, Requirement | None]:
    """Each HTTP route's declared requirement (None: it declares none)."""
    declared: dict[RouteKey, Requirement | None] = {}
    for key, route in route_table(app).items():
        if key[0] == "WEBSOCKET":
            continue
        found = list(_requirements(getattr(route, "dependant", None)))
        declared[key] = found[0] if len(found) == 1 else None
        if len(found) > 1:
            msg = f"{key[0]} {key[1]} declares {len(found)} requirements; declare one"
            raise AssertionError(msg)
    return declared


def _default_probe(key: RouteKey) -> Probe:
    # A made-up value that fits the parameter's convertor, so the router finds the route.
    made_up = {"int": "7", "float": "7.5", "path": "made/up"}
    params = {
        name: made_up.get(convertor or "", str(uuid.uuid4()))
        for _, name, convertor, _ in Formatter().parse(key[1])
        if name
    }
    return Probe(path_params=params)


def _code(response: httpx.Response) -> str | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _verdict(expected: str, status: int, code: str | None, *, public: bool) -> str | None:
    if status >= 500:
        return f"answered {status}"
    if public:  # its own 401s (a bad password, no refresh token) are the route's business
        return None if code != "auth.forbidden" else f"public route refused: {status} {code}"
    if expected == "allowed":
        return None if status not in (401, 403) else f"expected to pass, got {status} {code}"
    if expected == "denied":
        return None if (status, code) == (403, "auth.forbidden") else f"expected 403, got {status}"
    return None if status == 401 else f"expected 401 without credentials, got {status}"


def _expected(requirement: Requirement, caller: Caller | None) -> str:
    if caller is None:
        return "allowed" if requirement.level == "public" else "unauthenticated"
    return "allowed" if requirement.admits(caller.role, caller.kind) else "denied"


async def assert_authorization(
    client: httpx.AsyncClient,
    app: Any,
    roles: Roles,
    callers: Sequence[Caller],
    *,
    probes: Mapping[RouteKey, Probe] | None = None,
    exempt: Collection[RouteKey] = (),
    headers_for: Callable[[RouteKey], Mapping[str, str]] | None = None,
    destructive: Collection[RouteKey] = (),
    renew: Callable[[Caller], Awaitable[Caller]] | None = None,
) -> Matrix:
    """Walk every route with every caller (and anonymously); raise listing every failure.

    ``headers_for`` adds per-request headers (e.g. a fresh Idempotency-Key for
    unsafe methods, so that guard is not what answers). Every caller's role
    must be one of ``roles``.
    """
    unknown = sorted({c.role for c in callers} - set(roles.grants))
    if unknown:
        raise ValueError(f"callers with roles the table does not know: {unknown}")
    if destructive and renew is None:
        raise ValueError("destructive routes need renew(), to sign their callers in again")
    current = list(callers)
    declared = declared_requirements(app)
    failures = [
        AuthorizationFailure(key, "-", "declares no permission (or public/signed_in)")
        for key, requirement in declared.items()
        if requirement is None and key not in exempt
    ]
    cells: list[Cell] = []
    checked = sorted(k for k, r in declared.items() if r is not None and k not in exempt)
    for key in checked:
        requirement = declared[key]
        assert requirement is not None  # noqa: S101 - filtered above
        probe = (probes or {}).get(key) or _default_probe(key)
        for index, caller in enumerate((None, *current)):
            expected = _expected(requirement, caller)
            extra = dict(headers_for(key)) if headers_for is not None else {}
            if caller is not None:
                extra.update(caller.headers)
            response = await call(client, key, probe, extra)
            code = _code(response)
            label = caller.label if caller is not None else "anonymous"
            cells.append(Cell(key, label, expected, response.status_code, code))  # type: ignore[arg-type]
            public = requirement.level == "public"
            reason = _verdict(expected, response.status_code, code, public=public)
            if reason:
                failures.append(AuthorizationFailure(key, label, reason))
            if caller is not None and key in destructive and renew is not None:
                current[index - 1] = await renew(caller)
    if failures:
        lines = "\n".join(
            f"  {f.route[0]} {f.route[1]} as {f.caller}: {f.reason}" for f in failures
        )
        msg = f"authorization failed in {len(failures)} cell(s):\n{lines}"
        raise AssertionError(msg)
    return Matrix(tuple(checked), tuple(cells))
