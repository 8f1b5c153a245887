"""Body limit (413 while streaming, 400 on a malformed length) and content-type (415) guards."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from hardened.errors import PayloadTooLarge
from hardened.http._body import (
    BodyLimitMiddleware,
    BodyLimits,
    ContentTypeMiddleware,
    ContentTypePolicy,
)
from hardened.testing import serve_app as serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hardened.types import ASGIApp, Message, Receive, Scope, Send

MIB = 1024 * 1024
CHUNK = 64 * 1024


class RecordingApp:
    """Reads the whole body, counting the bytes it was handed, then answers 200."""

    def __init__(self) -> None:
        self.calls = 0
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            self.received += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = json.dumps({"received": self.received}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def client_for(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert "correlation_id" in body


async def chunks(total: int, size: int = CHUNK) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


# --- BodyLimitMiddleware over ASGITransport -------------------------------------------------


@pytest.mark.anyio
async def test_body_within_limit_reaches_app_whole() -> None:
    """A body under the limit is passed through untouched, every byte."""
    app = RecordingApp()
    async with client_for(BodyLimitMiddleware(app, max_bytes=1000)) as client:
        response = await client.post("/", content=b"a" * 1000)
    assert response.status_code == 200
    assert app.received == 1000


@pytest.mark.anyio
async def test_declared_too_large_is_refused_before_the_app_runs() -> None:
    """A Content-Length over the limit gets a 413 problem and the app is never invoked."""
    app = RecordingApp()
    async with client_for(BodyLimitMiddleware(app, max_bytes=100)) as client:
        response = await client.post("/", content=b"a" * 101)
    assert_problem(response, 413, "request.too_large")
    assert app.calls == 0


@pytest.mark.anyio
async def test_chunked_body_over_limit_stops_before_the_limit() -> None:
    """A chunked body is cut off as it streams: 413, and the app never gets more than the limit."""
    app = RecordingApp()
    async with client_for(BodyLimitMiddleware(app, max_bytes=MIB)) as client:
        response = await client.post("/", content=chunks(4 * MIB))
    assert_problem(response, 413, "request.too_large")
    assert 0 < app.received <= MIB


@pytest.mark.anyio
async def test_lying_small_content_length_is_caught_while_streaming() -> None:
    """A Content-Length under the limit over a larger body is still stopped at the limit (413)."""
    app = RecordingApp()
    guarded = BodyLimitMiddleware(app, max_bytes=1000)
    async with client_for(guarded) as client:
        # ASGITransport does not frame the body by Content-Length, like a lenient server.
        response = await client.post(
            "/", content=chunks(10_000, 100), headers={"content-length": "10"}
        )
    assert_problem(response, 413, "request.too_large")
    assert app.received <= 1000


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1e3", "5, 6", ""])
async def test_malformed_content_length_is_400(value: str) -> None:
    """A Content-Length that is not one non-negative integer is a 400 problem; app never runs."""
    app = RecordingApp()
    async with client_for(BodyLimitMiddleware(app)) as client:
        response = await client.post("/", content=b"x", headers={"content-length": value})
    assert_problem(response, 400, "request.bad_content_length")
    assert app.calls == 0


@pytest.mark.anyio
async def test_absurdly_long_content_length_is_413_not_a_crash() -> None:
    """A 5000-digit Content-Length (past int()'s digit cap) is treated as too large, not a 500."""
    app = RecordingApp()
    async with client_for(BodyLimitMiddleware(app)) as client:
        response = await client.post("/", content=b"x", headers={"content-length": "9" * 5000})
    assert_problem(response, 413, "request.too_large")


@pytest.mark.anyio
async def test_path_override_raises_the_limit_for_its_subtree_only() -> None:
    """A per-prefix override applies under its prefix (on segment boundaries) and nowhere else."""
    app = RecordingApp()
    guarded = BodyLimitMiddleware(app, max_bytes=10, path_overrides={"/imports": 1000})
    async with client_for(guarded) as client:
        inside = await client.post("/imports/csv", content=b"a" * 500)
        outside = await client.post("/importsx", content=b"a" * 500)
    assert inside.status_code == 200
    assert_problem(outside, 413, "request.too_large")


@pytest.mark.anyio
async def test_app_that_swallows_the_refusal_still_yields_413_and_no_more_body() -> None:
    """An app that catches the error and keeps reading gets nothing more; the client gets 413."""
    seen: list[int] = []

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        for _ in range(3):
            try:
                message = await receive()
                seen.append(len(message.get("body", b"")))
            except PayloadTooLarge:
                seen.append(-1)

    async with client_for(BodyLimitMiddleware(stubborn, max_bytes=150)) as client:
        response = await client.post("/", content=chunks(1000, 100))
    assert_problem(response, 413, "request.too_large")
    assert seen == [100, -1, -1]


@pytest.mark.anyio
async def test_app_answering_a_refused_body_itself_is_replaced_by_413() -> None:
    """An app that turns the body-read error into its own 400 (as FastAPI does) still yields 413."""

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except PayloadTooLarge:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"There was an error parsing"})

    async with client_for(BodyLimitMiddleware(framework, max_bytes=150)) as client:
        response = await client.post("/", content=chunks(1000, 100))
    assert_problem(response, 413, "request.too_large")
    assert b"error parsing" not in response.content


@pytest.mark.anyio
async def test_limit_crossed_after_response_started_aborts() -> None:
    """Past the limit after the response began, the error propagates (abort), never a 2nd start."""
    starts = 0

    async def eager(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body", False):
            pass

    guarded = BodyLimitMiddleware(eager, max_bytes=100)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            nonlocal starts
            starts += message["type"] == "http.response.start"
            await send(message)

        await guarded(scope, receive, counting_send)

    async with client_for(outer) as client:
        with pytest.raises(PayloadTooLarge):
            await client.post("/", content=chunks(1000, 100))
    assert starts == 1


# --- BodyLimitMiddleware over a real uvicorn server -----------------------------------------


async def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one HTTP/1.1 response (Content-Length framed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def assert_raw_problem(status: int, headers: dict[str, str], body: bytes, code: str) -> None:
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    document = json.loads(body)
    assert document["status"] == 413
    assert document["code"] == code
    assert "correlation_id" in document


@pytest.mark.anyio
async def test_uvicorn_chunked_10mb_upload_is_cut_at_1mib() -> None:
    """Over a real socket, a 10 MB chunked upload to a 1 MiB route gets 413; the app saw ≤ 1 MiB."""
    app = RecordingApp()
    async with (
        serve(BodyLimitMiddleware(app, max_bytes=MIB)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        response = await client.post("/upload", content=chunks(10 * 1000 * 1000))
    assert "content-length" not in response.request.headers  # really chunked
    assert_problem(response, 413, "request.too_large")
    assert app.calls == 1
    assert app.received <= MIB + CHUNK


@pytest.mark.anyio
async def test_uvicorn_declared_too_large_answers_before_any_body_is_sent() -> None:
    """Over a raw socket, a 10 MB Content-Length gets 413 without one body byte sent or app call."""
    app = RecordingApp()
    async with serve(BodyLimitMiddleware(app, max_bytes=MIB)) as port:
        request = (
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
        )
        status, headers, body = await raw_exchange(port, request)
    assert_raw_problem(status, headers, body, "request.too_large")
    assert app.calls == 0


@pytest.mark.anyio
async def test_uvicorn_lying_content_length_over_chunked_body_is_413() -> None:
    """Over a raw socket, "Content-Length: 10" on a 1 MiB+1 chunked body is cut off with 413."""
    # h11 applies RFC 9112 section 6.3 (Transfer-Encoding overrides Content-Length), so the
    # app's scope still declares 10 bytes while the body keeps coming: exactly the lie a
    # Content-Length-only check lets through. With a lone Content-Length the server's own
    # framing stops the surplus, and httptools refuses CL+TE outright. The client sends just
    # past the limit and stops, so the server has read everything when it closes (no RST).
    app = RecordingApp()
    body = b"".join(b"%x\r\n%s\r\n" % (CHUNK, b"y" * CHUNK) for _ in range(MIB // CHUNK))
    body += b"1\r\ny\r\n"  # byte MIB + 1; no terminating chunk: the body would go on
    async with serve(BodyLimitMiddleware(app, max_bytes=MIB), http="h11") as port:
        request = (
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        )
        status, headers, document = await raw_exchange(port, request)
    assert_raw_problem(status, headers, document, "request.too_large")
    assert app.calls == 1
    assert app.received <= MIB


# --- ContentTypeMiddleware ------------------------------------------------------------------


def content_type_app(**policy: Any) -> tuple[RecordingApp, ASGIApp]:
    app = RecordingApp()
    return app, ContentTypeMiddleware(app, policy=ContentTypePolicy(**policy))


@pytest.mark.anyio
async def test_json_body_is_accepted_with_parameters_and_any_case() -> None:
    """application/json passes whatever its case and parameters (charset)."""
    _, guarded = content_type_app()
    async with client_for(guarded) as client:
        response = await client.post(
            "/", content=b"{}", headers={"content-type": "Application/JSON; charset=UTF-8"}
        )
    assert response.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "application/json-evil", "json", "text/*"],
)
async def test_other_media_types_are_415(content_type: str) -> None:
    """A body of a media type the route does not accept gets a 415 problem; the app never runs."""
    app, guarded = content_type_app()
    async with client_for(guarded) as client:
        response = await client.put("/", content=b"a=1", headers={"content-type": content_type})
    assert_problem(response, 415, "request.unsupported_media_type")
    assert app.calls == 0


@pytest.mark.anyio
async def test_missing_content_type_with_a_body_is_415() -> None:
    """A non-empty body without Content-Type is refused with 415, chunked or not."""
    _, guarded = content_type_app()
    async with client_for(guarded) as client:
        sized = await client.patch("/", content=b"{}")
        chunked = await client.post("/", content=chunks(10))
    assert_problem(sized, 415, "request.unsupported_media_type")
    assert_problem(chunked, 415, "request.unsupported_media_type")


@pytest.mark.anyio
async def test_requests_without_body_or_unlisted_method_pass() -> None:
    """Empty POSTs and GET/DELETE requests are not subject to the media-type rule."""
    _, guarded = content_type_app()
    async with client_for(guarded) as client:
        empty = await client.post("/")
        get = await client.get("/")
        delete = await client.request("DELETE", "/", content=b"x", headers={"content-type": "a/b"})
    assert [empty.status_code, get.status_code, delete.status_code] == [200, 200, 200]


@pytest.mark.anyio
async def test_path_override_replaces_allowed_types_for_its_prefix() -> None:
    """/imports accepts CSV and multipart, and only there; elsewhere CSV is 415."""
    _, guarded = content_type_app(
        path_overrides={"/imports": {"text/csv", "multipart/form-data"}},
    )
    async with client_for(guarded) as client:
        csv = await client.post(
            "/imports/orders", content=b"a,b\n", headers={"content-type": "text/csv"}
        )
        multipart = await client.post("/imports", files={"file": ("a.csv", b"a,b\n", "text/csv")})
        json_there = await client.post("/imports", json={})
        csv_elsewhere = await client.post(
            "/orders", content=b"a,b\n", headers={"content-type": "text/csv"}
        )
    assert [csv.status_code, multipart.status_code] == [200, 200]
    assert_problem(json_there, 415, "request.unsupported_media_type")
    assert_problem(csv_elsewhere, 415, "request.unsupported_media_type")


def test_policy_and_limits_reject_nonsense_configuration() -> None:
    """Invalid media types, negative limits and relative prefixes fail at construction."""
    with pytest.raises(ValueError, match="media type"):
        ContentTypePolicy(allowed={"json"})
    with pytest.raises(ValueError, match=">= 0"):
        BodyLimits(max_bytes=-1)
    with pytest.raises(ValueError, match="start with '/'"):
        BodyLimits(path_overrides={"imports": 10})
    assert ContentTypePolicy(allowed={"text/*"}).allowed_for("/x") == frozenset({"text/*"})
