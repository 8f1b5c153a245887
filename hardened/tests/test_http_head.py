"""`HeadMiddleware`: HEAD served from the GET route, the head of its response and no body."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import h11
import httpx
import pytest
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse

from hardened.fastapi import install_problem_handlers
from hardened.http import HeadMiddleware
from hardened.testing import serve_app as serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hardened.types import ASGIApp, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


class Calls:
    """What the routes saw: one entry per run."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.stream_closed = asyncio.Event()


def build_app(calls: Calls) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/items/{item_id}")
    async def item(item_id: int, response: Response) -> dict[str, Any]:
        calls.seen.append(f"item {item_id}")
        response.headers["x-item"] = str(item_id)
        return {"id": item_id, "name": "widget" * 10}

    @app.post("/orders")
    async def order() -> dict[str, str]:
        calls.seen.append("order")
        return {"ok": "yes"}

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def forever() -> AsyncIterator[bytes]:
            try:
                while True:
                    calls.seen.append("chunk")
                    yield b"data: tick\n\n"
                    await asyncio.sleep(0)
            finally:
                calls.stream_closed.set()

        return StreamingResponse(forever(), media_type="text/event-stream")

    return app


def client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_head_on_a_get_route_gets_the_get_head_without_body() -> None:
    """HEAD on an @app.get route is a 200 with the GET's headers, content-length included."""
    calls = Calls()
    async with client(HeadMiddleware(build_app(calls))) as c:
        get = await c.get("/items/7")
        head = await c.head("/items/7")
    assert (get.status_code, head.status_code) == (200, 200)
    assert head.content == b""
    assert dict(head.headers) == dict(get.headers)
    assert int(head.headers["content-length"]) == len(get.content) > 0
    assert head.headers["x-item"] == "7"
    assert calls.seen == ["item 7", "item 7"]  # the route ran once per request


async def test_head_on_a_post_only_route_is_405_naming_the_allowed_methods() -> None:
    """HEAD where only POST is routed is a 405 with the app's Allow header; the route never ran."""
    calls = Calls()
    async with client(HeadMiddleware(build_app(calls))) as c:
        head = await c.head("/orders")
        get = await c.get("/orders")
    assert head.status_code == 405
    assert head.content == b""
    assert head.headers["allow"] == get.headers["allow"] == "POST"
    assert head.headers["content-type"] == "application/problem+json"
    assert head.headers["content-length"] == get.headers["content-length"]
    assert calls.seen == []


async def test_head_on_an_endless_stream_answers_and_stops_the_stream() -> None:
    """HEAD on an endless streaming GET sends the head, completes, and the stream is closed."""
    calls = Calls()
    async with client(HeadMiddleware(build_app(calls))) as c:
        with anyio.fail_after(30):
            head = await c.head("/events")
            await calls.stream_closed.wait()
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""


async def test_other_methods_and_scopes_pass_through_untouched() -> None:
    """GET, POST, websocket and lifespan scopes reach the app as they came; HEAD becomes GET."""
    seen: list[tuple[str, str | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["type"], scope.get("method")))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"body"})

    wrapped = HeadMiddleware(app)
    async with client(wrapped) as c:
        responses = [await c.request(m, "/") for m in ("GET", "POST", "HEAD")]
    assert [r.content for r in responses] == [b"body", b"body", b""]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    await wrapped({"type": "lifespan"}, receive, send)
    await wrapped({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert seen == [
        ("http", "GET"),
        ("http", "POST"),
        ("http", "GET"),
        ("lifespan", None),
        ("websocket", None),
    ]


# -- over a real server ----------------------------------------------------------------------


async def exchange(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    target: str,
) -> tuple[h11.Response, bytes]:
    """One request/response cycle on an open keep-alive connection, framed by h11."""
    request = h11.Request(method=method, target=target, headers=[("host", "test")])
    writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
    await writer.drain()
    response: h11.Response | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data and conn.their_state is h11.SEND_RESPONSE:
                pytest.fail(f"the server closed the connection instead of answering {target}")
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            pytest.fail("the server closed the connection")
    assert response is not None
    conn.start_next_cycle()
    return response, body


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_head_then_get_on_one_keep_alive_connection_under_uvicorn(http: str) -> None:
    """Under uvicorn, HEAD then GET on one connection: same content-length, only GET has a body."""
    async with serve(HeadMiddleware(build_app(Calls())), http=http) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h11.Connection(h11.CLIENT)
        try:
            head, head_body = await exchange(conn, reader, writer, "HEAD", "/items/3")
            get, get_body = await exchange(conn, reader, writer, "GET", "/items/3")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert (head.status_code, get.status_code) == (200, 200)
    head_headers, get_headers = dict(head.headers), dict(get.headers)
    assert head_headers[b"content-length"] == get_headers[b"content-length"]
    assert int(get_headers[b"content-length"]) == len(get_body) > 0
    assert head_body == b""
