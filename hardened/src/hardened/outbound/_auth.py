"""Upstream tokens for an `httpx.AsyncClient`: cached, renewed early, re-fetched once on rejection.

A token is fetched once and shared by every call until it comes within
``refresh_buffer`` of its end; an upstream that ends the session sooner (a
401) gets one re-auth and one replay of the request. Every fetch is
single-flight: one task, shielded from any one waiter's cancellation, whose
outcome every waiter shares; a failure is not cached, so the next call tries
again. Tokens never reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NoReturn

import httpx
import structlog

from hardened.outbound._config import TokenConfig
from hardened.outbound._errors import OutboundRefused, UpstreamAuthFailed
from hardened.outbound._metrics import REAUTHS

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Generator

__all__ = ["Token", "UpstreamAuth"]

_log = structlog.get_logger("hardened.outbound")

Reason = Literal["initial", "expiring", "rejected"]

#: Seconds a caller is told to wait after a failed fetch (the next call fetches again anyway).
_RETRY_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class Token:
    """A token as the auth endpoint issued it; ``expires_in`` None means `TokenConfig.ttl`."""

    value: str
    expires_in: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value:
            raise ValueError("a token is a non-empty string")
        if self.expires_in is not None and not (
            math.isfinite(self.expires_in) and self.expires_in >= 0
        ):
            raise ValueError("expires_in must be a finite number of seconds >= 0")


def _is_401(response: httpx.Response) -> bool:
    return response.status_code == 401


@dataclass(frozen=True, slots=True)
class _Failed:
    """A fetch's failure, told to each waiter as its own `UpstreamAuthFailed`."""

    detail: str
    retry_after: float


class UpstreamAuth(httpx.Auth):
    """Bearer (or any header) auth for async clients, from ``fetch`` (e.g. client credentials).

    ``is_expired`` tells a response that means "this token is no longer
    good" (401 by default). ``reauths`` counts fetches made because a token
    was rejected, ``fetches`` every fetch started; ``on_reauth`` is called
    with each re-auth (for a metric).
    """

    # The body is buffered so the request can be sent again after a re-auth.
    requires_request_body = True

    def __init__(
        self,
        name: str,
        fetch: Callable[[], Awaitable[Token]],
        config: TokenConfig = TokenConfig(),  # noqa: B008 - frozen, so one shared default is safe
        *,
        header: str = "authorization",
        scheme: str | None = "Bearer",
        is_expired: Callable[[httpx.Response], bool] = _is_401,
        clock: Callable[[], float] = time.monotonic,
        on_reauth: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._fetch = fetch
        self._header = header
        self._scheme = scheme
        self._is_expired = is_expired
        self._clock = clock
        # Counted in outbound_reauths_total unless the caller counts it elsewhere.
        self._on_reauth = on_reauth or REAUTHS.incrementer(name)
        self._current: str | None = None
        self._refresh_at = -math.inf
        self._rejected = False
        self._inflight: asyncio.Task[str | _Failed] | None = None
        self.reauths = 0
        self.fetches = 0

    async def token(self) -> str:
        """The current token, fetched first if there is none or it is about to end."""
        if self._inflight is not None:
            return await self._join(self._inflight)
        if self._current is not None and not self._rejected and self._clock() < self._refresh_at:
            return self._current
        if self._current is None:
            reason: Reason = "initial"
        else:
            reason = "rejected" if self._rejected else "expiring"
        return await self._join(self._start(reason))

    async def renew(self, rejected: str) -> str:
        """Re-auth after the upstream refused ``rejected``, unless another call already did."""
        if self._inflight is not None:
            return await self._join(self._inflight)
        if rejected != self._current:
            return await self.token()
        self._rejected = True
        return await self._join(self._start("rejected"))

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Send with the token; on an expiry answer, re-auth and replay once, no more."""
        await request.aread()
        token = await self.token()
        self._apply(request, token)
        response = yield request
        if not self._is_expired(response):
            return
        # Read the refused answer first: it frees its connection before the fetch and the replay.
        await response.aread()
        token = await self.renew(token)
        self._apply(request, token)
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        """Refused: the single-flight fetch needs an event loop."""
        _sync_refused()

    def _apply(self, request: httpx.Request, token: str) -> None:
        request.headers[self._header] = f"{self._scheme} {token}" if self._scheme else token

    def _start(self, reason: Reason) -> asyncio.Task[str | _Failed]:
        self.fetches += 1
        if reason == "rejected":
            self.reauths += 1
            if self._on_reauth is not None:
                self._on_reauth()
        task = asyncio.get_running_loop().create_task(
            self._run(reason), name=f"hardened.outbound.token:{self.name}"
        )
        self._inflight = task
        return task

    async def _join(self, task: asyncio.Task[str | _Failed]) -> str:
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # The fetch itself was cancelled (not this waiter): a failure like any other.
                outcome = _Failed("the token fetch was cancelled", _RETRY_AFTER)
            else:
                raise
        if isinstance(outcome, _Failed):
            raise UpstreamAuthFailed(
                outcome.detail, dependency=self.name, retry_after=outcome.retry_after
            ) from None
        return outcome

    async def _run(self, reason: Reason) -> str | _Failed:
        started = self._clock()
        try:
            try:
                token = await self._fetch_once()
            except Exception as exc:  # noqa: BLE001 - any failure is a refusal, told by type only
                return self._failed(reason, started, exc)
            lifetime = self.config.ttl if token.expires_in is None else token.expires_in
            # A token shorter-lived than the buffer is renewed halfway through its life instead.
            early = min(self.config.refresh_buffer, lifetime / 2)
            self._current = token.value
            self._refresh_at = started + lifetime - early
            self._rejected = False
            _log.info(
                "outbound.token_fetched",
                dependency=self.name,
                reason=reason,
                duration_ms=round((self._clock() - started) * 1000, 1),
            )
            return token.value
        finally:
            self._inflight = None

    async def _fetch_once(self) -> Token:
        async with asyncio.timeout(self.config.auth_timeout):
            token = await self._fetch()
        if not isinstance(token, Token):
            raise TypeError("fetch must return a Token")
        return token

    def _failed(self, reason: Reason, started: float, exc: Exception) -> _Failed:
        _log.warning(
            "outbound.token_fetch_failed",
            dependency=self.name,
            reason=reason,
            error=type(exc).__name__,
            duration_ms=round((self._clock() - started) * 1000, 1),
        )
        if isinstance(exc, TimeoutError):
            return _Failed("the token fetch timed out", _RETRY_AFTER)
        wait = _RETRY_AFTER
        if isinstance(exc, OutboundRefused) and exc.retry_after is not None:
            wait = max(wait, float(exc.retry_after))
        return _Failed("the token fetch failed", wait)


def _sync_refused() -> NoReturn:
    raise RuntimeError("UpstreamAuth works with httpx.AsyncClient only")
