"""httpx integration: a transport that sends every request through a `Governor`.

``httpx.AsyncClient(transport=GovernedTransport(governor), auth=UpstreamAuth(...))``:
the auth flow sits above the transport, so a replay after re-authentication
is one more governed call. Per request, ``extensions={"hardened.lane":
"long_running"}`` picks the lane and ``{"hardened.stream": True}`` leaves
the body unread (by default the body is read inside the attempt, so the
bulkhead permit, the attempt timeout and the breaker's slow-call clock cover
the whole exchange).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import httpx

from hardened._context import get_correlation_id
from hardened.outbound._governor import Verdict
from hardened.outbound._retry import parse_retry_after

if TYPE_CHECKING:
    from hardened.outbound._governor import Governor, LaneName

__all__ = ["IDEMPOTENT_METHODS", "RETRYABLE_ERRORS", "GovernedTransport", "traceparent"]

#: Methods RFC 9110 defines as idempotent: retried without an idempotency key.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Transport failures worth another attempt of an idempotent request: the connection
#: failed or was lost (reset, closed before the answer, timed out reading).
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.ReadTimeout,
    httpx.RemoteProtocolError,
)
_NOT_FAILURES = frozenset(range(100, 500)) - {408, 429}


def traceparent(correlation_id: str | None) -> str:
    """A W3C ``traceparent`` whose trace id is the correlation id (a new span per call).

    Correlation ids this library makes are 32 hex digits, exactly a trace id;
    any other id is hashed into one, so a trace can be found from either.
    """
    if correlation_id and len(correlation_id) == 32 and _is_hex(correlation_id):
        trace = correlation_id.lower()
    elif correlation_id:
        import hashlib  # noqa: PLC0415 - only for foreign ids

        trace = hashlib.sha256(correlation_id.encode()).hexdigest()[:32]
    else:
        trace = secrets.token_hex(16)
    return f"00-{trace}-{secrets.token_hex(8)}-01"


def _is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


_HEX = frozenset("0123456789abcdefABCDEF")


class GovernedTransport(httpx.AsyncBaseTransport):
    """Wraps a transport (a pooled ``httpx.AsyncHTTPTransport`` by default) in a governor.

    Idempotent: the methods in `IDEMPOTENT_METHODS`, or any request carrying
    an ``Idempotency-Key`` — and only with a replayable body. A 429, 502,
    503 or 504 (the retry config's statuses) is retried, honouring
    ``Retry-After``; when retries run out the last response is returned as
    it came. 5xx, 408 and 429 count as failures for the breaker.
    """

    def __init__(
        self, governor: Governor, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.governor = governor
        self._inner = transport or httpx.AsyncHTTPTransport()
        self._statuses = governor.config.retry.statuses

    def _classify(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        if status in self._statuses:
            wait = parse_retry_after(response.headers.get("retry-after"))
            return Verdict(failed=True, retryable=True, retry_after=wait)
        if status in _NOT_FAILURES:
            return _OK
        return _FAILED

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = request.headers
        if "traceparent" not in headers:
            headers["traceparent"] = traceparent(get_correlation_id())
        cid = get_correlation_id()
        if cid is not None and "x-request-id" not in headers:
            headers["x-request-id"] = cid
        extensions = request.extensions
        lane: LaneName = (
            "long_running" if extensions.get("hardened.lane") == "long_running" else "default"
        )
        stream = bool(extensions.get("hardened.stream"))
        replayable = isinstance(request.stream, httpx.ByteStream)
        idempotent = replayable and (
            request.method in IDEMPOTENT_METHODS or "idempotency-key" in headers
        )
        inner = self._inner

        async def attempt() -> httpx.Response:
            response = await inner.handle_async_request(request)
            if stream or response.is_stream_consumed:  # asked to stream, or already in memory
                return response
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=httpx.ByteStream(raw),
                extensions=response.extensions,
                request=request,
            )

        return await self.governor.call(
            attempt,
            idempotent=idempotent,
            lane=lane,
            classify=self._classify,
            retry_on=RETRYABLE_ERRORS,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


_OK = Verdict()
_FAILED = Verdict(failed=True)
