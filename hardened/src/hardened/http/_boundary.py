"""An error boundary inside the middleware stack: a crash is answered, the connection kept.

Why Starlette's own handling is not enough: an exception escaping a route is
rendered by ``ServerErrorMiddleware``, which sits outside every user
middleware and re-raises after answering. The server then sees an exception
after the response started and closes the keep-alive connection (clients and
proxies see resets, and pooled connections die under load), and the 500 goes
out without the headers user middleware adds: no security headers, no
``x-request-id`` to quote in a support ticket.

`ErrorBoundaryMiddleware` sits just inside the request-id and security-headers
middleware. It catches `Exception` from the inner app (never `BaseException`:
cancellation and interpreter exits must propagate) and, if the response has
not started, answers with the problem+json of `send_problem` (the correlation
id and format of every other refusal) and returns normally, so the server
keeps the connection. Once the response has started nothing can be answered:
it re-raises, unlogged, for the server (or Starlette's handler) to log and
close the connection, the only honest end of a half-sent response.

Foreign exceptions are mapped to library errors by ``translate``: functions
``exc -> HardenedError | None`` tried in order, the first non-None winning
(e.g. a database pool timeout becomes a 503 with ``Retry-After``). A
`HardenedError` renders as itself; anything else is a 500 whose text appears
only with ``debug=True``. One log event per exception: ``request.failed``
(error, with the traceback) for a 500, ``request.refused`` with the code for
any other status, at warning for 5xx (an expected outage is not a bug) and
info below. Refusals are sampled by a `hardened.logging.Sampler`: an outage
refuses every request the same way, and a line each would bury everything
else, so the first of each code is logged, then one per second with the
count of those left out (``suppressed``). Failures are never sampled.
`hardened.fastapi.install_problem_handlers` takes the same ``translate`` for
exceptions that reach FastAPI's own handler instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import structlog

from hardened._context import get_correlation_id
from hardened.errors import HardenedError
from hardened.http._problem import send_problem
from hardened.logging import Sampler

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ErrorBoundaryMiddleware", "Translator", "log_exception", "translate_exception"]

Translator: TypeAlias = Callable[[BaseException], HardenedError | None]
"""Maps a foreign exception to the library error to answer with, or None to decline."""


def translate_exception(
    exc: BaseException, translate: Sequence[Translator], *, log: Any = None
) -> HardenedError | None:
    """The library error for ``exc``: itself, else the first translation, else None.

    A translator that raises is a bug of its own: it is logged
    (``request.translator_failed``) and skipped, so a broken translator cannot
    turn an answerable error into a dropped connection.
    """
    if isinstance(exc, HardenedError):
        return exc
    for translator in translate:
        try:
            error = translator(exc)
        except Exception:  # a bug in a translator: logged and skipped
            logger = log if log is not None else structlog.get_logger("hardened.http")
            logger.exception("request.translator_failed", translator=repr(translator))
            continue
        if error is not None:
            return error
    return None


def log_exception(
    log: Any,
    exc: BaseException,
    error: HardenedError | None,
    *,
    sampler: Sampler | None = None,
    **fields: Any,
) -> None:
    """The one event for an answered exception: failed (500) or refused (any other status).

    A refusal goes through ``sampler`` when one is given; a failure is always logged.
    """
    if error is None or error.status == 500:
        code = error.code if error is not None else HardenedError.code
        log.error("request.failed", code=code, status=500, exc_info=exc, **fields)
        return
    level = "warning" if error.status >= 500 else "info"
    refused = {
        "code": error.code,
        "status": error.status,
        "cause": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "context": error.context,
        **fields,
    }
    if sampler is None:
        getattr(log, level)("request.refused", **refused)
    else:
        sampler.log(log, level, "request.refused", **refused)


class ErrorBoundaryMiddleware:
    """Answer an exception escaping the app as problem+json, inside the middleware stack.

    Install it just inside `RequestIdMiddleware` and `SecurityHeadersMiddleware`
    so its answers carry their headers; with FastAPI, add it before them
    (``add_middleware`` wraps, the last added is the outermost). ``sampler``
    thins out repeated refusals (a fresh one-per-second `Sampler` by default;
    ``Sampler(interval=0)`` logs every one).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        translate: Sequence[Translator] = (),
        debug: bool = False,
        sampler: Sampler | None = None,
    ) -> None:
        self.app = app
        self.translate = tuple(translate)
        self.debug = debug
        self.sampler = sampler if sampler is not None else Sampler()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True  # before awaiting: a start that failed half-way still counts
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:
                raise
            log = structlog.get_logger("hardened.http")
            error = translate_exception(exc, self.translate, log=log)
            log_exception(
                log,
                exc,
                error,
                sampler=self.sampler,
                path=scope.get("path"),
                correlation_id=get_correlation_id(),
            )
            await send_problem(scope, send, error if error is not None else exc, debug=self.debug)
