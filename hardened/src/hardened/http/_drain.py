"""Draining: the part of a graceful shutdown that happens while the server still serves.

Closing the listener at the first SIGTERM resets the requests clients are
already sending on keep-alive connections, and a readiness probe that stays
200 until then keeps the load balancer sending more. A drain comes first: the
server's signal handling calls `Drain.start`, readiness (`Health` given this
drain) turns 503 ``draining``, and `DrainMiddleware` puts ``Connection:
close`` on every HTTP/1 response, so each client finishes its exchange, sees
the connection close cleanly and opens its next one elsewhere. Only after the
drain period does the server stop accepting and wait for what is in flight.

`Drain.start` only sets a flag, so a signal handler may call it; a drain is
never undone (a process that began shutting down does not come back).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hardened._asgi import without_header

if TYPE_CHECKING:
    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Drain", "DrainMiddleware"]

_CLOSE = (b"connection", b"close")
# HTTP/2 and HTTP/3 forbid the Connection header; their servers end streams with GOAWAY.
_HTTP1 = frozenset({"1.0", "1.1"})


class Drain:
    """Whether this process is draining; `start` it once shutdown begins."""

    __slots__ = ("_started_at",)

    def __init__(self) -> None:
        self._started_at: float | None = None

    def start(self) -> None:
        """Begin draining (idempotent; safe in a signal handler: it only sets a flag)."""
        if self._started_at is None:
            self._started_at = time.monotonic()

    @property
    def draining(self) -> bool:
        """Whether `start` was called."""
        return self._started_at is not None

    @property
    def started_at(self) -> float | None:
        """``time.monotonic()`` when the drain began, or ``None``."""
        return self._started_at


class DrainMiddleware:
    """Pure-ASGI middleware adding ``Connection: close`` to HTTP/1 responses while draining.

    Whether to close is decided when the response starts, so a request that
    began before the drain and answers during it closes its connection too.
    Install it outside everything that may answer on its own (load shedding,
    host checks), so their refusals close the connection as well.
    """

    def __init__(self, app: ASGIApp, *, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("http_version", "1.1") not in _HTTP1:
            await self.app(scope, receive, send)
            return
        drain = self.drain

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and drain.draining:
                kept = without_header(message.get("headers") or (), b"connection")
                message["headers"] = [*kept, _CLOSE]
            await send(message)

        await self.app(scope, receive, send_closing)
