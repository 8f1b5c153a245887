"""FastAPI glue: problem+json for every error, lifespan wiring, dependencies.

The guarantees live in the framework-free modules; this adapter only maps
FastAPI's and Starlette's own errors (request validation, malformed JSON, 404,
405) onto the same `hardened.errors` rendering, so a client sees one error
format whichever layer refused. Unexpected exceptions are logged with the
correlation id and answered with a bare 500 problem (the exception text only
in debug mode), unless a ``translate`` function maps them to a library error
(the same translators as `hardened.http.ErrorBoundaryMiddleware`, logged the
same way). That handler runs in Starlette's ``ServerErrorMiddleware``, outside
user middleware, which closes the connection after answering: install the
boundary middleware too, and this handler only sees what escapes it.

A library error raised on purpose is a refusal, not a failure: logged as
``request.refused`` at warning (5xx) or info (4xx), sampled like the boundary's
(`hardened.logging.Sampler`), and only a 500 is an error. A Redis outage in
strict mode answers every request with a 503; that is an expected answer, and
one error line per request would page someone for each.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from hardened._extras import missing_extra

try:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import Response
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.fastapi", "fastapi") from exc

from hardened._context import get_client_ip, get_correlation_id
from hardened.errors import (
    FieldError,
    HardenedError,
    Problem,
    ValidationFailed,
    problem_for,
)
from hardened.http import log_exception, translate_exception
from hardened.logging import Sampler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from fastapi import FastAPI, Request

    from hardened.http import Translator

__all__ = [
    "client_ip",
    "correlation_id",
    "install_problem_handlers",
    "lifespan",
    "problem_response",
]


def _log() -> Any:
    # Per event, not at import: a logger cached on first use would keep the
    # processors of whatever configuration was active then (tests capture logs).
    return structlog.get_logger("hardened.fastapi")


_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    404: ("resource.not_found", "Not Found"),
    405: ("request.method_not_allowed", "Method Not Allowed"),
    406: ("request.not_acceptable", "Not Acceptable"),
    413: ("request.too_large", "Payload Too Large"),
    415: ("request.unsupported_media_type", "Unsupported Media Type"),
}


def _respond(problem: Problem) -> Response:
    headers = {k.decode(): v.decode("latin-1") for k, v in problem.header_list()}
    media_type = headers.pop("content-type")
    return Response(
        problem.body(), status_code=problem.status, headers=headers, media_type=media_type
    )


def _correlation_id(request: Request) -> str | None:
    # Starlette answers crashes outside user middleware, after the request-id
    # middleware has reset its contextvar; the scope still holds the id.
    cid = get_correlation_id()
    if cid is None:
        state = request.scope.get("state") or {}
        cid = state.get("correlation_id")
    return cid


def problem_response(request: Request, exc: BaseException, *, debug: bool = False) -> Response:
    """Render ``exc`` as an RFC 9457 response for this request."""
    cid = _correlation_id(request)
    return _respond(problem_for(exc, instance=request.url.path, correlation_id=cid, debug=debug))


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    # Never echo ``input``: it may be a password or a card number.
    return [
        FieldError(tuple(err.get("loc", ())), str(err.get("msg", "")), str(err.get("type", "")))
        for err in exc.errors()
    ]


def install_problem_handlers(
    app: FastAPI,
    *,
    debug: bool = False,
    translate: Sequence[Translator] = (),
    sampler: Sampler | None = None,
) -> None:
    """Route every error a FastAPI app can raise through the problem renderer.

    ``translate``: functions mapping an unexpected exception to a library error
    (first non-None wins), as for `hardened.http.ErrorBoundaryMiddleware`.
    ``sampler`` thins out repeated refusals in the log (a fresh one-per-second
    `Sampler` by default; ``Sampler(interval=0)`` logs every one).
    """
    translators = tuple(translate)
    refusals = sampler if sampler is not None else Sampler()

    def log(request: Request, exc: Exception, error: HardenedError | None) -> None:
        cid = _correlation_id(request)
        path = request.url.path
        log_exception(_log(), exc, error, sampler=refusals, path=path, correlation_id=cid)

    async def on_hardened(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HardenedError)  # noqa: S101 - registered for this type
        log(request, exc, exc)
        return problem_response(request, exc, debug=debug)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        errors = _field_errors(exc)
        if any(e.type == "json_invalid" for e in errors):
            failed = ValidationFailed(
                "The request body is not valid JSON.", code="request.malformed_json", errors=errors
            )
        else:
            failed = ValidationFailed("The request did not pass validation.", errors=errors)
        return await on_hardened(request, failed)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        code, title = _STATUS_ERRORS.get(exc.status_code, ("request.invalid", "Bad Request"))
        return _respond(
            Problem(
                status=exc.status_code,
                code=code,
                title=title,
                instance=request.url.path,
                correlation_id=_correlation_id(request),
                headers=dict(exc.headers or {}),
            )
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        error = translate_exception(exc, translators, log=_log()) if translators else None
        log(request, exc, error)
        return problem_response(request, exc if error is None else error, debug=debug)

    app.add_exception_handler(HardenedError, on_hardened)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


def lifespan(
    *,
    startup: Sequence[Callable[[], Any]] = (),
    closing: Sequence[_Closeable] = (),
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that awaits each startup hook, then closes resources in reverse order."""

    @contextlib.asynccontextmanager
    async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for resource in closing:
                stack.push_async_callback(resource.aclose)
            for hook in startup:
                result = hook()
                if hasattr(result, "__await__"):
                    await result
            yield

    return _lifespan


def correlation_id() -> str | None:
    """Dependency: the request's correlation id."""
    return get_correlation_id()


def client_ip(request: Request) -> str | None:
    """Dependency: the client IP by the trusted-proxy rule (falls back to the peer)."""
    ip = get_client_ip()
    if ip is None and request.client is not None:
        ip = request.client.host
    return ip
