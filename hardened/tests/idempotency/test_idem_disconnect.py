"""A client that leaves mid-response, over a real uvicorn server on 127.0.0.1.

Starlette's `StreamingResponse` listens for ``http.disconnect`` and cancels
its stream when the client goes. Behind the middleware the handler's work is
done by then, so its result must still be stored once and replayed whole.
Ordering comes from events, never sleeps: the stream waits until the server
has told the app that the client is gone (a spy between uvicorn and the
middleware sees the ``http.disconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from typing import TYPE_CHECKING

import pytest
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from hardened.idempotency import (
    HttpIdempotencyConfig,
    IdempotencyMiddleware,
    IdempotentRoute,
    StoreBackend,
)
from hardened.stores import MemoryStore
from hardened.testing import serve_app as serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from hardened.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

SECRET = b"test-secret-0123456789abcdef0123"
CHUNKS = [b"first-chunk;", b"second-chunk;", b"third-chunk;", b"last-chunk"]


def request(port: int, key: str) -> bytes:
    return (
        f"POST /stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nIdempotency-Key: {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ).encode()


def dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 message body."""
    body, rest = b"", raw
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2 :]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One whole response (Content-Length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    if headers.get("transfer-encoding") == "chunked":
        raw = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 30)
        return int(status_line.split()[1]), headers, dechunk(raw)
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 30)
    return int(status_line.split()[1]), headers, body


async def exchange(port: int, key: str) -> tuple[int, dict[str, str], bytes]:
    """Send the request on a new connection and read its whole response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(port, key))
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_client_leaving_mid_stream_still_gets_a_whole_replay() -> None:
    """A client that reads part of a stream and hangs up: stored once, its retry replays it all."""
    runs = 0
    client_gone = asyncio.Event()
    answered = asyncio.Event()

    async def stream(request: Request) -> StreamingResponse:
        nonlocal runs
        runs += 1
        await request.body()

        async def chunks() -> AsyncIterator[bytes]:
            yield CHUNKS[0]
            await client_gone.wait()  # the server has reported the disconnect to the app
            for chunk in CHUNKS[1:]:
                await asyncio.sleep(0)  # real work yields to the loop (not a timing wait)
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    guarded = IdempotencyMiddleware(
        Starlette(routes=[Route("/stream", stream, methods=["POST"])]),
        backend=StoreBackend(MemoryStore()),
        secret=SECRET,
        rules=(IdempotentRoute("/stream"),),
        config=HttpIdempotencyConfig(lease=60.0),
    )

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                client_gone.set()
            return message

        try:
            await guarded(scope, watched, send)
        finally:
            answered.set()  # stored or released: the outcome is settled

    key = str(uuid.uuid4())
    async with serve(spy) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(port, key))
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(CHUNKS[0]), 30)  # part of the answer
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # a reset: the client is gone mid-response
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await asyncio.wait_for(client_gone.wait(), 30)
        await asyncio.wait_for(answered.wait(), 30)

        status, headers, body = await exchange(port, key)
    assert status == 200
    assert headers.get("idempotent-replayed") == "true"
    assert body == b"".join(CHUNKS)
    assert runs == 1
