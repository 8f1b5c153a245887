"""Load shedding: past a bound on requests in flight, refuse at once instead of queueing.

An overloaded worker that keeps accepting work makes every request slow, and
then every request times out: clients give up on answers the worker is still
computing, retry, and add to the pile. `LoadShedMiddleware` bounds the HTTP
requests one worker process (one event loop) has in flight; one more is
answered 503 ``service.overloaded`` with ``Retry-After`` straight away, which
costs almost nothing and tells a client (or a load balancer) to go elsewhere
or come back later, while the admitted requests keep their latency.

A request holds its slot from the moment the middleware admits it until the
app returns, raises or is cancelled: past the response body, because
background work the app does after answering still loads the worker, and on
every exit path, so the count can neither leak nor go negative. Paths under
``exempt`` (probes and scrapes, by default ``/health`` and ``/metrics``) are
neither counted nor shed: a liveness probe refused on an overloaded worker gets
it restarted, and its load moves on to the next one. Only ``http`` scopes are
counted; WebSockets and lifespan pass through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened.errors import retry_after_seconds
from hardened.http._errors import Overloaded
from hardened.http._paths import PathPattern
from hardened.http._problem import send_problem
from hardened.observability.metrics import counter, gauge

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hardened.types import ASGIApp, Receive, Scope, Send

__all__ = ["DEFAULT_SHED_EXEMPT", "LoadShedMiddleware"]

DEFAULT_SHED_EXEMPT = ("/health", "/metrics")


class LoadShedMiddleware:
    """Pure-ASGI middleware refusing HTTP requests past ``max_in_flight`` in this process.

    ``retry_after`` (seconds, sent rounded up, at least 1) is what a refused
    client is told to wait. ``exempt`` are path prefixes in `PathPattern`
    syntax that are never counted or shed. The in-flight gauge sums every
    instance in the process, which is what one worker's load is.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        retry_after: float = 1,
        exempt: Iterable[str] = DEFAULT_SHED_EXEMPT,
        debug: bool = False,
    ) -> None:
        if max_in_flight < 1:
            msg = f"max_in_flight must be at least 1, got {max_in_flight}"
            raise ValueError(msg)
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after_seconds(retry_after)
        self.exempt = tuple(PathPattern(p) for p in exempt)
        self.debug = debug
        self._in_flight = 0
        self._shed = counter(
            "http_shed_total", "Requests refused 503 because the worker had max_in_flight running."
        )
        self._gauge = gauge("http_requests_in_flight", "HTTP requests admitted and not yet done.")

    @property
    def in_flight(self) -> int:
        """Requests this middleware admitted that have not finished yet."""
        return self._in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_exempt(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self._in_flight >= self.max_in_flight:
            self._shed.inc()
            refusal = Overloaded(
                "The service is at capacity; retry shortly.", retry_after=self.retry_after
            )
            await send_problem(scope, send, refusal, debug=self.debug)
            return
        # No await between the check and the increment: the loop cannot admit two at once.
        self._in_flight += 1
        self._gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight -= 1
            self._gauge.dec()

    def _is_exempt(self, path: str) -> bool:
        return any(p.matches(path) for p in self.exempt)
