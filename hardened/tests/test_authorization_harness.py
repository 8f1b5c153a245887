"""hardened.testing.assert_authorization over a real FastAPI app: it catches what it promises."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from hardened.auth import Requirement, Roles, public, signed_in
from hardened.errors import Forbidden, NotFound, Unauthorized
from hardened.fastapi import install_problem_handlers
from hardened.http import Credentials, Identity, IdentityMiddleware
from hardened.testing import Caller, Matrix, Probe, assert_authorization, declared_requirements

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROLES = Roles.ladder(("viewer", {"notes:read"}), ("editor", {"notes:write"}))
PLANTED = ("GET", "/planted")
SIGN_OUT = ("DELETE", "/session")


class Service:
    """Notes behind bearer tokens; ``DELETE /session`` revokes the caller's own token."""

    def __init__(self) -> None:
        self.tokens: dict[str, Identity] = {}
        self.serial = itertools.count(1)
        self.writes = 0
        self.renewed: list[str] = []
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        install_problem_handlers(app)

        @app.get("/notes/{note_id}", dependencies=[ROLES.require("notes:read")])
        async def get_note(note_id: str) -> dict[str, str]:
            raise NotFound("No such note.", code="note.not_found")

        @app.post("/notes", status_code=201)
        async def add_note(
            identity: Annotated[Identity, ROLES.require("notes:write")],
        ) -> dict[str, str]:
            self.writes += 1
            return {"by": identity.principal or ""}

        @app.get("/health", dependencies=[public()])
        async def health() -> dict[str, bool]:
            return {"ok": True}

        @app.delete("/session", status_code=204)
        async def sign_out(
            request: Request, _: Annotated[Identity, signed_in(kind="user")]
        ) -> None:
            token = request.headers["authorization"].removeprefix("Bearer ")
            del self.tokens[token]

        @app.get("/planted")
        async def planted() -> dict[str, bool]:
            return {"oops": True}

        app.add_middleware(IdentityMiddleware, authenticate=self.authenticate)
        self.app = app

    async def authenticate(self, credentials: Credentials) -> Identity:
        identity = self.tokens.get(credentials.bearer or "")
        if identity is None:
            raise Unauthorized("Sign in again.", code="auth.token_invalid")
        return identity

    def sign_in(self, role: str, kind: str = "user") -> Caller:
        token = f"tok-{next(self.serial)}"
        self.tokens[token] = Identity(principal=f"{kind}:{role}", kind=kind, role=role)
        return Caller(role, {"authorization": f"Bearer {token}"}, kind=kind, account=(role, kind))

    async def renew(self, caller: Caller) -> Caller:
        self.renewed.append(caller.label)
        role, kind = caller.account
        return self.sign_in(role, kind)

    def callers(self) -> list[Caller]:
        return [self.sign_in("viewer"), self.sign_in("editor"), self.sign_in("editor", "api_key")]


async def walk(made: Service, client: httpx.AsyncClient) -> Matrix:
    """The harness over the service as planted, its sign-out route renewing the caller."""
    return await assert_authorization(
        client,
        made.app,
        ROLES,
        made.callers(),
        exempt=[PLANTED],
        destructive=[SIGN_OUT],
        renew=made.renew,
    )


@pytest.fixture
async def service() -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """The service and a client for it."""
    made = Service()
    transport = httpx.ASGITransport(app=made.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notes") as client:
        yield made, client


@pytest.mark.anyio
async def test_a_route_that_declares_nothing_fails_the_run(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """The planted route with no declaration is named; with it exempted the walk passes."""
    made, client = service
    with pytest.raises(AssertionError) as err:
        await assert_authorization(
            client,
            made.app,
            ROLES,
            made.callers(),
            destructive=[SIGN_OUT],
            renew=made.renew,
        )
    message = str(err.value)
    assert "GET /planted as -: declares no permission" in message
    assert "1 cell(s)" in message
    matrix = await walk(made, client)
    assert PLANTED not in matrix.routes


@pytest.mark.anyio
async def test_matrix_counts_and_table_describe_every_cell(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """Four routes x (anonymous + three callers): the counts and the Markdown table match."""
    made, client = service
    matrix = await walk(made, client)
    assert matrix.routes == (
        ("DELETE", "/session"),
        ("GET", "/health"),
        ("GET", "/notes/{note_id}"),
        ("POST", "/notes"),
    )
    assert len(matrix.cells) == 16
    assert matrix.counts() == {"allowed": 11, "denied": 2, "unauthenticated": 3}
    assert matrix.table() == "\n".join(
        [
            "| route | user:viewer | user:editor | api_key:editor |",
            "|---|---|---|---|",
            "| DELETE /session | A | A | D |",
            "| GET /health | A | A | A |",
            "| GET /notes/{note_id} | A | A | A |",
            "| POST /notes | D | A | A |",
        ]
    )
    by_cell = {(c.route, c.caller): (c.expected, c.status, c.code) for c in matrix.cells}
    assert by_cell[("POST", "/notes"), "user:viewer"] == ("denied", 403, "auth.forbidden")
    assert by_cell[("POST", "/notes"), "anonymous"] == (
        "unauthenticated",
        401,
        "auth.missing_credentials",
    )
    assert by_cell[SIGN_OUT, "api_key:editor"] == ("denied", 403, "auth.forbidden")
    assert by_cell[("GET", "/notes/{note_id}"), "user:editor"] == (
        "allowed",
        404,
        "note.not_found",
    )
    assert by_cell[("GET", "/health"), "anonymous"] == ("allowed", 200, None)
    assert made.writes == 2  # editor and the editor key; the viewer was refused first


@pytest.mark.anyio
async def test_a_forbidden_disguised_as_404_is_reported_as_expected_403(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """A handler turning Forbidden into 404 hides the refusal; the harness says expected 403."""
    made, client = service

    async def hide(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"code": "resource.not_found"}, status_code=404)

    made.app.add_exception_handler(Forbidden, hide)
    with pytest.raises(AssertionError) as err:
        await walk(made, client)
    lines = str(err.value).splitlines()
    assert lines[0] == "authorization failed in 2 cell(s):"
    assert sorted(lines[1:]) == [
        "  DELETE /session as api_key:editor: expected 403, got 404",
        "  POST /notes as user:viewer: expected 403, got 404",
    ]


@pytest.mark.anyio
async def test_a_requirement_that_is_not_enforced_is_caught(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """A leftover dependency override lets everyone write: expected 403 and expected 401 fail."""
    made, client = service
    declared = ROLES.require("notes:write")
    made.app.dependency_overrides[declared.dependency] = lambda: Identity(principal="x")

    @made.app.put("/notes/{note_id}", dependencies=[declared])
    async def replace_note(note_id: str) -> dict[str, str]:
        return {"id": note_id}

    with pytest.raises(AssertionError) as err:
        await walk(made, client)
    lines = sorted(str(err.value).splitlines()[1:])
    assert lines == [
        "  PUT /notes/{note_id} as anonymous: expected 401 without credentials, got 200",
        "  PUT /notes/{note_id} as user:viewer: expected 403, got 200",
    ]


@pytest.mark.anyio
async def test_a_public_route_refusing_with_403_fails(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """A route declared public() that answers 403 auth.forbidden contradicts its declaration."""
    made, client = service

    @made.app.get("/open", dependencies=[public()])
    async def open_route() -> None:
        raise Forbidden("nope")

    with pytest.raises(AssertionError) as err:
        await walk(made, client)
    assert "GET /open as anonymous: public route refused: 403 auth.forbidden" in str(err.value)
    assert "authorization failed in 4 cell(s)" in str(err.value)


@pytest.mark.anyio
async def test_a_5xx_fails_whatever_was_expected(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """A route that crashes for allowed callers is reported as answered 500."""
    made, _ = service

    @made.app.get("/crash", dependencies=[ROLES.require("notes:read")])
    async def crash() -> None:
        raise RuntimeError("bug")

    transport = httpx.ASGITransport(app=made.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://notes") as crashing:
        with pytest.raises(AssertionError) as err:
            await assert_authorization(
                crashing,
                made.app,
                ROLES,
                made.callers(),
                exempt=[PLANTED],
                destructive=[SIGN_OUT],
                renew=made.renew,
            )
    reasons = sorted(line for line in str(err.value).splitlines()[1:] if "/crash" in line)
    assert reasons == [
        "  GET /crash as api_key:editor: answered 500",
        "  GET /crash as user:editor: answered 500",
        "  GET /crash as user:viewer: answered 500",
    ]


@pytest.mark.anyio
async def test_destructive_routes_without_renew_break_the_following_cells(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """Not listing the sign-out route as destructive: every later cell of its callers is a 401."""
    made, client = service
    with pytest.raises(AssertionError) as err:
        await assert_authorization(client, made.app, ROLES, made.callers(), exempt=[PLANTED])
    lines = str(err.value).splitlines()[1:]
    assert (
        "  GET /notes/{note_id} as user:viewer: expected to pass, got 401 auth.token_invalid"
        in (lines)
    )
    assert "  POST /notes as user:editor: expected to pass, got 401 auth.token_invalid" in lines
    assert not any("api_key" in line for line in lines)  # the key was refused: still valid
    assert made.renewed == []


@pytest.mark.anyio
async def test_destructive_routes_with_renew_pass(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """Listed as destructive, each caller is renewed after sign-out and the later cells pass."""
    made, client = service
    callers = made.callers()
    await assert_authorization(
        client,
        made.app,
        ROLES,
        callers,
        exempt=[PLANTED],
        destructive=[SIGN_OUT],
        renew=made.renew,
    )
    assert made.renewed == ["user:viewer", "user:editor", "api_key:editor"]
    assert made.writes == 2
    revoked = [
        c
        for c in callers
        if c.headers["authorization"].removeprefix("Bearer ") not in (made.tokens)
    ]
    assert [c.label for c in revoked] == ["user:viewer", "user:editor"]


@pytest.mark.anyio
async def test_destructive_without_renew_is_refused(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """destructive= without renew= cannot work, so it raises ValueError before any request."""
    made, client = service
    callers = made.callers()
    with pytest.raises(ValueError, match="renew"):
        await assert_authorization(
            client, made.app, ROLES, callers, exempt=[PLANTED], destructive=[SIGN_OUT]
        )
    assert len(made.tokens) == 3  # nobody was signed out


@pytest.mark.anyio
async def test_a_caller_with_a_role_the_table_lacks_is_refused(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """A caller whose role is not in the table is a setup mistake: ValueError naming it."""
    made, client = service
    with pytest.raises(ValueError, match="'admin'"):
        await assert_authorization(
            client, made.app, ROLES, [made.sign_in("admin")], exempt=[PLANTED]
        )


def test_a_route_declaring_two_requirements_is_refused() -> None:
    """Two declarations on one route (route and router level) is ambiguous and raises."""
    app = FastAPI()
    router = APIRouter(prefix="/notes", dependencies=[signed_in()])

    @router.get("/both", dependencies=[ROLES.require("notes:read")])
    async def both() -> None:
        return None

    app.include_router(router)
    with pytest.raises(AssertionError, match="GET /notes/both declares 2 requirements"):
        declared_requirements(app)


async def current_note(identity: Annotated[Identity, ROLES.require("notes:write")]) -> str:
    """A sub-dependency that itself declares the permission (module level: annotations resolve)."""
    return identity.principal or ""


def test_declared_requirements_finds_nested_and_router_declarations() -> None:
    """A declaration inside a sub-dependency or on an included router is the route's."""
    app = FastAPI()

    @app.post("/nested")
    async def nested(note: Annotated[str, Depends(current_note)]) -> None:
        return None

    router = APIRouter(prefix="/admin", dependencies=[ROLES.require("notes:write")])

    @router.get("/stats")
    async def stats() -> None:
        return None

    @app.get("/bare")
    async def bare() -> None:
        return None

    app.include_router(router)
    declared = declared_requirements(app)
    write = Requirement("permission", "notes:write", roles=ROLES)
    assert declared[("POST", "/nested")] == write
    assert declared[("GET", "/admin/stats")] == write
    assert declared[("GET", "/bare")] is None


@pytest.mark.anyio
async def test_a_route_with_a_path_convertor_is_walked(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    """A Starlette path convertor ({name:path}) in the template is filled, not a format spec."""
    made, client = service

    @made.app.get("/files/{file_path:path}", dependencies=[ROLES.require("notes:write")])
    async def get_file(file_path: str) -> dict[str, str]:
        return {"path": file_path}

    matrix = await assert_authorization(
        client,
        made.app,
        ROLES,
        made.callers(),
        probes={("GET", "/files/{file_path:path}"): Probe(path_params={"file_path": "a/b.txt"})},
        exempt=[PLANTED],
        destructive=[SIGN_OUT],
        renew=made.renew,
    )
    cells = [c for c in matrix.cells if c.route == ("GET", "/files/{file_path:path}")]
    assert [(c.caller, c.status) for c in cells] == [
        ("anonymous", 401),
        ("user:viewer", 403),
        ("user:editor", 200),
        ("api_key:editor", 200),
    ]
