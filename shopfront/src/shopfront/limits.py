"""shopfront's rate-limit policies (seed 000/002/003 defaults, all configurable).

Shop traffic is limited per tenant (one counter per shop, shared by every
worker through Redis) by `RateLimitMiddleware`, keyed on the identity the
identity step recorded; sign-in is limited per account and per client IP, so
neither a guessed password list against one account nor one address spraying
many accounts gets far; opening a shop and accepting an invitation (both hash
a password) per client IP. Redeeming an emailed token (``POST /auth/email/verify``,
``/auth/email/change/confirm``) is limited per client IP (``email_token_ip``,
the sign-up quota), so nobody sprays guesses; asking for an email change
(it checks the password and sends a mail) per member (``email_change``, the
password-reset quota).

Route policies ride on the tenant check, so a catalog read answers to its
tenant quota and its route quota in one round trip, and a refused read
consumes neither:

=================================================  ==========  ==============
route                                              policy      key
=================================================  ==========  ==============
every request with a shop credential               ``tenant``  shop
``GET /catalog/items*``, ``GET /telecom/*``        ``catalog`` shop + caller
``POST /orders``, ``/orders/{id}/transitions``,    ``orders``  shop + caller
``/orders/{id}/shipments``
``POST /orders/import``                            ``uploads`` shop
=================================================  ==========  ==============

The caller is the identity's principal (``user:<id>`` or ``key:<id>``), so one
integration hammering the catalog does not lock the shop's staff out. The
limit applies before the route's permission is checked: an authenticated
request the role does not allow still counts (refusals order: 401 for a bad
credential, then 429, then 403). ``sms`` (per shop), ``webhook`` (per source)
and ``socket_messages`` (per user, across all their sockets and workers) are
`Throttle` s: the same store, the same semantics outside HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hardened import ratelimit
from hardened.errors import ServiceUnavailable, StoreUnavailable
from hardened.http import identity_of
from hardened.ratelimit import Policy, RateLimiter, Rule, Throttle

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.http import Identity
    from hardened.stores import AtomicScripts
    from hardened.types import Scope
    from shopfront.settings import Settings

__all__ = ["Limits", "build_limits", "by_caller", "by_shop", "enforce"]


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
    signup_ip: Policy
    email_token_ip: Policy
    email_change: Policy
    catalog: Policy
    orders: Policy
    uploads: Policy
    sms: Throttle
    webhooks: Throttle
    socket_messages: Throttle

    def rules(self) -> tuple[Rule, ...]:
        """The route table of `RateLimitMiddleware` (the tenant policy is its default)."""
        post = frozenset({"POST"})
        return (
            Rule("/catalog/items", ((self.catalog, by_caller),), methods=frozenset({"GET"})),
            Rule("/telecom/", ((self.catalog, by_caller),), methods=frozenset({"GET"})),
            Rule("/orders$", ((self.orders, by_caller),), methods=post),
            Rule("/orders/{order_id}/transitions$", ((self.orders, by_caller),), methods=post),
            Rule("/orders/{order_id}/shipments$", ((self.orders, by_caller),), methods=post),
            Rule("/orders/import$", ((self.uploads, by_shop),), methods=post),
        )


def _shop_identity(scope: Scope) -> Identity | None:
    identity = identity_of(scope)
    return identity if identity is not None and identity.authenticated else None


def by_shop(scope: Scope) -> str | None:
    """Keyer: the caller's shop (None without a shop credential: no tenant quota applies)."""
    identity = _shop_identity(scope)
    return identity.tenant if identity is not None else None


def by_caller(scope: Scope) -> str | None:
    """Keyer: the caller within their shop (``<shop>:<principal>``)."""
    identity = _shop_identity(scope)
    return None if identity is None else f"{identity.tenant}:{identity.principal}"


def build_limits(settings: Settings, store: AtomicScripts) -> Limits:
    """The service's policies over its store (Redis when configured)."""
    # Sign-in limits follow the auth mode: strict deployments refuse sign-in while the
    # store is down; non-strict ones chose availability, so the limits fail open too.
    login_mode = "closed" if settings.auth_require_redis_for_tokens else "open"
    limiter = RateLimiter(store, namespace="shopfront")
    return Limits(
        limiter=limiter,
        tenant=_policy("tenant", settings.rate_limit_tenant),
        login_account=_policy("login_account", settings.rate_limit_login, fail_mode=login_mode),
        login_ip=_policy("login_ip", settings.rate_limit_login, fail_mode=login_mode),
        password_reset=_policy("password_reset", settings.rate_limit_password_reset),
        signup_ip=_policy("signup_ip", settings.rate_limit_signup),
        # Their own names (own counters), the quotas of the routes they resemble.
        email_token_ip=_policy("email_token_ip", settings.rate_limit_signup),
        email_change=_policy("email_change", settings.rate_limit_password_reset),
        catalog=_policy("catalog", settings.rate_limit_catalog),
        orders=_policy("orders", settings.rate_limit_orders),
        uploads=_policy("uploads", settings.rate_limit_uploads),
        # A paid send must not go out unmetered: SMS fails closed when the store is down.
        sms=Throttle(limiter, (_policy("sms", settings.rate_limit_sms, fail_mode="closed"),)),
        webhooks=Throttle(limiter, (_policy("webhook", settings.rate_limit_webhooks),)),
        socket_messages=Throttle(
            limiter, (_policy("socket_messages", settings.rate_limit_socket_messages),)
        ),
    )


async def enforce(limits: Limits, hits: Sequence[tuple[Policy, str]]) -> dict[str, str]:
    """Check ``hits`` in one step; raise a 429 problem when refused, else return the headers."""
    try:
        return await ratelimit.enforce(limits.limiter, hits)
    except StoreUnavailable:  # a fail-closed policy without its store: not the client's fault
        raise ServiceUnavailable(
            "Please retry shortly.", code="ratelimit.store_unavailable", retry_after=1
        ) from None
