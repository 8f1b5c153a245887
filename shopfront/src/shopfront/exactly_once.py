"""Exactly-once writes in shopfront: which routes need an Idempotency-Key, and where keys live.

Records live in the service's own database (`SqlBackend`, PostgreSQL or
SQLite), not in Redis, because the point is the transactional mode: a
handler writes its recovery point in the same transaction as its effect
(`record_effect`), so a worker killed between that commit and the stored
response cannot make the retry do it again; the retry finds the recovery
point and answers from it. Redis would make claims faster and leave that gap
open.

Keys are scoped by shop and caller, as the identity step recorded them (the
library's default scope): an API key by its id, a user by their id (so
refreshing the token between two tries keeps the scope), cookie sessions
included. A credential that did not verify gets no stored answer: the route
refuses it with a 401, and 401/403 are never stored.

The money- and provider-touching routes require a key: ``POST /orders``, the
wallet operations and SIM activation (which runs its phases on the same
backend itself, see `shopfront.routes.sims`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened.idempotency import (
    HttpIdempotencyConfig,
    IdempotencyKey,
    IdempotencyUnguarded,
    IdempotentRoute,
    SqlBackend,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from shopfront.settings import Settings

__all__ = ["GUARDED_ROUTES", "http_config", "prior_effect", "record_effect"]

GUARDED_ROUTES = (
    IdempotentRoute("/orders$", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/reservations$", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/reservations/{reservation_id}/capture", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/reservations/{reservation_id}/release", methods=frozenset({"POST"})),
    IdempotentRoute("/wallet/refunds$", methods=frozenset({"POST"})),
)


def http_config(settings: Settings) -> HttpIdempotencyConfig:
    """The middleware's settings: 24 h replay, lease per settings, fail closed."""
    return HttpIdempotencyConfig(
        lease=settings.idempotency_lease,
        retention=float(settings.idempotency_retention),
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
