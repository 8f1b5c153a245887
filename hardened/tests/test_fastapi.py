import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import structlog
from fastapi import FastAPI
from pydantic import BaseModel
from structlog.testing import capture_logs

from hardened._context import correlation_id_var
from hardened._redact import use_redactor
from hardened.errors import (
    ConcurrentModification,
    DependencyUnavailable,
    HardenedError,
    ServiceUnavailable,
)
from hardened.fastapi import install_problem_handlers, lifespan
from hardened.logging import Redactor, Sampler, configure_logging


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


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The production logging pipeline writing JSON lines into a buffer; state restored after."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    buf = io.StringIO()
    configure_logging(json=True, stream=buf)
    yield buf
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    use_redactor(Redactor())


class Clock:
    """A clock the test moves by hand (1/16 s steps are exact in binary floating point)."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_an_outage_of_503s_is_logged_as_sampled_warnings_never_errors(
    json_log: io.StringIO,
) -> None:
    """200 deliberate 503s: no error line, one warning per second with the rest counted."""
    clock = Clock()
    sampler = Sampler(clock=clock)
    app = FastAPI()
    install_problem_handlers(app, sampler=sampler)

    @app.get("/outage")
    async def outage() -> None:
        raise ServiceUnavailable("Token store down.", code="auth.token_store_unavailable")

    @app.get("/crash")
    async def crash_route() -> None:
        msg = "a real bug"
        raise RuntimeError(msg)

    statuses = []
    async with _client(app) as client:
        for i in range(200):
            statuses.append((await client.get("/outage")).status_code)
            clock.now += 1 / 16  # sixteen refusals per simulated second
            if i % 50 == 0:
                statuses.append((await client.get("/crash")).status_code)
    assert statuses.count(503) == 200
    assert statuses.count(500) == 4
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    refused = [line for line in lines if line["event"] == "request.refused"]
    # Only the real failures are errors, and each one is logged: failures are never sampled.
    assert [e["event"] for e in errors] == ["request.failed"] * 4
    assert {(r["level"], r["code"], r["status"]) for r in refused} == {
        ("warning", "auth.token_store_unavailable", 503)
    }
    assert len(refused) == 13  # t = 0, 1, ..., 12 simulated seconds
    suppressed = sum(r["suppressed"] for r in refused)
    pending = sampler.pending()[("request.refused", "auth.token_store_unavailable")]
    assert len(refused) + suppressed + pending == 200
