import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from structlog.testing import capture_logs

from hardened._context import correlation_id_var
from hardened.errors import ConcurrentModification, DependencyUnavailable, HardenedError
from hardened.fastapi import install_problem_handlers, lifespan


class Item(BaseModel):
    name: str
    qty: int


def _app(*, debug: bool) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, debug=debug)

    @app.post("/items")
    async def create(item: Item) -> Item:
        return item

    @app.post("/conflict")
    async def conflict() -> None:
        raise ConcurrentModification(code="order.version_conflict", context={"v": 3})

    @app.get("/crash")
    async def crash() -> None:
        token = correlation_id_var.set("cid-1")
        try:
            msg = "secret internals"
            raise RuntimeError(msg)
        finally:
            correlation_id_var.reset(token)

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.anyio
async def test_malformed_json_is_422_problem() -> None:
    """A body that is not JSON is a 422 problem with code request.malformed_json."""
    async with _client(_app(debug=False)) as client:
        resp = await client.post(
            "/items", content=b'{"name": ', headers={"content-type": "application/json"}
        )
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "request.malformed_json"


@pytest.mark.anyio
async def test_invalid_fields_listed_without_input() -> None:
    """Schema violations list fields but never echo the submitted values."""
    async with _client(_app(debug=False)) as client:
        resp = await client.post("/items", json={"name": "n", "qty": "hunter2-secret"})
    body = resp.json()
    assert resp.status_code == 422
    assert body["code"] == "request.validation_failed"
    assert body["errors"][0]["loc"] == ["body", "qty"]
    assert "hunter2-secret" not in resp.text


@pytest.mark.anyio
async def test_library_error_keeps_status_and_code() -> None:
    """A HardenedError raised in a route keeps its status and code."""
    async with _client(_app(debug=False)) as client:
        resp = await client.post("/conflict")
    assert resp.status_code == 409
    assert resp.json()["code"] == "order.version_conflict"
    assert "v" not in resp.json()


@pytest.mark.anyio
async def test_unknown_route_and_method_are_problems() -> None:
    """Starlette's 404 and 405 are rendered as problem+json too."""
    async with _client(_app(debug=False)) as client:
        missing = await client.get("/nope")
        wrong = await client.delete("/items")
    assert (missing.status_code, missing.json()["code"]) == (404, "resource.not_found")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "request.method_not_allowed")
    assert wrong.headers["content-type"] == "application/problem+json"


@pytest.mark.anyio
async def test_crash_has_no_stack_trace_outside_debug() -> None:
    """An unexpected exception is a 500 problem without internals unless debug is on."""
    async with _client(_app(debug=False)) as client:
        resp = await client.get("/crash")
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/problem+json"
    assert "secret internals" not in resp.text
    assert "Traceback" not in resp.text
    async with _client(_app(debug=True)) as client:
        shown = await client.get("/crash")
    assert "secret internals" in shown.text


@pytest.mark.anyio
async def test_lifespan_runs_startup_hooks_and_closes_in_reverse() -> None:
    """The lifespan helper awaits start-up hooks, then closes resources last-opened first."""
    events: list[str] = []

    class Resource:
        def __init__(self, name: str) -> None:
            self.name = name

        async def aclose(self) -> None:
            events.append(f"close {self.name}")

    async def warm() -> None:
        events.append("warm")

    app = FastAPI(lifespan=lifespan(startup=[warm], closing=[Resource("db"), Resource("cache")]))
    async with app.router.lifespan_context(app):
        events.append("serving")
    assert events == ["warm", "serving", "close cache", "close db"]


class PoolTimeout(Exception):
    """Stands in for a database driver's pool timeout."""


def _pool_timeout(exc: BaseException) -> HardenedError | None:
    if isinstance(exc, PoolTimeout):
        return DependencyUnavailable(code="db.pool_timeout", retry_after=4)
    return None


@pytest.mark.anyio
async def test_translate_maps_an_exception_fastapi_catches() -> None:
    """translate= turns an escaped foreign exception into its library error, logged as a warning."""
    app = FastAPI()
    install_problem_handlers(app, translate=[lambda exc: None, _pool_timeout])

    @app.get("/busy")
    async def busy() -> None:
        raise PoolTimeout

    @app.get("/crash")
    async def crash_route() -> None:
        msg = "secret internals"
        raise RuntimeError(msg)

    with capture_logs() as logs:
        async with _client(app) as client:
            resp = await client.get("/busy")
            crash = await client.get("/crash")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "4"
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "db.pool_timeout"
    [refused] = [e for e in logs if e["event"] == "request.refused"]
    assert (refused["log_level"], refused["code"], refused["status"]) == (
        "warning",
        "db.pool_timeout",
        503,
    )
    assert crash.status_code == 500  # declined by every translator: the plain 500, as before
    [failed] = [e for e in logs if e["event"] == "request.failed"]
    assert (failed["log_level"], failed["path"]) == ("error", "/crash")
    assert isinstance(failed["exc_info"], RuntimeError)
