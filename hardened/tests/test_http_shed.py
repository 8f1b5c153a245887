"""Load shedding: past max_in_flight a request gets 503 at once; every exit frees its slot."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client import REGISTRY

from hardened.http import LoadShedMiddleware
from hardened.testing import serve_app as serve

if TYPE_CHECKING:
    from hardened.types import ASGIApp, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


class HoldingApp:
    """Holds ``/slow`` and ``/boom`` on ``release``, answers the rest; counts who got in."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.inside = 0
        self.all_inside = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.inside += 1
        if self.inside >= self.expected:
            self.all_inside.set()
        if scope["path"].startswith(("/slow", "/boom")):
            await self.release.wait()
        if scope["path"] == "/boom":
            msg = "handler failed"
            raise RuntimeError(msg)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


async def _send(_message: Message) -> None:
    return None


def client_for(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def shed_total() -> float:
    return REGISTRY.get_sample_value("hardened_http_shed_total") or 0.0


async def test_request_past_the_bound_gets_503_at_once_and_release_readmits() -> None:
    """With 3 requests held the 4th is a 503 problem with Retry-After; released, all pass."""
    app = HoldingApp(expected=3)
    shed = LoadShedMiddleware(app, max_in_flight=3, retry_after=2)
    before = shed_total()
    async with client_for(shed) as client:
        held = [asyncio.create_task(client.get(f"/slow/{i}")) for i in range(3)]
        await app.all_inside.wait()
        assert shed.in_flight == 3
        refused = await client.get("/slow/extra")
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["code"] == "service.overloaded"
        assert app.inside == 3  # the refused request never reached the app
        assert shed_total() == before + 1
        app.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
        assert shed.in_flight == 0
        again = await asyncio.gather(*(client.get("/fast") for _ in range(5)))
    assert [r.status_code for r in again] == [200] * 5
    assert shed.in_flight == 0


async def test_app_exception_frees_its_slot() -> None:
    """A request whose app raises gives its slot back: the next request is admitted."""
    app = HoldingApp(expected=1)
    app.release.set()
    shed = LoadShedMiddleware(app, max_in_flight=1)
    async with client_for(shed) as client:
        failed = await client.get("/boom")
        assert failed.status_code == 500
        assert shed.in_flight == 0
        assert (await client.get("/fast")).status_code == 200


async def test_cancelled_request_frees_its_slot() -> None:
    """A request cancelled inside the app (server shutdown) gives its slot back."""
    app = HoldingApp(expected=1)
    shed = LoadShedMiddleware(app, max_in_flight=1)
    scope: Scope = {"type": "http", "path": "/slow", "method": "GET", "headers": []}
    task = asyncio.create_task(shed(scope, _receive, _send))
    await app.all_inside.wait()
    assert shed.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert shed.in_flight == 0


async def test_exempt_paths_and_websockets_are_neither_counted_nor_shed() -> None:
    """At capacity, /health/... and /metrics and WebSockets still get through, uncounted."""
    app = HoldingApp(expected=1)
    shed = LoadShedMiddleware(app, max_in_flight=1)
    async with client_for(shed) as client:
        held = asyncio.create_task(client.get("/slow"))
        await app.all_inside.wait()
        assert (await client.get("/fast")).status_code == 503
        for path in ("/health/live", "/health/ready", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        assert shed.in_flight == 1
        inside = app.inside
        await shed({"type": "websocket", "path": "/ws", "headers": []}, _receive, _send)
        assert app.inside == inside + 1  # passed through to the app, not refused
        assert shed.in_flight == 1
        app.release.set()
        assert (await held).status_code == 200
    assert shed.in_flight == 0


@pytest.mark.parametrize(("given", "sent"), [(0.2, "1"), (1, "1"), (2.5, "3")])
async def test_retry_after_is_whole_seconds_rounded_up_at_least_one(
    given: float, sent: str
) -> None:
    """Retry-After is sent in whole seconds, rounded up, never below 1."""
    app = HoldingApp(expected=1)
    shed = LoadShedMiddleware(app, max_in_flight=1, retry_after=given)
    async with client_for(shed) as client:
        held = asyncio.create_task(client.get("/slow"))
        await app.all_inside.wait()
        refused = await client.get("/slow")
        app.release.set()
        await held
    assert refused.headers["retry-after"] == sent


def test_max_in_flight_below_one_is_refused() -> None:
    """A bound that could admit nothing is a configuration error."""
    with pytest.raises(ValueError, match="max_in_flight"):
        LoadShedMiddleware(HoldingApp(0), max_in_flight=0)


# --- over a real uvicorn server: a client that goes away ------------------------------------


async def test_client_disconnect_frees_its_slot_over_a_real_socket() -> None:
    """A client that hangs up while its request waits frees the slot; the next one is a 200."""
    gone = asyncio.Event()
    entered = asyncio.Event()

    async def waits_for_the_client(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/wait":
            entered.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    shed = LoadShedMiddleware(waits_for_the_client, max_in_flight=1)
    async with serve(shed) as port:
        base = f"http://127.0.0.1:{port}"
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /wait HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        await entered.wait()
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert (await client.get("/next")).status_code == 503  # the slot is taken
            writer.close()
            await writer.wait_closed()
            await gone.wait()
            for _ in range(1000):  # the middleware's finally runs as the app returns
                if shed.in_flight == 0:
                    break
                await asyncio.sleep(0)
            assert shed.in_flight == 0
            assert (await client.get("/next")).status_code == 200
