"""Client IP: forwarded headers believed only from trusted proxies, published for the request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from hardened._context import client_ip_var, get_client_ip
from hardened.http._client_ip import ClientIPMiddleware
from hardened.http._proxy import TrustedProxies

if TYPE_CHECKING:
    from hardened.types import Message, Receive, Scope, Send

PROXIES = TrustedProxies.from_strings(["10.0.0.0/8"])


class Recorder:
    """Records what the downstream app sees."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen = {
            "var": get_client_ip(),
            "state": scope["state"]["client_ip"],
            "client": tuple(scope["client"]),
        }
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(peer: str, forwarded: str | None = None) -> dict[str, Any]:
    app = Recorder()
    transport = httpx.ASGITransport(
        app=ClientIPMiddleware(app, trusted_proxies=PROXIES), client=(peer, 5555)
    )
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/", headers=headers)
    assert response.status_code == 204
    return app.seen


@pytest.mark.anyio
async def test_untrusted_peer_forwarded_header_is_ignored() -> None:
    """From an untrusted peer, X-Forwarded-For is ignored and the peer address is the client."""
    seen = await call("203.0.113.9", forwarded="1.2.3.4")
    assert seen == {"var": "203.0.113.9", "state": "203.0.113.9", "client": ("203.0.113.9", 5555)}


@pytest.mark.anyio
async def test_trusted_peer_forwarded_client_is_published_everywhere() -> None:
    """Behind a trusted proxy, the forwarded client is in the contextvar, state and scope client."""
    seen = await call("10.0.0.5", forwarded="198.51.100.7, 10.0.0.9")
    assert seen == {"var": "198.51.100.7", "state": "198.51.100.7", "client": ("198.51.100.7", 0)}


@pytest.mark.anyio
async def test_trusted_peer_without_forwarded_header_keeps_its_scope_client() -> None:
    """A trusted peer that forwards nothing is itself the client; scope client is unchanged."""
    seen = await call("10.0.0.5")
    assert seen == {"var": "10.0.0.5", "state": "10.0.0.5", "client": ("10.0.0.5", 5555)}


@pytest.mark.anyio
async def test_contextvar_is_reset_after_the_request_even_on_error() -> None:
    """The client IP does not leak past the request, also when the app raises."""

    async def boom(scope: Scope, receive: Receive, send: Send) -> None:
        assert get_client_ip() == "203.0.113.9"
        raise RuntimeError

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        raise AssertionError

    token = client_ip_var.set("outer")
    try:
        scope: Scope = {"type": "http", "client": ("203.0.113.9", 1), "headers": []}
        with pytest.raises(RuntimeError):
            await ClientIPMiddleware(boom, trusted_proxies=PROXIES)(scope, receive, send)
        assert get_client_ip() == "outer"
        assert scope["state"] == {"client_ip": "203.0.113.9"}
    finally:
        client_ip_var.reset(token)


@pytest.mark.anyio
async def test_existing_state_is_kept_and_missing_client_is_none() -> None:
    """An existing scope state dict is extended, and a scope without client yields None."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope["state"], var=get_client_ip())

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": "http", "headers": [], "state": {"db": "x"}}
    await ClientIPMiddleware(app, trusted_proxies=PROXIES)(scope, receive, send)
    assert seen == {"db": "x", "client_ip": None, "var": None}
