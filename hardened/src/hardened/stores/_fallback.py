"""A store that degrades to another when the first is unreachable (the non-strict mode).

Some deployments prefer "keep serving from this process" over "refuse" while
Redis is down. That trade has a price the operator must accept knowingly: what
is written during the outage lives only in this worker and is gone on restart,
and other workers do not see it. So the fallback is never silent: every
operation that falls back is counted (``hardened_store_fallbacks_total{operation}``)
and logged (``store.fallback``: the first per operation, then one a second with
``suppressed=N``, since an outage fails every call), and a store is counted in the
gauge ``hardened_store_fallback_degraded`` while it is degraded. Strict
deployments (auth tokens with ``AUTH_REQUIRE_REDIS_FOR_TOKENS``) do not wrap
their store and turn `StoreUnavailable` into a 503 instead.

Never sticky: every operation tries the primary first, so the first one after
the primary answers again is served by it (``degraded`` turns false, the gauge
drops, ``store.primary_restored`` is logged once) and writes are shared again.
What was written to the fallback during the outage is not copied back (it could
conflict with what other workers wrote meanwhile) and is no longer read: it is
orphaned and expires with its TTL. For auth tokens this means a session started
during the outage ends when Redis returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from hardened.errors import StoreUnavailable
from hardened.logging import Sampler
from hardened.observability.metrics import counter, gauge

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from hardened.stores._contracts import Script, ScriptArg, Store

__all__ = ["FallbackStore"]

T = TypeVar("T")

_FALLBACKS = counter(
    "store_fallbacks_total", "Operations served by the fallback store.", ["operation"]
)
_DEGRADED = gauge(
    "store_fallback_degraded", "Fallback stores whose primary failed the latest attempt."
)


def _log() -> Any:
    return structlog.get_logger("hardened.stores")  # per event: later configuration applies


class FallbackStore:
    """Every `Store` capability on ``primary``, or on ``fallback`` when primary is unreachable."""

    def __init__(self, primary: Store, fallback: Store) -> None:
        self.primary = primary
        self.fallback = fallback
        self._degraded = False
        self._sampler = Sampler()

    @property
    def degraded(self) -> bool:
        """Whether the primary failed the latest operation that tried it (the fallback serves)."""
        return self._degraded

    async def _call(
        self, operation: str, first: Callable[[], Awaitable[T]], second: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            result = await first()
        except StoreUnavailable:
            _FALLBACKS.labels(operation=operation).inc()
            suppressed = self._sampler.admit(operation)
            if suppressed is not None:  # an outage fails every call: one line a second each
                _log().warning("store.fallback", operation=operation, suppressed=suppressed)
            self._mark(degraded=True)
            return await second()
        if self._degraded:
            self._mark(degraded=False)
            _log().info("store.primary_restored", operation=operation)
        return result

    def _mark(self, *, degraded: bool) -> None:
        if degraded != self._degraded:
            self._degraded = degraded
            _DEGRADED.inc(1 if degraded else -1)

    async def get(self, key: str) -> bytes | None:
        return await self._call(
            "get", lambda: self.primary.get(key), lambda: self.fallback.get(key)
        )

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        return await self._call(
            "set",
            lambda: self.primary.set(key, value, ttl=ttl, only_if_absent=only_if_absent),
            lambda: self.fallback.set(key, value, ttl=ttl, only_if_absent=only_if_absent),
        )

    async def delete(self, *keys: str) -> int:
        return await self._call(
            "delete", lambda: self.primary.delete(*keys), lambda: self.fallback.delete(*keys)
        )

    async def ttl(self, key: str) -> float | None:
        return await self._call(
            "ttl", lambda: self.primary.ttl(key), lambda: self.fallback.ttl(key)
        )

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        return await self._call(
            "incr",
            lambda: self.primary.incr(key, amount, ttl=ttl),
            lambda: self.fallback.incr(key, amount, ttl=ttl),
        )

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        return await self._call(
            script.name,
            lambda: self.primary.run(script, keys, args),
            lambda: self.fallback.run(script, keys, args),
        )

    async def acquire(self, key: str, owner: str, ttl: float) -> int | None:
        return await self._call(
            "acquire",
            lambda: self.primary.acquire(key, owner, ttl),
            lambda: self.fallback.acquire(key, owner, ttl),
        )

    async def renew(self, key: str, owner: str, token: int, ttl: float) -> bool:
        return await self._call(
            "renew",
            lambda: self.primary.renew(key, owner, token, ttl),
            lambda: self.fallback.renew(key, owner, token, ttl),
        )

    async def release(self, key: str, owner: str, token: int) -> bool:
        return await self._call(
            "release",
            lambda: self.primary.release(key, owner, token),
            lambda: self.fallback.release(key, owner, token),
        )

    async def ping(self) -> None:
        """Readiness reports the primary: a fallback in use is a degraded state."""
        await self.primary.ping()

    async def aclose(self) -> None:
        self._mark(degraded=False)  # a closed store serves nothing: stop counting it
        await self.primary.aclose()
        await self.fallback.aclose()
