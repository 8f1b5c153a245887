"""Draining: once started, every HTTP/1 response says Connection: close and the server closes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import httpx
import pytest

from hardened.http import Drain, DrainMiddleware
from hardened.testing import serve_app as serve

if TYPE_CHECKING:
    from hardened.types import ASGIApp, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    """200 with a keep-alive header of its own (which a drain must override)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", b"2"),
                (b"connection", b"keep-alive"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def client_for(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def test_drain_starts_once_and_stays_started() -> None:
    """A drain is off until started; starting again keeps the first start time."""
    drain = Drain()
    assert (drain.draining, drain.started_at) == (False, None)
    drain.start()
    first = drain.started_at
    drain.start()
    assert drain.draining
    assert drain.started_at == first


async def test_responses_close_only_once_draining() -> None:
    """Before the drain the app's headers pass untouched; after it, one Connection: close."""
    drain = Drain()
    async with client_for(DrainMiddleware(answer, drain=drain)) as client:
        before = await client.get("/")
        drain.start()
        during = await client.get("/")
    assert before.headers.get_list("connection") == ["keep-alive"]
    assert during.headers.get_list("connection") == ["close"]
    assert during.text == "ok"


async def test_request_begun_before_the_drain_closes_when_it_answers() -> None:
    """The decision is taken at response start: a request admitted earlier still closes."""
    drain = Drain()
    entered, answer_now = asyncio.Event(), asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await answer_now.wait()
        await answer(scope, receive, send)

    async with client_for(DrainMiddleware(slow, drain=drain)) as client:
        pending = asyncio.create_task(client.get("/"))
        await entered.wait()
        drain.start()
        answer_now.set()
        response = await pending
    assert response.headers.get_list("connection") == ["close"]


async def test_http2_and_websocket_scopes_are_left_alone() -> None:
    """HTTP/2 forbids Connection headers, and WebSockets have no HTTP response to mark."""
    drain = Drain()
    drain.start()
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def record(message: Message) -> None:
        sent.append(message)

    middleware = DrainMiddleware(answer, drain=drain)
    await middleware({"type": "http", "http_version": "2", "path": "/"}, receive, record)
    await middleware({"type": "websocket", "path": "/"}, receive, record)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 2
    assert all((b"connection", b"close") not in m["headers"] for m in starts)


# --- over a real uvicorn server: keep-alive connections close cleanly ------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_uvicorn_closes_a_keep_alive_connection_after_its_draining_response() -> None:
    """On one keep-alive socket: a normal exchange, then a draining one ending in a clean EOF."""
    drain = Drain()
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with serve(DrainMiddleware(answer, drain=drain)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            status, headers, body = await read_response(reader)
            assert (status, headers["connection"], body) == (200, "keep-alive", b"ok")
            drain.start()
            writer.write(request)
            status, headers, body = await read_response(reader)
            assert (status, headers["connection"], body) == (200, "close", b"ok")
            assert await asyncio.wait_for(reader.read(), 30) == b""  # FIN, not a reset
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
