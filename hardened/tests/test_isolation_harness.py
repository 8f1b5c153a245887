import httpx
import pytest
from fastapi import APIRouter, FastAPI, Header, HTTPException, WebSocket
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.testing import Probe, app_routes, assert_isolated, tenant_models_without_mixin

ROWS = {"a1": "A", "b1": "B"}


def _app(*, leak_list: bool = False, forbid: bool = False, crash: bool = False) -> FastAPI:
    app = FastAPI()

    @app.get("/things")
    async def things(x_tenant: str = Header()) -> list[str]:
        return [k for k, t in ROWS.items() if leak_list or t == x_tenant]

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str, x_tenant: str = Header()) -> str:
        if crash:
            raise RuntimeError
        if ROWS.get(thing_id) != x_tenant:
            raise HTTPException(403 if forbid else 404)
        return thing_id

    @app.get("/health")
    async def health() -> str:
        return "ok"

    return app


PROBES = {
    ("GET", "/things"): Probe(expect="absent", secrets=("a1",)),
    ("GET", "/things/{thing_id}"): Probe(path_params={"thing_id": "a1"}),
}
PUBLIC = {("GET", "/health"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/redoc")}
PUBLIC |= {("GET", "/docs/oauth2-redirect")}


def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers={"x-tenant": "B"})


@pytest.mark.anyio
async def test_isolated_app_passes_and_every_route_is_probed() -> None:
    """An app that scopes every route passes, and the probed routes are reported."""
    app = _app()
    async with _client(app) as client:
        probed = await assert_isolated(client, app, PROBES, public=PUBLIC)
    assert set(probed) == set(PROBES)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"leak_list": True}, "body contains tenant A's ['a1']"),
        ({"forbid": True}, "expected 404, got 403"),
        ({"crash": True}, "answered 500"),
    ],
)
async def test_leaks_403s_and_crashes_fail_the_run(flags: dict[str, bool], expected: str) -> None:
    """A leaking list, a 403 that confirms existence, or a 5xx all fail the harness."""
    app = _app(**flags)
    async with _client(app) as client:
        with pytest.raises(AssertionError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            await assert_isolated(client, app, PROBES, public=PUBLIC)


@pytest.mark.anyio
async def test_a_new_route_without_probe_fails_the_run() -> None:
    """A route nobody wrote a probe for fails the run by name."""
    app = _app()

    @app.delete("/things/{thing_id}")
    async def delete(thing_id: str) -> None:
        return None

    async with _client(app) as client:
        with pytest.raises(
            AssertionError, match=r"DELETE /things/\{thing_id\}: no isolation probe"
        ):
            await assert_isolated(client, app, PROBES, public=PUBLIC)


def test_routes_of_included_routers_are_enumerated() -> None:
    """Routes added through include_router (with prefixes) are enumerated with full paths."""
    inner = APIRouter(prefix="/inner")

    @inner.get("/{thing_id}")
    async def thing(thing_id: str) -> str:
        return thing_id

    @inner.websocket("/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.close()

    outer = APIRouter()
    outer.include_router(inner, prefix="/outer")
    app = FastAPI()
    app.include_router(outer, prefix="/api")
    routes = app_routes(app)
    assert ("GET", "/api/outer/inner/{thing_id}") in routes
    assert ("WEBSOCKET", "/api/outer/inner/live") in routes


def test_routes_are_enumerated_with_methods() -> None:
    """Route enumeration lists method and path template, HEAD/OPTIONS excluded."""
    assert ("GET", "/things/{thing_id}") in app_routes(_app())
    assert not [r for r in app_routes(_app()) if r[0] in {"HEAD", "OPTIONS"}]


def test_models_with_tenant_column_must_use_the_mixin() -> None:
    """A mapped class with a tenant_id column but without the mixin is reported."""

    class Base(DeclarativeBase):
        pass

    class Mixin:
        pass

    class Good(Mixin, Base):
        __tablename__ = "good"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        tenant_id: Mapped[str] = mapped_column(String)

    class Sneaky(Base):
        __tablename__ = "sneaky"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        tenant_id: Mapped[str] = mapped_column(String)

    assert tenant_models_without_mixin(Base, Mixin) == ["Sneaky"]
