"""Sending problem+json straight from pure-ASGI middleware."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened._context import get_correlation_id
from hardened.errors import problem_for

if TYPE_CHECKING:
    from hardened.types import Scope, Send

__all__ = ["send_problem"]


async def send_problem(
    scope: Scope, send: Send, exc: BaseException, *, debug: bool = False
) -> None:
    """Answer the request with the RFC 9457 rendering of ``exc``."""
    problem = problem_for(
        exc,
        instance=scope.get("path"),
        correlation_id=get_correlation_id(),
        debug=debug,
    )
    body = problem.body()
    headers = [*problem.header_list(), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
