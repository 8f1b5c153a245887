"""hardened.auth.permissions: roles, and the requirement every route declares, over HTTP."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from hardened.auth import Requirement, Roles, public, require_identity, requirement_of, signed_in
from hardened.errors import DependencyUnavailable, Forbidden, Unauthorized
from hardened.fastapi import install_problem_handlers
from hardened.http import ANONYMOUS, Credentials, Identity, IdentityMiddleware

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROLES = Roles.ladder(
    ("viewer", {"items:read"}),
    ("editor", {"items:write", "items:import"}),
    ("owner", {"shop:manage"}),
)

IDENTITIES = {
    "viewer": Identity(principal="user:v", kind="user", tenant="t1", role="viewer"),
    "editor": Identity(principal="user:e", kind="user", tenant="t1", role="editor"),
    "owner": Identity(principal="user:o", kind="user", tenant="t1", role="owner"),
    "key": Identity(principal="key:k", kind="api_key", tenant="t1", role="owner"),
    "roleless": Identity(principal="user:r", kind="user", tenant="t1"),
}


async def authenticate(credentials: Credentials) -> Identity:
    """Bearer tokens name an identity above; two more are refused, each in its own way."""
    if credentials.bearer == "expired":
        raise Unauthorized("Sign in again.", code="auth.token_expired")
    if credentials.bearer == "lookup-down":
        raise DependencyUnavailable("Try again.", code="auth.lookup_unavailable", retry_after=2)
    identity = IDENTITIES.get(credentials.bearer or "")
    if identity is None:
        raise Unauthorized(code="auth.token_invalid")
    return identity


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def forbidden(permission: str) -> float:
    sample = REGISTRY.get_sample_value("hardened_auth_forbidden_total", {"permission": permission})
    return sample or 0.0


class Shop:
    """A FastAPI app whose handlers count how often they actually ran."""

    def __init__(self, *, identity_step: bool = True) -> None:
        self.ran: list[str] = []
        self.seen: list[Identity] = []
        app = FastAPI()
        install_problem_handlers(app)

        @app.get("/items", dependencies=[ROLES.require("items:read")])
        async def list_items() -> list[str]:
            self.ran.append("list")
            return []

        @app.post("/items")
        async def add_item(
            identity: Annotated[Identity, ROLES.require("items:write")],
        ) -> dict[str, str]:
            self.ran.append("add")
            self.seen.append(identity)
            return {"by": identity.principal or ""}

        @app.post("/sign-out", dependencies=[signed_in(kind="user")])
        async def sign_out() -> dict[str, bool]:
            self.ran.append("sign-out")
            return {"ok": True}

        @app.get("/me")
        async def me(identity: Annotated[Identity, signed_in()]) -> dict[str, str | None]:
            self.ran.append("me")
            return {"principal": identity.principal, "kind": identity.kind}

        @app.get("/health")
        async def health(identity: Annotated[Identity, public()]) -> dict[str, str | None]:
            self.ran.append("health")
            return {"principal": identity.principal}

        router = APIRouter(dependencies=[ROLES.require("shop:manage")])

        @router.delete("/shop")
        async def close_shop() -> dict[str, bool]:
            self.ran.append("close")
            return {"closed": True}

        app.include_router(router)
        if identity_step:
            app.add_middleware(IdentityMiddleware, authenticate=authenticate)
        self.app = app

    def client(self) -> httpx.AsyncClient:
        # raise_app_exceptions=False: see the 500 Starlette sends before it re-raises.
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://shop")


@pytest.fixture
async def shop() -> AsyncIterator[tuple[Shop, httpx.AsyncClient]]:
    """The shop app and a client for it."""
    made = Shop()
    async with made.client() as client:
        yield made, client


# --- the table ----------------------------------------------------------------------------


def test_ladder_gives_each_role_everything_below_it() -> None:
    """Roles.ladder: owner has editor's and viewer's permissions; viewer has only its own."""
    assert ROLES.grants["viewer"] == {"items:read"}
    assert ROLES.grants["editor"] == {"items:read", "items:write", "items:import"}
    assert ROLES.grants["owner"] == {"items:read", "items:write", "items:import", "shop:manage"}
    assert ROLES.order == ("viewer", "editor", "owner")
    assert ROLES.permissions == {"items:read", "items:write", "items:import", "shop:manage"}


def test_allows_checks_the_role_and_refuses_unknown_or_missing_roles() -> None:
    """allows: granted → True; not granted, an unknown role or no role → False."""
    assert ROLES.allows("owner", "items:read")
    assert ROLES.allows("editor", "items:write")
    assert not ROLES.allows("viewer", "items:write")
    assert not ROLES.allows("editor", "shop:manage")
    assert not ROLES.allows("superuser", "items:read")
    assert not ROLES.allows(None, "items:read")
    assert not ROLES.allows("owner", "nobody:has")


def test_at_least_compares_what_roles_grant() -> None:
    """at_least: a role reaches every floor at or below it, never one above; unknown role: no."""
    assert ROLES.at_least("owner", "owner")
    assert ROLES.at_least("owner", "viewer")
    assert ROLES.at_least("editor", "viewer")
    assert not ROLES.at_least("viewer", "editor")
    assert not ROLES.at_least("editor", "owner")
    assert not ROLES.at_least("superuser", "viewer")
    flat = Roles({"a": frozenset({"x:read"}), "b": frozenset({"y:read"})})
    assert not flat.at_least("a", "b")
    assert not flat.at_least("b", "a")


def test_the_table_is_frozen() -> None:
    """The grants mapping cannot be changed after construction, by the caller or through it."""
    source: dict[str, Any] = {"viewer": {"items:read"}}  # any iterable of names is accepted
    roles = Roles(source)
    source["viewer"].add("items:write")
    source["admin"] = {"items:write"}
    assert roles.grants == {"viewer": {"items:read"}}
    with pytest.raises(TypeError):
        roles.grants["admin"] = frozenset({"x"})  # type: ignore[index]


@pytest.mark.parametrize(
    "grants",
    [
        {},
        {"Admin": {"items:read"}},
        {"admin": {"Items:Read"}},
        {"admin": {"items read"}},
        {"admin": {"items:"}},
        {"admin": {":read"}},
        {"admin": {"items:read\n"}},
        {"9admin": {"items:read"}},
        {"admin": {"items:read", ""}},
    ],
    ids=[
        "empty",
        "upper-role",
        "upper-permission",
        "space",
        "trailing-colon",
        "leading-colon",
        "newline",
        "digit-first",
        "empty-permission",
    ],
)
def test_invalid_tables_are_refused_at_declaration(grants: dict[str, Any]) -> None:
    """No role, or a role or permission name outside [a-z][a-z0-9_]*(:…)*: ValueError."""
    with pytest.raises(ValueError, match=r"role|permission"):
        Roles(grants)


def test_ladder_refuses_a_role_twice() -> None:
    """A ladder naming one role on two rungs is a mistake, refused."""
    with pytest.raises(ValueError, match="twice"):
        Roles.ladder(("viewer", {"a:read"}), ("viewer", {"a:write"}))


def test_requiring_a_permission_no_role_grants_is_refused() -> None:
    """require("items:wirte"): a typo would make the route unreachable, so it fails at once."""
    with pytest.raises(ValueError, match="items:wirte"):
        ROLES.require("items:wirte")


def test_requirement_of_finds_the_marker_on_the_dependency_callable() -> None:
    """Each declaration's dependency callable carries the Requirement; other callables do not."""
    declared = ROLES.require("items:write")
    found = requirement_of(declared.dependency)
    assert found == Requirement("permission", "items:write", roles=ROLES)
    assert found is not None
    assert found.roles is ROLES
    assert requirement_of(signed_in(kind="user").dependency) == Requirement(
        "signed_in", kind="user"
    )
    assert requirement_of(signed_in().dependency) == Requirement("signed_in")
    assert requirement_of(public().dependency) == Requirement("public")

    def plain() -> None:
        return None

    assert requirement_of(plain) is None
    assert requirement_of(None) is None
    assert requirement_of(Depends(plain)) is None


def test_requirement_admits_by_role_and_kind() -> None:
    """Requirement.admits: permission by the table, kind when given, public for anyone."""
    write = Requirement("permission", "items:write", roles=ROLES)
    assert write.admits("editor", "api_key")
    assert not write.admits("viewer", "user")
    assert not write.admits(None, "user")
    users = Requirement("signed_in", kind="user")
    assert users.admits(None, "user")
    assert not users.admits("owner", "api_key")
    assert Requirement("signed_in").admits(None, None)
    assert Requirement("public").admits(None, None)


def test_require_identity_raises_the_recorded_refusal_or_a_401() -> None:
    """require_identity: the recorded error as itself; no identity or anonymous → 401 + header."""
    refusal = Unauthorized(code="auth.token_expired")
    with pytest.raises(Unauthorized) as err:
        require_identity(Identity(via="header", error=refusal))
    assert err.value is refusal
    for nobody in (None, ANONYMOUS):
        with pytest.raises(Unauthorized) as err:
            require_identity(nobody)
        assert err.value.code == "auth.missing_credentials"
        assert err.value.headers == {"www-authenticate": "Bearer"}
    who = IDENTITIES["viewer"]
    assert require_identity(who) is who


# --- over HTTP ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/items"), ("POST", "/items"), ("POST", "/sign-out"), ("GET", "/me")],
)
async def test_anonymous_is_401_missing_credentials_with_www_authenticate(
    shop: tuple[Shop, httpx.AsyncClient], method: str, path: str
) -> None:
    """No credential on a non-public route: 401 auth.missing_credentials, the handler not run."""
    app, client = shop
    response = await client.request(method, path)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "auth.missing_credentials"
    assert app.ran == []


@pytest.mark.anyio
async def test_a_recorded_refusal_is_raised_as_itself(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """A credential authenticate refused answers with its own error: 401 or 503 + Retry-After."""
    app, client = shop
    expired = await client.get("/items", headers=bearer("expired"))
    assert expired.status_code == 401
    assert expired.json()["code"] == "auth.token_expired"
    down = await client.post("/items", headers=bearer("lookup-down"))
    assert down.status_code == 503
    assert down.json()["code"] == "auth.lookup_unavailable"
    assert down.headers["retry-after"] == "2"
    ambiguous = await client.get(
        "/me", headers=[("authorization", "Bearer editor"), ("authorization", "Bearer owner")]
    )
    assert ambiguous.status_code == 401
    assert ambiguous.json()["code"] == "auth.ambiguous_credentials"
    assert app.ran == []


@pytest.mark.anyio
async def test_granted_roles_pass_and_the_handler_gets_the_identity(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """Editor and owner (and an owner API key) may write; the handler sees who called."""
    app, client = shop
    for token in ("editor", "owner", "key"):
        response = await client.post("/items", headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json() == {"by": IDENTITIES[token].principal}
    assert app.ran == ["add", "add", "add"]
    expected = [replace(IDENTITIES[t], via="header") for t in ("editor", "owner", "key")]
    assert app.seen == expected


@pytest.mark.anyio
async def test_role_without_the_permission_is_403_forbidden_naming_nothing(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """Viewer writing: 403 auth.forbidden, the permission only in the log, counted once."""
    app, client = shop
    before = forbidden("items:write")
    with capture_logs() as logs:
        response = await client.post("/items", headers=bearer("viewer"))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (403, "auth.forbidden")
    assert "items:write" not in response.text
    assert "write" not in response.text
    assert "viewer" not in response.text
    assert forbidden("items:write") - before == 1
    refused = [e for e in logs if e.get("event") == "request.refused"]
    assert [e["context"]["permission"] for e in refused] == ["items:write"]
    assert refused[0]["context"]["role"] == "viewer"
    assert app.ran == []


@pytest.mark.anyio
async def test_each_refusal_is_counted_under_its_permission(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """Three refusals on two permissions: each label grows by its own count, nothing else."""
    app, client = shop
    before = {p: forbidden(p) for p in ("items:write", "shop:manage", "items:read")}
    assert (await client.post("/items", headers=bearer("viewer"))).status_code == 403
    assert (await client.delete("/shop", headers=bearer("editor"))).status_code == 403
    assert (await client.delete("/shop", headers=bearer("viewer"))).status_code == 403
    assert (await client.get("/items", headers=bearer("viewer"))).status_code == 200
    after = {p: forbidden(p) - before[p] for p in before}
    assert after == {"items:write": 1, "shop:manage": 2, "items:read": 0}
    assert app.ran == ["list"]


@pytest.mark.anyio
async def test_a_signed_in_caller_without_any_role_is_forbidden(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """Authenticated but with no role in the tenant: 403, even for the weakest permission."""
    app, client = shop
    response = await client.get("/items", headers=bearer("roleless"))
    assert response.status_code == 403
    assert response.json()["code"] == "auth.forbidden"
    assert (await client.get("/me", headers=bearer("roleless"))).status_code == 200
    assert app.ran == ["me"]


@pytest.mark.anyio
async def test_router_level_requirement_guards_its_routes(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """A requirement on an included router applies to its routes: only the owner closes shop."""
    app, client = shop
    assert (await client.delete("/shop", headers=bearer("editor"))).status_code == 403
    assert (await client.delete("/shop")).status_code == 401
    assert (await client.delete("/shop", headers=bearer("owner"))).status_code == 200
    assert app.ran == ["close"]


@pytest.mark.anyio
async def test_signed_in_of_a_kind_refuses_other_kinds_with_403(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """signed_in(kind="user"): a user passes, an API key (even owner) is 403, counted as kind."""
    app, client = shop
    before = forbidden("kind:user")
    assert (await client.post("/sign-out", headers=bearer("viewer"))).status_code == 200
    response = await client.post("/sign-out", headers=bearer("key"))
    assert response.status_code == 403
    assert response.json()["code"] == "auth.forbidden"
    assert "api_key" not in response.text
    assert forbidden("kind:user") - before == 1
    assert app.ran == ["sign-out"]


@pytest.mark.anyio
async def test_signed_in_without_a_kind_admits_every_authenticated_caller(
    shop: tuple[Shop, httpx.AsyncClient],
) -> None:
    """signed_in(): users and keys of any role pass and get their own identity."""
    _, client = shop
    for token in ("viewer", "key", "roleless"):
        response = await client.get("/me", headers=bearer(token))
        assert response.status_code == 200
        assert response.json()["principal"] == IDENTITIES[token].principal


@pytest.mark.anyio
async def test_public_lets_anyone_through(shop: tuple[Shop, httpx.AsyncClient]) -> None:
    """public(): anonymous, signed in and even a refused credential reach the handler."""
    app, client = shop
    anonymous = await client.get("/health")
    assert (anonymous.status_code, anonymous.json()) == (200, {"principal": None})
    signed = await client.get("/health", headers=bearer("viewer"))
    assert signed.json() == {"principal": "user:v"}
    refused = await client.get("/health", headers=bearer("expired"))
    assert (refused.status_code, refused.json()) == (200, {"principal": None})
    assert app.ran == ["health", "health", "health"]


@pytest.mark.anyio
async def test_a_route_without_the_identity_step_is_a_500() -> None:
    """No IdentityMiddleware: the requirement raises RuntimeError (a 500), never lets it pass."""
    made = Shop(identity_step=False)
    async with made.client() as client:
        response = await client.get("/items", headers=bearer("owner"))
        assert response.status_code == 500
        assert response.json()["code"] == "internal.error"
        health = await client.get("/health")
        assert health.status_code == 500
    assert made.ran == []
    transport = httpx.ASGITransport(app=made.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        with pytest.raises(RuntimeError, match="IdentityMiddleware"):
            await client.get("/items", headers=bearer("owner"))


def test_check_refuses_a_scope_without_an_identity_step() -> None:
    """Requirement.check on a scope no identity step saw raises RuntimeError for every level."""
    for requirement in (
        Requirement("public"),
        Requirement("signed_in"),
        Requirement("permission", "items:read", roles=ROLES),
    ):
        with pytest.raises(RuntimeError, match="IdentityMiddleware"):
            requirement.check({"type": "http", "state": {}})


def test_check_raises_forbidden_with_the_permission_in_context_only() -> None:
    """Requirement.check: Forbidden whose context names permission, role and kind; not detail."""
    scope = {"type": "http", "state": {"identity": IDENTITIES["viewer"]}}
    with pytest.raises(Forbidden) as err:
        Requirement("permission", "shop:manage", roles=ROLES).check(scope)
    assert err.value.code == "auth.forbidden"
    assert err.value.context == {"permission": "shop:manage", "role": "viewer", "kind": "user"}
    assert "shop:manage" not in str(err.value.detail)
    assert Requirement("permission", "items:read", roles=ROLES).check(scope) is IDENTITIES["viewer"]
