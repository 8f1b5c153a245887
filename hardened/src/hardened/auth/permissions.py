"""Authorization inside a tenant: roles, and a permission declared beside every route.

Tenant isolation decides whose rows a caller can reach; this decides what the
caller may do there. Without it every signed-in member of a shop has every
right in it (an attack found exactly that: a fresh sign-up created a
100 %-off coupon). So each route states what it needs, next to its definition, as a
FastAPI dependency, and `hardened.testing.assert_authorization` walks every
route with every role and fails on a route that states nothing:

* ``roles.require("coupons:write")``: an authenticated caller whose role
  grants the permission;
* `signed_in`: any authenticated caller, or one of a kind
  (``signed_in(kind="user")`` for a person's own account: sign out, sessions,
  password; an API key is not a person);
* `public`: anyone, anonymous included (sign-in, health).

`Roles` maps each role to its permissions; `Roles.ladder` builds the usual
shape where each role has everything the one below it has. A permission that
no role grants is refused when the route is declared, so a typo cannot make a
route unreachable (or, worse, look protected while nobody checks it).

Outcomes, read from the request's `hardened.http.Identity` (so the credential
was verified once, by the identity step): no credential → 401
``auth.missing_credentials``; a refused credential → its own error (401, or
503 when its lookup could not be made); a role without the permission, or a
caller of another kind → 403 ``auth.forbidden`` with the permission named in
the log context, never in the body. Inside the caller's own tenant a 403
reveals nothing, unlike across tenants, where the isolation harness insists on
404. Every 403 is counted in ``hardened_auth_forbidden_total{permission}``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from hardened.errors import Forbidden, Unauthorized
from hardened.http import Identity, identity_of
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from hardened.types import Scope

__all__ = [
    "Requirement",
    "Roles",
    "public",
    "require_identity",
    "requirement_of",
    "signed_in",
]

_NAME = re.compile(r"[a-z][a-z0-9_]*(?::[a-z][a-z0-9_]*)*")
_MARK = "__hardened_requirement__"
_FORBIDDEN = counter(
    "auth_forbidden_total",
    "Requests refused because the caller's role lacks the route's permission.",
    ["permission"],
)


@dataclass(frozen=True, slots=True)
class Roles:
    """Role name → the permissions it grants (frozen; check with `allows`)."""

    grants: Mapping[str, frozenset[str]]
    order: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.grants:
            raise ValueError("Roles needs at least one role")
        table: dict[str, frozenset[str]] = {}
        for role, permissions in self.grants.items():
            for name in (role, *permissions):
                if not _NAME.fullmatch(name):
                    raise ValueError(f"not a valid role or permission name: {name!r}")
            table[role] = frozenset(permissions)
        object.__setattr__(self, "grants", MappingProxyType(table))
        object.__setattr__(self, "order", tuple(table))

    @classmethod
    def ladder(cls, *levels: tuple[str, Iterable[str]]) -> Roles:
        """Roles from least to most privileged; each gets its own permissions and all below."""
        grants: dict[str, frozenset[str]] = {}
        below: frozenset[str] = frozenset()
        for role, permissions in levels:
            if role in grants:
                raise ValueError(f"role {role!r} appears twice")
            below = grants[role] = below | frozenset(permissions)
        return cls(grants)

    @property
    def permissions(self) -> frozenset[str]:
        """Every permission some role grants."""
        return frozenset().union(*self.grants.values())

    def allows(self, role: str | None, permission: str) -> bool:
        """Whether ``role`` grants ``permission`` (an unknown or missing role grants nothing)."""
        return role is not None and permission in self.grants.get(role, frozenset())

    def at_least(self, role: str, floor: str) -> bool:
        """Whether ``role`` grants everything ``floor`` grants (e.g. may hand ``floor`` out)."""
        return (
            role in self.grants and floor in self.grants and self.grants[floor] <= self.grants[role]
        )

    def require(self, permission: str) -> Any:
        """Route dependency: the caller's role must grant ``permission`` (see the module doc)."""
        if permission not in self.permissions:
            raise ValueError(f"no role grants {permission!r}: a typo, or a role table to extend")
        return _depends(Requirement("permission", permission, roles=self))


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a route declared: ``public``, ``signed_in`` or one ``permission`` of a table.

    ``kind`` (``signed_in`` only) restricts the route to callers whose
    `Identity.kind` matches, e.g. ``"user"``.
    """

    level: Literal["public", "signed_in", "permission"]
    permission: str | None = None
    kind: str | None = None
    roles: Roles | None = field(default=None, repr=False)

    def admits(self, role: str | None, kind: str | None) -> bool:
        """Whether an authenticated caller with ``role`` and ``kind`` passes."""
        if self.level == "public":
            return True
        if self.kind is not None and kind != self.kind:
            return False
        if self.roles is None or self.permission is None:
            return True
        return self.roles.allows(role, self.permission)

    def check(self, scope: Scope) -> Identity:
        """The caller's identity if the requirement holds; else the refusal is raised."""
        identity = identity_of(scope)
        if identity is None:
            msg = "no identity step ran: install hardened.http.IdentityMiddleware"
            raise RuntimeError(msg)
        if self.level == "public":
            return identity
        identity = require_identity(identity)
        if not self.admits(identity.role, identity.kind):
            what = self.permission or f"kind:{self.kind}"
            _FORBIDDEN.labels(what).inc()
            raise Forbidden(
                "Your role in this shop does not allow this.",
                context={"permission": what, "role": identity.role, "kind": identity.kind},
            )
        return identity


def require_identity(identity: Identity | None) -> Identity:
    """``identity`` when authenticated; else the 401 (or the recorded refusal) raised."""
    if identity is not None and identity.error is not None:
        raise identity.error
    if identity is None or identity.principal is None:
        raise Unauthorized(
            "Credentials are required.",
            code="auth.missing_credentials",
            headers={"www-authenticate": "Bearer"},
        )
    return identity


def public() -> Any:
    """Route dependency: anyone may call the route (it still sees the identity, if any)."""
    return _depends(Requirement("public"))


def signed_in(*, kind: str | None = None) -> Any:
    """Route dependency: any authenticated caller whatever the role (of ``kind``, if given)."""
    return _depends(Requirement("signed_in", kind=kind))


def requirement_of(call: Any) -> Requirement | None:
    """The requirement a dependency callable enforces, if it is one of ours."""
    found = getattr(call, _MARK, None)
    return found if isinstance(found, Requirement) else None


def _depends(requirement: Requirement) -> Any:
    from fastapi import Depends  # noqa: PLC0415 - fastapi stays optional
    from starlette.requests import Request  # noqa: PLC0415

    async def dependency(request: Request) -> Identity:
        return requirement.check(request.scope)

    params = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
    ]
    dependency.__signature__ = inspect.Signature(params, return_annotation=Identity)  # type: ignore[attr-defined]
    setattr(dependency, _MARK, requirement)
    call: Callable[..., Awaitable[Identity]] = dependency
    return Depends(call)
