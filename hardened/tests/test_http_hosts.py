"""Trusted hosts: exact and wildcard names, port and case ignored, everything else a 400."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from hardened.http._hosts import TrustedHostMiddleware, TrustedHosts, host_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.types import Message, Receive, Scope, Send

ALLOWED = ("api.example.com", "*.shops.example.com", "localhost", "[::1]")


class App:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def get_with_hosts(
    hosts: Sequence[bytes], allowed: Sequence[str] = ALLOWED
) -> tuple[httpx.Response, int]:
    """GET / with exactly these Host headers (none, one or several) through the middleware."""
    app = App()
    guarded = TrustedHostMiddleware(app, allowed_hosts=allowed)

    async def with_raw_hosts(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
        await guarded(
            {**scope, "headers": [*((b"host", h) for h in hosts), *headers]}, receive, send
        )

    transport = httpx.ASGITransport(app=with_raw_hosts)
    async with httpx.AsyncClient(transport=transport, base_url="http://ignored") as client:
        response = await client.get("/")
    return response, app.calls


def assert_bad_host(response: httpx.Response) -> None:
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (400, "request.bad_host")
    assert "correlation_id" in body


@pytest.mark.anyio
@pytest.mark.parametrize(
    "host",
    [
        b"api.example.com",
        b"API.Example.COM",
        b"api.example.com:8443",
        b"api.example.com.",
        b"a.shops.example.com",
        b"a.b.shops.example.com:80",
        b"localhost:8000",
        b"[::1]:8000",
    ],
)
async def test_trusted_hosts_pass(host: bytes) -> None:
    """Exact names, one-or-more-label wildcards, any port, any case, trailing dot: all pass."""
    response, calls = await get_with_hosts([host])
    assert response.status_code == 200
    assert calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "hosts",
    [
        [],
        [b""],
        [b"evil.com"],
        [b"shops.example.com"],
        [b"api.example.com.evil.com"],
        [b"evilapi.example.com"],
        [b"api.example.com:80x"],
        [b"api.example.com@evil.com"],
        [b"api.example.com/evil"],
        [b"[::2]"],
        [b"api.example.com", b"evil.com"],
    ],
)
async def test_untrusted_missing_or_repeated_host_is_400(hosts: list[bytes]) -> None:
    """Missing, repeated, malformed or foreign Host headers get a 400 request.bad_host problem."""
    response, calls = await get_with_hosts(hosts)
    assert_bad_host(response)
    assert calls == 0


@pytest.mark.anyio
async def test_star_allows_any_host() -> None:
    """'*' switches the check off, even for a missing Host."""
    response, _ = await get_with_hosts([b"whatever.invalid"], allowed=("*",))
    missing, _ = await get_with_hosts([], allowed=("*",))
    assert (response.status_code, missing.status_code) == (200, 200)


@pytest.mark.anyio
async def test_untrusted_websocket_is_closed_before_accept() -> None:
    """A WebSocket handshake to an untrusted host is closed (policy violation) without the app."""
    app = App()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    scope: Scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"evil.com")]}
    await TrustedHostMiddleware(app, allowed_hosts=ALLOWED)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert app.calls == 0


@pytest.mark.parametrize("entry", ["", "api.example.com:443", "*.", "a*.example.com", "http://x"])
def test_bad_configuration_is_rejected(entry: str) -> None:
    """Ports, schemes, partial wildcards and empty lists are configuration errors."""
    with pytest.raises(ValueError, match=r"(?i)trusted ?hosts?"):
        TrustedHosts((entry,) if entry else ())


def test_from_strings_ignores_blank_entries() -> None:
    """A comma-split setting with blanks builds the same matcher."""
    hosts = TrustedHosts.from_strings([" api.example.com", " ", "*.example.com "])
    assert hosts.allowed == ("api.example.com", "*.example.com")
    assert hosts.allows("x.example.com:1")
    assert not hosts.allows("example.com")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api.example.com", "api.example.com"),
        (" API.Example.COM ", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("api.example.com.:8443", "api.example.com"),
        ("localhost:8000", "localhost"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("api.example.com:80x", None),
        ("api.example.com@evil.com", None),
        ("[nope]", None),
        ("", None),
    ],
)
def test_host_name_is_the_one_parser_of_host_values(value: str, expected: str | None) -> None:
    """host_name drops port, case and a trailing dot; malformed values are None."""
    assert host_name(value) == expected
