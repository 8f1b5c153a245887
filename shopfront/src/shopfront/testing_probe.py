"""Test-only probes: what storm tests measure or force inside a worker process.

A storm's concurrency is proven where it happens, in the server: a client
counting its own requests in flight counts them before they wait for a
connection, so a server taking one request at a time would look concurrent.
`InFlightProbe` counts the HTTP requests this worker has in progress and
sends the count seen at each request's entry as ``X-Test-In-Flight``; the
highest count over a storm's responses is the most the worker really had at
once (the peak is always reached at an entry). `OrderNumberSpace` shrinks
the order-number space so a storm's numbers collide and the retry on a
unique violation is exercised. Settings refuse both outside ``ENVIRONMENT=test``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shopfront.services.orders import number_space

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from shopfront.settings import Settings

__all__ = ["IN_FLIGHT_HEADER", "InFlightProbe", "OrderNumberSpace", "install"]

IN_FLIGHT_HEADER = "x-test-in-flight"


class InFlightProbe:
    """Pure ASGI: every HTTP response carries the requests in progress when it came in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1  # this request included; no await before it is read
        seen = str(self.in_flight).encode()

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (IN_FLIGHT_HEADER.encode(), seen)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            self.in_flight -= 1


class OrderNumberSpace:
    """Pure ASGI: orders placed in this app draw their numbers from ``space`` values."""

    def __init__(self, app: ASGIApp, *, space: int) -> None:
        self.app = app
        self.space = space

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = number_space.set(self.space)
        try:
            await self.app(scope, receive, send)
        finally:
            number_space.reset(token)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the probes ``settings`` ask for, outermost, so they see every request."""
    if settings.order_number_space is not None:
        app.add_middleware(OrderNumberSpace, space=settings.order_number_space)
    if settings.test_count_in_flight:
        app.add_middleware(InFlightProbe)
