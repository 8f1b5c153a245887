"""Give every request a correlation id that clients cannot forge.

An incoming ``X-Request-ID`` is believed only from a trusted proxy and only if
it is short and made of safe characters: otherwise any client could inject
CRLF or control characters into the log stream, make unrelated requests look
related, or blow up log indexes with megabyte ids. Everything else gets a fresh
id. The id is bound for the whole request (context variable, structlog context,
``scope["state"]``) and echoed in the response so a caller can quote it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hardened._asgi import header_values, with_header
from hardened.http._proxy import TrustedProxies
from hardened.logging import correlation_scope, new_correlation_id
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware", "is_valid_request_id"]

_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # RFC 9110 token, lower case
# Messages that open a response and carry its headers.
_RESPONSE_START = frozenset(
    {"http.response.start", "websocket.accept", "websocket.http.response.start"}
)


def is_valid_request_id(value: str) -> bool:
    """Whether ``value`` is safe to adopt as a correlation id (1-128 of ``[A-Za-z0-9._:-]``)."""
    return _VALID_ID.fullmatch(value) is not None


class RequestIdMiddleware:
    """Pure-ASGI middleware binding a correlation id to each HTTP or WebSocket request.

    ``trusted_proxies`` are the peers whose ``header`` is believed; with the
    default (none trusted) every request gets a generated id. Install it
    outermost so every response, error responses included, carries the id.
    Lifespan and other scope types pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: TrustedProxies = TrustedProxies(),  # noqa: B008 - frozen, immutable
        header: str = "x-request-id",
    ) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies
        self.header = header.strip().lower()
        if not _HEADER_NAME.fullmatch(self.header):
            msg = f"not a valid header name: {header!r}"
            raise ValueError(msg)
        self._header_bytes = self.header.encode("latin-1")
        self._rejected = counter(
            "request_id_rejected_total",
            "Incoming request ids not adopted, by reason (untrusted_peer, invalid).",
            ["reason"],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        correlation_id = self._incoming(scope) or new_correlation_id()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["correlation_id"] = correlation_id
        echo = (self._header_bytes, correlation_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] in _RESPONSE_START:
                message["headers"] = with_header(message.get("headers") or [], *echo)
            await send(message)

        with correlation_scope(correlation_id):
            await self.app(scope, receive, send_with_id)

    def _incoming(self, scope: Scope) -> str | None:
        """The id the trusted proxy sent, or ``None`` when there is none to adopt."""
        values = header_values(scope, self._header_bytes)
        if not values:
            return None
        if not self.trusted_proxies.peer_is_trusted(scope):
            self._rejected.labels(reason="untrusted_peer").inc()
            return None
        value = values[0].decode("latin-1")
        if len(values) != 1 or not is_valid_request_id(value):
            # Several ids at once is as suspicious as a malformed one.
            self._rejected.labels(reason="invalid").inc()
            return None
        return value
