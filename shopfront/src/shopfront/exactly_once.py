"""Exactly-once writes in shopfront: which routes need an Idempotency-Key, and where keys live.

Records live in the service's own database (`SqlBackend`, PostgreSQL or
SQLite), not in Redis, because the point is the transactional mode: a
handler writes its recovery point in the same transaction as its effect
(`record_effect`), so a worker killed between that commit and the stored
response cannot make the retry do it again; the retry finds the recovery
point and answers from it. Redis would make claims faster and leave that gap
open.

Keys are scoped by shop and caller. The caller is read from the same
credentials the route will verify: an API key (by its hash) or a user access
token (its verified tenant and subject, so refreshing the token between two
tries keeps the scope). A credential that does not verify is scoped by its
hash; the route refuses it with a 401 anyway.

The money- and provider-touching routes require a key: ``POST /orders``, the
wallet operations and SIM activation (which runs its phases on the same
backend itself, see `shopfront.routes.sims`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from starlette.requests import Request

from hardened.errors import HardenedError
from hardened.idempotency import (
    HttpIdempotencyConfig,
    IdempotencyKey,
    IdempotencyUnguarded,
    IdempotentRoute,
    SqlBackend,
)
from shopfront.auth import bearer_token, verified_access
from shopfront.tenant_auth import API_KEY_PREFIX, hash_api_key

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from hardened._types import Scope
    from hardened.auth.tokens import AccessTokens
    from hardened.idempotency import ScopeOf
    from shopfront.settings import Settings

__all__ = ["GUARDED_ROUTES", "http_config", "prior_effect", "record_effect", "scope_for"]

GUARDED_ROUTES = (
    IdempotentRoute("/orders$", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/reservations$", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/reservations/{reservation_id}/capture", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/reservations/{reservation_id}/release", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/refunds$", methods=frozenset({"POST"})),
)


def scope_for(access: AccessTokens) -> ScopeOf:
    """``scope_of`` for the middleware: (shop, caller) from verified credentials."""

    def scope_of(scope: Scope) -> tuple[str | None, str | None]:
        token = bearer_token(Request(scope))
        if token is None:
            return None, None
        if token.startswith(API_KEY_PREFIX):
            return None, "key:" + hash_api_key(token)  # the key alone names its shop
        try:
            claims = verified_access(scope, access, token)
        except HardenedError:
            return None, "unverified:" + hashlib.sha256(token.encode()).hexdigest()
        return claims.tenant, "user:" + claims.sub

    return scope_of


def http_config(settings: Settings, access: AccessTokens) -> HttpIdempotencyConfig:
    """The middleware's settings: 24 h replay, lease per settings, fail closed."""
    return HttpIdempotencyConfig(
        lease=settings.idempotency_lease,
        retention=float(settings.idempotency_retention),
        scope_of=scope_for(access),
        debug=settings.debug_enabled,
    )


def prior_effect(key: IdempotencyKey, effect: str) -> str | None:
    """What an earlier, crashed attempt with this key already did (its reference), if anything."""
    if key.phase == effect and key.data is not None:
        return key.data.decode()
    return None


async def record_effect(
    backend: SqlBackend, session: AsyncSession, key: IdempotencyKey, effect: str, ref: str
) -> None:
    """Inside the effect's transaction: the recovery point naming what was done.

    The effect and its record commit together. A request whose lease was taken
    over raises `LeaseLost` here, which rolls its effect back.
    """
    if not key.guarded or key.record is None or key.token is None:
        raise IdempotencyUnguarded(context={"effect": effect})
    await backend.checkpoint_in(session, key.record, key.token, effect, ref.encode())
