"""`ErrorBoundaryMiddleware`: a crash answered inside the middleware stack, connection kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import h11
import httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from hardened.errors import (
    DependencyUnavailable,
    HardenedError,
    NotFound,
    ServiceUnavailable,
    StoreUnavailable,
)
from hardened.fastapi import install_problem_handlers
from hardened.http import (
    ErrorBoundaryMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
    translate_exception,
)
from hardened.logging import Sampler
from hardened.testing import serve_app as serve

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping, Sequence

    from hardened.types import ASGIApp, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


class PoolTimeout(Exception):
    """Stands in for a database driver's pool timeout (a foreign exception)."""


def pool_timeout(exc: BaseException) -> HardenedError | None:
    if isinstance(exc, PoolTimeout):
        return DependencyUnavailable(
            "The database is busy; retry shortly.", code="db.pool_timeout", retry_after=3
        )
    return None


def never(exc: BaseException) -> HardenedError | None:
    return None


def lookup_missing(exc: BaseException) -> HardenedError | None:
    return NotFound("No such thing.") if isinstance(exc, LookupError) else None


def build_app(
    *, boundary: bool = True, translate: Sequence[Callable[[BaseException], Any]] = (), **kw: Any
) -> FastAPI:
    """A FastAPI app with the recommended stack: request id, security headers, boundary."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/crash")
    async def crash() -> None:
        msg = "secret internals"
        raise RuntimeError(msg)

    @app.get("/busy")
    async def busy() -> None:
        raise PoolTimeout

    @app.get("/missing")
    async def missing() -> None:
        raise KeyError("k")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"ok": "yes"}

    if boundary:  # add_middleware wraps: the last added is the outermost
        app.add_middleware(ErrorBoundaryMiddleware, translate=translate, **kw)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app


def client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


# -- over a real server ----------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 client connection, framed by h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    async def get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """Send one GET and read its whole response; fail if the server closes instead."""
        request = h11.Request(method="GET", target=target, headers=[("host", "test")])
        self.writer.write(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        status, headers, body = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(65536), 30)
                if not data and self.conn.their_state is h11.SEND_RESPONSE:
                    pytest.fail(f"the server closed the connection instead of answering {target}")
                self.conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                pytest.fail(f"the server closed the connection instead of answering {target}")
        self.conn.start_next_cycle()
        return status, headers, body


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_crash_keeps_the_connection_and_the_outer_headers_under_uvicorn(http: str) -> None:
    """Under uvicorn a crash and the next request share one connection; the 500 has all headers."""
    async with serve(build_app(), http=http) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            conn = Connection(reader, writer)
            status, headers, body = await conn.get("/crash")
            assert status == 500
            assert headers["content-type"] == "application/problem+json"
            assert headers["x-content-type-options"] == "nosniff"  # from SecurityHeadersMiddleware
            problem = json.loads(body)
            assert problem["code"] == "internal.error"
            assert problem["correlation_id"] == headers["x-request-id"]
            assert "secret internals" not in body.decode()
            after = await conn.get("/ok")
            assert (after[0], json.loads(after[2])) == (200, {"ok": "yes"})
            again = await conn.get("/crash")
            assert again[0] == 500
            assert again[1]["x-request-id"] != headers["x-request-id"]
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# -- in process ------------------------------------------------------------------------------


async def test_untranslated_crash_is_a_500_logged_once_as_request_failed() -> None:
    """An unknown exception is a bare 500 logged once (error, traceback); its text only in debug."""
    with capture_logs() as logs:
        async with client(build_app()) as c:
            resp = await c.get("/crash")
    assert resp.status_code == 500
    assert resp.json()["correlation_id"] == resp.headers["x-request-id"]
    assert "secret internals" not in resp.text
    [failed] = [e for e in logs if e["log_level"] in {"error", "warning"}]
    assert failed["event"] == "request.failed"
    assert failed["log_level"] == "error"
    assert isinstance(failed["exc_info"], RuntimeError)
    assert failed["path"] == "/crash"
    assert failed["correlation_id"] == resp.headers["x-request-id"]
    async with client(build_app(debug=True)) as c:
        shown = await c.get("/crash")
    assert "secret internals" in shown.json()["detail"]


async def test_translated_outage_is_a_503_with_retry_after_logged_as_a_warning() -> None:
    """The first translator that answers wins: a pool timeout is a 503 with Retry-After, warned."""
    app = build_app(translate=[never, pool_timeout, lambda exc: HardenedError("too late")])
    with capture_logs() as logs:
        async with client(app) as c:
            resp = await c.get("/busy")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "3"
    assert resp.headers["x-content-type-options"] == "nosniff"
    body = resp.json()
    assert (body["code"], body["detail"]) == (
        "db.pool_timeout",
        "The database is busy; retry shortly.",
    )
    assert body["correlation_id"] == resp.headers["x-request-id"]
    assert not events(logs, "request.failed")
    [refused] = events(logs, "request.refused")
    assert (refused["log_level"], refused["code"], refused["status"]) == (
        "warning",
        "db.pool_timeout",
        503,
    )
    assert refused["cause"].endswith("PoolTimeout")
    assert "exc_info" not in refused


async def test_translated_client_error_keeps_its_status_logged_at_info() -> None:
    """A translator may answer with any library error: a LookupError is a 404, logged at info."""
    with capture_logs() as logs:
        async with client(build_app(translate=[lookup_missing])) as c:
            resp = await c.get("/missing")
            crash = await c.get("/crash")  # translators that decline leave a plain 500
    assert (resp.status_code, resp.json()["code"]) == (404, "resource.not_found")
    assert crash.status_code == 500
    [refused] = events(logs, "request.refused")
    assert (refused["log_level"], refused["status"]) == ("info", 404)
    assert len(events(logs, "request.failed")) == 1


async def test_a_failing_translator_is_logged_and_skipped() -> None:
    """A translator that raises does not escape: it is logged and the next translator answers."""

    def broken(exc: BaseException) -> HardenedError | None:
        raise ValueError("bug in translator")

    with capture_logs() as logs:
        async with client(build_app(translate=[broken, pool_timeout])) as c:
            resp = await c.get("/busy")
    assert resp.status_code == 503
    [bug] = events(logs, "request.translator_failed")
    assert bug["log_level"] == "error"
    assert bug["exc_info"]


async def test_library_error_escaping_a_plain_asgi_app_is_rendered() -> None:
    """A HardenedError raised outside FastAPI's handlers keeps its status, code and Retry-After."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise StoreUnavailable(retry_after=2)

    with capture_logs() as logs:
        async with client(RequestIdMiddleware(ErrorBoundaryMiddleware(app))) as c:
            resp = await c.get("/x")
    assert (resp.status_code, resp.json()["code"]) == (503, "store.unavailable")
    assert resp.headers["retry-after"] == "2"
    assert [e["log_level"] for e in events(logs, "request.refused")] == ["warning"]


async def test_repeated_refusals_are_sampled_per_code_and_counted() -> None:
    """200 identical 503s and 20 404s: a few lines per code, the dropped ones all counted."""
    now = [0.0]
    sampler = Sampler(clock=lambda: now[0])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/gone":
            raise NotFound
        raise ServiceUnavailable(code="db.unavailable", retry_after=1)

    answered = []
    with capture_logs() as logs:
        async with client(ErrorBoundaryMiddleware(app, sampler=sampler)) as c:
            for i in range(200):
                answered.append((await c.get("/x")).status_code)
                if i % 10 == 0:
                    answered.append((await c.get("/gone")).status_code)
                now[0] += 1 / 16  # sixteen refusals per simulated second (exact in binary)
    assert (answered.count(503), answered.count(404)) == (200, 20)
    assert not [e for e in logs if e["log_level"] == "error"]
    refused = events(logs, "request.refused")
    by_code: dict[str, list[MutableMapping[str, Any]]] = {}
    for event in refused:
        by_code.setdefault(event["code"], []).append(event)
    outage, gone = by_code["db.unavailable"], by_code["resource.not_found"]
    assert {e["log_level"] for e in outage} == {"warning"}
    assert {e["log_level"] for e in gone} == {"info"}
    assert len(outage) == 13  # one per simulated second, t = 0 to 12
    pending = sampler.pending()
    for events_of_code, total in ((outage, 200), (gone, 20)):
        code = events_of_code[0]["code"]
        counted = len(events_of_code) + sum(e["suppressed"] for e in events_of_code)
        assert counted + pending.get(("request.refused", code), 0) == total


async def test_exception_after_the_response_started_is_reraised_unlogged() -> None:
    """Once the response has started nothing can be answered: the exception propagates as it was."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("mid-stream")

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/s", "headers": []}
    with capture_logs() as logs, pytest.raises(RuntimeError, match="mid-stream"):
        await ErrorBoundaryMiddleware(app)(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert logs == []  # whoever handles it outside logs it, once


@pytest.mark.parametrize("exc_type", [asyncio.CancelledError, KeyboardInterrupt])
async def test_base_exceptions_propagate_untouched(exc_type: type[BaseException]) -> None:
    """Cancellation and other BaseExceptions pass through: nothing sent, nothing logged."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise exc_type

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/c", "headers": []}
    with capture_logs() as logs, pytest.raises(exc_type):
        await ErrorBoundaryMiddleware(app)(scope, receive, send)
    assert (sent, logs) == ([], [])


async def test_non_http_scopes_pass_through() -> None:
    """Lifespan and WebSocket exceptions are not the boundary's to answer: they propagate."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError(scope["type"])

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent")

    for kind in ("lifespan", "websocket"):
        with pytest.raises(RuntimeError, match=kind):
            await ErrorBoundaryMiddleware(app)({"type": kind}, receive, send)


def test_translate_exception_returns_the_first_answer() -> None:
    """Library errors translate to themselves, others to the first non-None translation."""
    store = StoreUnavailable()
    assert translate_exception(store, [pool_timeout]) is store
    translated = translate_exception(PoolTimeout(), [never, pool_timeout, lookup_missing])
    assert translated is not None
    assert translated.code == "db.pool_timeout"
    assert translate_exception(RuntimeError(), [never, pool_timeout]) is None
