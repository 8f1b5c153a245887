"""shopfront's rate-limit policies (seed 000/002/003 defaults, all configurable).

Shop traffic is limited per tenant after authentication (one counter per
shop, shared by every worker through Redis); sign-in is limited per account
and per client IP, so neither a guessed password list against one account nor
one address spraying many accounts gets far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hardened import ratelimit
from hardened.errors import ServiceUnavailable, StoreUnavailable
from hardened.ratelimit import Policy, RateLimiter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.stores import AtomicScripts
    from shopfront.settings import Settings

__all__ = ["Limits", "build_limits", "enforce"]


def _policy(name: str, spec: str, *, fail_mode: str = "open") -> Policy:
    limit, period = spec.split("/")
    return Policy(
        name=name,
        limit=int(limit),
        period=float(period),
        algorithm="sliding_window",
        fail_mode="closed" if fail_mode == "closed" else "open",
    )


@dataclass(frozen=True, slots=True)
class Limits:
    limiter: RateLimiter
    tenant: Policy
    login_account: Policy
    login_ip: Policy
    password_reset: Policy


def build_limits(settings: Settings, store: AtomicScripts) -> Limits:
    """The service's policies over its store (Redis when configured)."""
    # Sign-in limits follow the auth mode: strict deployments refuse sign-in while the
    # store is down; non-strict ones chose availability, so the limits fail open too.
    login_mode = "closed" if settings.auth_require_redis_for_tokens else "open"
    return Limits(
        limiter=RateLimiter(store, namespace="shopfront"),
        tenant=_policy("tenant", settings.rate_limit_tenant),
        login_account=_policy("login_account", settings.rate_limit_login, fail_mode=login_mode),
        login_ip=_policy("login_ip", settings.rate_limit_login, fail_mode=login_mode),
        password_reset=_policy("password_reset", settings.rate_limit_password_reset),
    )


async def enforce(limits: Limits, hits: Sequence[tuple[Policy, str]]) -> dict[str, str]:
    """Check ``hits`` in one step; raise a 429 problem when refused, else return the headers."""
    try:
        return await ratelimit.enforce(limits.limiter, hits)
    except StoreUnavailable:  # a fail-closed policy without its store: not the client's fault
        raise ServiceUnavailable(
            "Please retry shortly.", code="ratelimit.store_unavailable", retry_after=1
        ) from None
