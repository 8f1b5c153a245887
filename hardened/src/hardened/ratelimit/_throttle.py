"""The limiter outside HTTP: WebSocket messages, outbound sends, job enqueues.

The same policies, the same store and the same one-round-trip check as the
HTTP layer, so "10 SMS per minute per tenant" holds whether the send comes
from a request, a job or a socket, and across every worker. A `Throttle`
binds a fixed tuple of policies; each call supplies one key per policy, in
order (a tenant id for the tenant policy, a user id for the user policy…).

Refusals are the HTTP layer's exceptions, so a route that triggers a send
renders them unchanged: `QuotaExceeded` (429, with the violated policy and
``retry_after``), `CostExceedsLimit` (422: a cost above what a policy can ever
admit, e.g. a 500-message batch under "100 per minute"; split it) or, when a
fail-closed policy lost its store, `StoreUnavailable`. Code that must not raise
(a socket loop deciding whether to drop a message) calls `Throttle.check` and
reads the `Decision`: ``impossible`` there means drop or split, never wait
(``retry_after`` is ``math.inf``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from hardened.ratelimit._http import enforce

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hardened.ratelimit._core import Decision, Policy, RateLimiter

__all__ = ["Throttle"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Throttle:
    """``policies`` checked together on ``limiter``; one key per policy per call."""

    limiter: RateLimiter
    policies: tuple[Policy, ...]

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("a throttle needs at least one policy")

    def _hits(self, keys: tuple[str, ...]) -> list[tuple[Policy, str]]:
        if len(keys) != len(self.policies):
            names = ", ".join(p.name for p in self.policies)
            raise ValueError(f"expected one key per policy ({names}), got {len(keys)}")
        return list(zip(self.policies, keys, strict=True))

    async def check(self, *keys: str, cost: int = 1) -> Decision:
        """The decision, never raising: for loops that drop instead of failing."""
        return await self.limiter.check(self._hits(keys), cost=cost)

    async def acquire(self, *keys: str, cost: int = 1, what: str = "") -> dict[str, str]:
        """Consume ``cost`` or raise the refusal (see the module docstring); returns headers."""
        return await enforce(self.limiter, self._hits(keys), cost=cost, path=what)

    def limit(
        self, *key_of: Callable[P, str], cost: int = 1
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorate an async function so each call first acquires; keys from its arguments."""
        if len(key_of) != len(self.policies):
            raise ValueError("give one key function per policy")

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            what = getattr(fn, "__qualname__", "call")

            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                keys = tuple(k(*args, **kwargs) for k in key_of)
                await self.acquire(*keys, cost=cost, what=what)
                return await fn(*args, **kwargs)

            return wrapper

        return decorate
