"""Request ids: adopted only from trusted proxies and when sane, bound for the request, echoed."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import structlog
from prometheus_client import REGISTRY

from hardened._context import get_correlation_id
from hardened.http._proxy import TrustedProxies
from hardened.http._request_id import RequestIdMiddleware, is_valid_request_id
from hardened.logging import configure_logging, get_logger

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hardened.types import Message, Receive, Scope, Send

PROXY = TrustedProxies.from_strings(["10.0.0.0/8"])
GENERATED = re.compile(r"[0-9a-f]{32}")


class RecordingApp:
    """A raw ASGI app remembering what it saw; it logs one line and may set its own id header."""

    def __init__(self, own_id: bytes | None = None) -> None:
        self.own_id = own_id
        self.seen: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen = {
            "context": get_correlation_id(),
            "state": scope.get("state", {}).get("correlation_id"),
            "structlog": structlog.contextvars.get_contextvars().get("correlation_id"),
        }
        get_logger("app").info("handling", path=scope.get("path"))
        headers = [(b"content-type", b"text/plain")]
        if self.own_id is not None:
            headers.append((b"x-request-id", self.own_id))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the previous logging state is restored after."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    buf = io.StringIO()
    configure_logging(json=True, stream=buf)
    yield buf
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


async def _get(
    app: RecordingApp,
    *,
    peer: str = "127.0.0.1",
    headers: list[tuple[bytes, bytes]] | None = None,
    **options: Any,
) -> httpx.Response:
    middleware = RequestIdMiddleware(app, trusted_proxies=PROXY, **options)
    transport = httpx.ASGITransport(app=middleware, client=(peer, 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/orders", headers=headers or [])


@pytest.mark.anyio
async def test_untrusted_peer_id_is_replaced(log_lines: io.StringIO) -> None:
    """A client that is not a trusted proxy cannot choose its request id."""
    app = RecordingApp()
    response = await _get(app, peer="203.0.113.9", headers=[(b"X-Request-ID", b"forged-id")])
    echoed = response.headers["x-request-id"]
    assert echoed != "forged-id"
    assert GENERATED.fullmatch(echoed)
    assert app.seen == {"context": echoed, "state": echoed, "structlog": echoed}


@pytest.mark.anyio
async def test_trusted_proxy_id_is_adopted_and_logged(log_lines: io.StringIO) -> None:
    """A sane id from a trusted proxy is used in the app, in log lines and in the response."""
    app = RecordingApp()
    response = await _get(app, peer="10.1.2.3", headers=[(b"X-Request-ID", b"lb-7f3a:01.b_c-d")])
    assert response.headers["x-request-id"] == "lb-7f3a:01.b_c-d"
    assert app.seen["context"] == "lb-7f3a:01.b_c-d"
    lines = [json.loads(raw) for raw in log_lines.getvalue().splitlines()]
    [line] = [line for line in lines if line["logger"] == "app"]
    assert line["event"] == "handling"
    assert line["correlation_id"] == "lb-7f3a:01.b_c-d"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [b"a" * 129, b"has space", b"semi;colon", b"caf\xe9", b"a\r\nX-Injected: 1", b"<b>", b""],
)
async def test_insane_ids_from_a_trusted_proxy_are_replaced(value: bytes) -> None:
    """Too long, empty, non-ASCII or CRLF-carrying ids are never adopted, even from a proxy."""
    app = RecordingApp()
    response = await _get(app, peer="10.1.2.3", headers=[(b"x-request-id", value)])
    echoed = response.headers["x-request-id"]
    assert GENERATED.fullmatch(echoed)
    assert app.seen["context"] == echoed


@pytest.mark.anyio
async def test_longest_sane_id_is_adopted() -> None:
    """The 128-character boundary is inclusive."""
    value = "A" * 128
    headers = [(b"x-request-id", value.encode())]
    response = await _get(RecordingApp(), peer="10.9.9.9", headers=headers)
    assert response.headers["x-request-id"] == value


@pytest.mark.anyio
async def test_missing_header_gets_a_fresh_id_per_request() -> None:
    """Without an incoming id every request gets its own generated one."""
    first = (await _get(RecordingApp())).headers["x-request-id"]
    second = (await _get(RecordingApp())).headers["x-request-id"]
    assert GENERATED.fullmatch(first)
    assert first != second


@pytest.mark.anyio
async def test_app_set_header_is_not_duplicated_or_kept_when_different() -> None:
    """One id header leaves the middleware: the app's copy if equal, ours if it differs."""
    same = await _get(
        RecordingApp(own_id=b"lb-1"), peer="10.0.0.1", headers=[(b"x-request-id", b"lb-1")]
    )
    assert same.headers.get_list("x-request-id") == ["lb-1"]
    other = await _get(RecordingApp(own_id=b"app-made"))
    [echoed] = other.headers.get_list("x-request-id")
    assert GENERATED.fullmatch(echoed)


@pytest.mark.anyio
async def test_custom_header_name() -> None:
    """The header to read and echo is configurable (e.g. X-Correlation-ID)."""
    response = await _get(
        RecordingApp(),
        peer="10.0.0.1",
        headers=[(b"X-Correlation-ID", b"corr-1")],
        header="X-Correlation-ID",
    )
    assert response.headers["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in response.headers


@pytest.mark.anyio
async def test_context_is_reset_after_the_request() -> None:
    """The correlation id does not leak into whatever runs after the request."""
    await _get(RecordingApp())
    assert get_correlation_id() is None
    assert "correlation_id" not in structlog.contextvars.get_contextvars()


async def _drive(middleware: RequestIdMiddleware, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent


def _scope(kind: str, headers: list[tuple[bytes, bytes]], **extra: Any) -> Scope:
    return {"type": kind, "path": "/", "headers": headers, "client": ("10.0.0.5", 1), **extra}


@pytest.mark.anyio
async def test_duplicate_incoming_ids_are_not_adopted() -> None:
    """Two X-Request-ID headers at once are ambiguous, so neither is believed."""
    app = RecordingApp()
    headers = [(b"x-request-id", b"one"), (b"x-request-id", b"two")]
    await _drive(RequestIdMiddleware(app, trusted_proxies=PROXY), _scope("http", headers))
    assert GENERATED.fullmatch(app.seen["context"])


@pytest.mark.anyio
async def test_existing_state_is_kept() -> None:
    """Other entries of scope["state"] (lifespan state) survive next to the id."""
    scope = _scope("http", [(b"x-request-id", b"abc")], state={"db": "pool"})
    await _drive(RequestIdMiddleware(RecordingApp(), trusted_proxies=PROXY), scope)
    assert scope["state"] == {"db": "pool", "correlation_id": "abc"}


@pytest.mark.anyio
async def test_websocket_accept_carries_the_id() -> None:
    """A WebSocket handshake gets the id bound and echoed in its accept headers."""
    seen: list[str | None] = []

    async def ws_app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        seen.append(get_correlation_id())
        await send({"type": "websocket.accept"})

    middleware = RequestIdMiddleware(ws_app, trusted_proxies=PROXY)
    sent = await _drive(middleware, _scope("websocket", [(b"x-request-id", b"ws-1")]))
    assert seen == ["ws-1"]
    assert sent == [{"type": "websocket.accept", "headers": [(b"x-request-id", b"ws-1")]}]


@pytest.mark.anyio
async def test_lifespan_passes_through_untouched() -> None:
    """Lifespan scopes reach the app as they are: no id, no state, no context."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((dict(scope), get_correlation_id()))

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await _drive(RequestIdMiddleware(app), scope)
    assert seen == [({"type": "lifespan", "asgi": {"version": "3.0"}}, None)]


@pytest.mark.anyio
async def test_rejections_are_counted() -> None:
    """Refused incoming ids are counted by reason in Prometheus."""
    name = "hardened_request_id_rejected_total"

    def count(reason: str) -> float:
        return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0

    before = count("untrusted_peer"), count("invalid")
    await _get(RecordingApp(), peer="203.0.113.9", headers=[(b"x-request-id", b"x")])
    await _get(RecordingApp(), peer="10.0.0.9", headers=[(b"x-request-id", b"bad id")])
    assert (count("untrusted_peer"), count("invalid")) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("abc", True), ("A.b:c_d-9", True), ("x" * 128, True), ("", False), ("x" * 129, False)],
)
def test_is_valid_request_id(value: str, ok: bool) -> None:
    """The sanity rule is 1 to 128 characters of [A-Za-z0-9._:-] and nothing else."""
    assert is_valid_request_id(value) is ok
    assert is_valid_request_id(value + "\n") is False


def test_bad_header_name_is_refused() -> None:
    """A header name that is not an HTTP token fails at construction, not per request."""
    with pytest.raises(ValueError, match="header name"):
        RequestIdMiddleware(RecordingApp(), header="x request id")


@pytest.mark.anyio
async def test_app_headers_as_a_generator_are_kept() -> None:
    """Response headers given as any iterable (ASGI allows it) survive next to the id."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = ((k, v) for k, v in [(b"content-type", b"text/plain")])
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    sent = await _drive(RequestIdMiddleware(app), _scope("http", []))
    [name_and_type, id_header] = sent[0]["headers"]
    assert name_and_type == (b"content-type", b"text/plain")
    assert id_header[0] == b"x-request-id"
    assert GENERATED.fullmatch(id_header[1].decode())
