"""HEAD answered from the GET route, as RFC 9110 section 9.3.2 requires.

Starlette's plain ``Route`` adds HEAD to every GET route; FastAPI's ``APIRoute``
does not, so ``@app.get`` answers HEAD with 405 and monitors, link checkers and
caches that probe with HEAD see a broken endpoint. `HeadMiddleware` runs the
app as GET and sends the client the response's start (status and headers, the
GET's ``Content-Length`` included) and no body. A path with no GET answers as
the app answers a GET there: a POST-only route is a 405 with the app's own
``Allow`` header, never a 200.

Why the response is completed as soon as its head is sent: the body is never
wanted, and once the response is complete the server reports
``http.disconnect`` to the app, so an endless stream (server-sent events) stops
instead of running for a client that is gone; whatever the app sends later is
dropped. Why the scope is copied, not edited: the server keeps its own scope
and reads its method to frame the response (no body for HEAD); told GET, it
would wait for ``Content-Length`` bytes that never come.

Install it outside the guards (just inside the request-id middleware): every
guard then sees the GET that will run, so a rate-limit rule for GET also
limits HEAD. A route of the app's own for HEAD is not reached while it is
installed: the GET route answers. Lifespan, WebSocket and every other method
pass through untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadMiddleware"]

_END = {"type": "http.response.body", "body": b"", "more_body": False}


class HeadMiddleware:
    """Serve HEAD on every GET route: the GET's status and headers, without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        done = False

        async def send_head(message: Message) -> None:
            nonlocal done
            if done:
                return  # the body, or anything after it: the client asked for the head only
            if message["type"] != "http.response.start":
                await send(message)
                return
            done = True  # before awaiting: a failed send must not be followed by a second start
            if message.get("trailers"):
                message = {**message, "trailers": False}  # no body, so nothing to trail
            await send(message)
            await send(dict(_END))

        await self.app({**scope, "method": "GET"}, receive, send_head)
