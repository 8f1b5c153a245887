"""WebSocket authentication, per-user sockets, message limits and revocation on every worker.

Authenticate before accept: `reject` (``websocket.close`` before ``websocket.accept``: the
server answers HTTP 403) or accept. Credentials travel in ``Sec-WebSocket-Protocol``, the one
header ``new WebSocket(url, protocols)`` can set: ``bearer, <access token>``
(`websocket_credentials`) or ``ticket, <one-time ticket>`` (`websocket_ticket`, redeemed once
through `TicketStore`). Accept with ``subprotocol="bearer"`` (or ``"ticket"``): a browser that
offered subprotocols drops the connection unless the server picks one, and echoing the marker
keeps the token out of response headers. Never the query string: URLs land in access logs
(uvicorn logs each WebSocket path with its query), proxy logs and browser history. Never
cookies: browsers attach them to cross-site handshakes (cross-site WebSocket hijacking).

`SocketRegistry` tracks several sockets per (user, session) in this process; a `RevocationBus`
carries revocations to every worker (`MemoryRevocationBus`, `RedisRevocationBus` over pub/sub,
which is at-most-once: bound socket lifetimes by the access token's expiry as the backstop).
`MessageRateLimit` is a per-socket in-process GCRA (a socket lives in one process); limits
shared across workers are `hardened.ratelimit.Throttle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

import structlog

from hardened.errors import StoreUnavailable
from hardened.observability.metrics import counter
from hardened.stores import tagged, ttl_ms

if TYPE_CHECKING:
    from collections.abc import Mapping

    from redis.asyncio import Redis

    from hardened.stores import KeyValue
    from hardened.types import Scope, Send

__all__ = [
    "BEARER_SUBPROTOCOL",
    "REVOKED_CLOSE_CODE",
    "TICKET_SUBPROTOCOL",
    "Closer",
    "MemoryRevocationBus",
    "MessageRateLimit",
    "RedisRevocationBus",
    "RevocationBus",
    "SocketHandle",
    "SocketRegistry",
    "SocketRevocation",
    "TicketStore",
    "close_rate_limited",
    "error_frame",
    "listening",
    "reject",
    "websocket_credentials",
    "websocket_ticket",
]

BEARER_SUBPROTOCOL = "bearer"
TICKET_SUBPROTOCOL = "ticket"
REVOKED_CLOSE_CODE = 4401
_SUBPROTOCOL_VALUE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,4096}")  # RFC 7230 token
_TICKET = re.compile(r"[A-Za-z0-9_-]{43}")

#: Closes one socket: ``await closer(code, reason)``.
Closer: TypeAlias = Callable[[int, str], Awaitable[None]]

_REJECTED = counter("ws_rejected_total", "WebSocket handshakes refused before accept.", ["reason"])
_CLOSED = counter("ws_closed_total", "Open WebSockets closed by the server, by cause.", ["cause"])
_BUS_ERRORS = counter("ws_revocation_bus_errors_total", "Revocation bus failures.", ["operation"])


def _log() -> Any:
    # Looked up per event (rare paths) so test capture and late configuration both apply.
    return structlog.get_logger("hardened.auth")


def _after(scope: Scope, marker: str) -> str | None:
    offered = [str(p) for p in scope.get("subprotocols", ())]  # the server split the header
    if offered.count(marker) != 1:
        return None  # absent, or offered twice: ambiguous
    index = offered.index(marker)
    value = offered[index + 1] if index + 1 < len(offered) else ""
    return value if _SUBPROTOCOL_VALUE.fullmatch(value) else None


def websocket_credentials(scope: Scope) -> str | None:
    """The bearer token offered as ``Sec-WebSocket-Protocol: bearer, <token>``, if any."""
    return _after(scope, BEARER_SUBPROTOCOL)


def websocket_ticket(scope: Scope) -> str | None:
    """The one-time ticket offered as ``Sec-WebSocket-Protocol: ticket, <ticket>``, if any."""
    ticket = _after(scope, TICKET_SUBPROTOCOL)
    return ticket if ticket is not None and _TICKET.fullmatch(ticket) else None


def _reason(reason: str) -> str:
    # A close frame carries at most 123 bytes of UTF-8 reason.
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore")


async def reject(send: Send, code: int = 1008, reason: str = "unauthorized") -> None:
    """Refuse a handshake before accept: the server answers HTTP 403; logged and counted."""
    _REJECTED.labels(reason=reason).inc()
    _log().warning("ws.rejected", code=code, reason=reason)
    await send({"type": "websocket.close", "code": code, "reason": _reason(reason)})


async def close_rate_limited(send: Send) -> None:
    """Close an accepted socket that exceeded its message rate (1008 "rate limited")."""
    _CLOSED.labels(cause="rate_limited").inc()
    _log().warning("ws.rate_limited")
    await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})


def error_frame(code: str, message: str) -> str:
    """The standard error message: ``{"type": "error", "code": …, "message": …}``."""
    return json.dumps({"type": "error", "code": code, "message": message}, separators=(",", ":"))


class TicketStore:
    """One-time tickets: 256-bit, stored hashed with a TTL, redeemable once on any `KeyValue`.

    ``redeem`` reads, then deletes: only the caller whose delete removed the key wins.
    A store outage raises `StoreUnavailable`, so the handshake is refused (fail closed).
    """

    def __init__(self, store: KeyValue, *, ttl: float = 30.0, namespace: str = "ws-ticket") -> None:
        ttl_ms(ttl)  # refuses a zero, negative or infinite TTL now, not at first issue
        self._store, self._ttl, self._namespace = store, ttl, namespace

    def _key(self, ticket: str) -> str:
        # 256 random bits: an unkeyed hash suffices, and a store dump reveals no ticket.
        return tagged(self._namespace, hashlib.sha256(ticket.encode("ascii")).hexdigest())

    async def issue(self, payload: Mapping[str, str]) -> str:
        """Store ``payload`` under a fresh ticket and return the ticket."""
        body = dict(payload)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in body.items()):
            raise TypeError("ticket payload must map str to str")
        ticket = secrets.token_urlsafe(32)
        value = json.dumps(body, separators=(",", ":")).encode()
        if not await self._store.set(self._key(ticket), value, ttl=self._ttl, only_if_absent=True):
            raise RuntimeError("ticket collision")  # 2**-256: a broken RNG, not bad luck
        return ticket

    async def redeem(self, ticket: str) -> Mapping[str, str] | None:
        """The payload if ``ticket`` is valid and unused (using it up), else ``None``."""
        if not _TICKET.fullmatch(ticket):
            return None
        key = self._key(ticket)
        value = await self._store.get(key)
        if value is None or await self._store.delete(key) != 1:
            return None
        return cast("dict[str, str]", json.loads(value))


class MessageRateLimit:
    """GCRA for one socket: ``burst`` messages at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float] = time.monotonic) -> None:
        if not (rate > 0 and math.isfinite(rate)) or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._interval = 1.0 / rate
        self._tolerance = self._interval * (burst - 1)
        self._now = now
        self._tat = -math.inf

    def allow(self) -> bool:
        """Take one message from the budget; ``False`` (nothing taken) when exhausted."""
        now = self._now()
        tat = max(self._tat, now)
        if tat - now > self._tolerance:
            return False
        self._tat = tat + self._interval
        return True


@dataclass(frozen=True, slots=True)
class SocketRevocation:
    """Close ``user_id``'s sockets: of one session (family), or all when ``session_id`` is None."""

    user_id: str
    session_id: str | None = None

    def to_json(self) -> bytes:
        return json.dumps({"user_id": self.user_id, "session_id": self.session_id}).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> SocketRevocation:
        data = json.loads(raw)
        event = cls(data["user_id"], data.get("session_id"))
        if not isinstance(event.user_id, str) or not isinstance(event.session_id, str | None):
            raise TypeError("user_id must be a string and session_id a string or null")
        return event


@dataclass(frozen=True, slots=True, eq=False)
class SocketHandle:
    """One registered socket (identity equality: two tabs of one session are two handles)."""

    user_id: str
    session_id: str | None


class SocketRegistry:
    """Live sockets of this process per user and session, closable on revocation.

    A socket of unknown session (``None``) closes on any revocation of its user.
    """

    def __init__(self) -> None:
        self._sockets: dict[str, dict[SocketHandle, Closer]] = {}

    def register(self, user_id: str, session_id: str | None, closer: Closer) -> SocketHandle:
        """Track a socket; ``closer(code, reason)`` closes it."""
        handle = SocketHandle(user_id, session_id)
        self._sockets.setdefault(user_id, {})[handle] = closer
        return handle

    def unregister(self, handle: SocketHandle) -> None:
        """Stop tracking ``handle`` (idempotent)."""
        sockets = self._sockets.get(handle.user_id, {})
        sockets.pop(handle, None)
        if not sockets:
            self._sockets.pop(handle.user_id, None)

    def count(self, user_id: str | None = None) -> int:
        """How many sockets are registered (for ``user_id``, or in all)."""
        if user_id is not None:
            return len(self._sockets.get(user_id, {}))
        return sum(len(s) for s in self._sockets.values())

    async def close_user(
        self,
        user_id: str,
        session_id: str | None = None,
        code: int = REVOKED_CLOSE_CODE,
        reason: str = "revoked",
    ) -> int:
        """Close the user's sockets (of ``session_id`` only, if given); return how many."""
        sockets = self._sockets.get(user_id, {})
        hit = [h for h in sockets if session_id in (None, h.session_id) or h.session_id is None]
        # Untracked before closing, so a repeated event finds nothing left to do.
        closers = [sockets.pop(h) for h in hit]
        if not sockets:
            self._sockets.pop(user_id, None)
        why = _reason(reason)
        results = await asyncio.gather(*(c(code, why) for c in closers), return_exceptions=True)
        for failed in (r for r in results if isinstance(r, Exception)):
            _log().warning("ws.close_failed", error=type(failed).__name__)
        _CLOSED.labels(cause="revoked").inc(len(closers))
        return len(closers)


class RevocationBus(Protocol):
    """Carries revocations to every worker; ``run`` applies them to a registry until cancelled."""

    async def publish(self, event: SocketRevocation) -> None: ...

    async def run(self, registry: SocketRegistry) -> None: ...


@contextlib.asynccontextmanager
async def listening(bus: RevocationBus, registry: SocketRegistry) -> AsyncIterator[None]:
    """Apply ``bus`` events to ``registry`` while the block runs (an app's lifespan)."""
    task = asyncio.create_task(bus.run(registry))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _apply(registry: SocketRegistry, event: SocketRevocation) -> None:
    closed = await registry.close_user(event.user_id, event.session_id)
    _log().info("ws.revocation.applied", user_id=event.user_id, sockets=closed)


class MemoryRevocationBus:
    """In-process bus: a publish closes sockets in every registry running here."""

    def __init__(self) -> None:
        self._registries: list[SocketRegistry] = []

    async def publish(self, event: SocketRevocation) -> None:
        await asyncio.gather(*(_apply(r, event) for r in list(self._registries)))

    async def run(self, registry: SocketRegistry) -> None:
        self._registries.append(registry)
        try:
            await asyncio.Event().wait()
        finally:
            self._registries.remove(registry)


class RedisRevocationBus:
    """Redis pub/sub bus: JSON ``{"user_id", "session_id"}`` on ``channel``.

    Connection errors are logged, counted and retried with full-jitter backoff
    (``backoff=(first, cap)`` seconds, doubling); a quiet subscription is pinged
    every ``ping_interval`` s and dropped when no pong follows (half-open TCP).
    ``on_reconnect(registry)`` runs after each reconnect: events of the gap are lost.
    """

    def __init__(
        self,
        client: Redis,
        channel: str = "hardened:auth:revocations",
        *,
        backoff: tuple[float, float] = (0.05, 5.0),
        ping_interval: float = 10.0,
        on_reconnect: Callable[[SocketRegistry], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._backoff, self._max_backoff = backoff
        self._ping_interval = ping_interval
        self._on_reconnect = on_reconnect
        self._subscribed = False
        self._failures = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def subscribed(self) -> bool:
        """Whether ``run`` currently holds a live subscription (readiness checks)."""
        return self._subscribed

    async def publish(self, event: SocketRevocation) -> None:
        """Publish ``event``; raises `StoreUnavailable` if Redis cannot take it."""
        from redis.exceptions import RedisError  # noqa: PLC0415 - optional extra

        try:
            await self._client.publish(self._channel, event.to_json())
        except RedisError as exc:
            _BUS_ERRORS.labels(operation="publish").inc()
            _log().error("ws.revocations.publish_failed", error=type(exc).__name__)
            context = {"backend": "redis", "operation": "publish"}
            raise StoreUnavailable(context=context) from exc

    async def run(self, registry: SocketRegistry) -> None:
        from redis.exceptions import RedisError  # noqa: PLC0415 - optional extra

        try:
            while True:
                try:
                    await self._listen(registry)
                except (RedisError, OSError) as exc:
                    self._subscribed = False
                    self._failures += 1
                    _BUS_ERRORS.labels(operation="subscribe").inc()
                    attempt, error = self._failures, type(exc).__name__
                    _log().warning("ws.revocations.disconnected", error=error, attempt=attempt)
                    delay = min(self._max_backoff, self._backoff * 2 ** min(attempt - 1, 16))
                    await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter
        finally:
            self._subscribed = False
            for task in self._tasks:
                task.cancel()

    async def _listen(self, registry: SocketRegistry) -> None:
        pubsub = self._client.pubsub()
        try:
            async with asyncio.timeout(self._ping_interval):  # a connect may hang, too
                await pubsub.subscribe(self._channel)
                # Ready only once Redis confirmed: a publish after this point reaches us.
                confirmed = await pubsub.get_message(timeout=self._ping_interval)
            if confirmed is None or confirmed["type"] != "subscribe":
                raise ConnectionError("Redis did not confirm the subscription")
            self._subscribed = True
            if self._failures:
                self._failures = 0  # the backoff starts afresh after the next drop
                _log().warning("ws.revocations.reconnected", channel=self._channel)
                if self._on_reconnect is not None:
                    await self._on_reconnect(registry)
            awaiting_pong = False
            while True:
                message = await pubsub.get_message(timeout=self._ping_interval)
                if message is None:
                    if awaiting_pong:
                        raise ConnectionError("no pong from Redis: connection presumed dead")
                    await pubsub.ping()
                    awaiting_pong = True
                    continue
                awaiting_pong = False
                if message.get("type") == "message":
                    self._dispatch(registry, message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, registry: SocketRegistry, data: bytes | str) -> None:
        try:
            event = SocketRevocation.from_json(data)
        except (ValueError, TypeError, KeyError):
            _BUS_ERRORS.labels(operation="decode").inc()
            _log().error("ws.revocations.invalid_event")
            return
        task = asyncio.create_task(_apply(registry, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
