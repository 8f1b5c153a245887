"""What the app holds for its lifetime (settings, database, stores, cache, health)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from fastapi import Request

if TYPE_CHECKING:
    from hardened.cache import Cache, Namespace
    from hardened.crypto import Crypto
    from hardened.http import Drain
    from hardened.idempotency import SqlBackend
    from hardened.ledger import Ledger
    from hardened.observability import Health
    from hardened.outbound import Governors
    from hardened.stores import Store
    from shopfront.auth import Auth
    from shopfront.crm import Crm
    from shopfront.db import Database
    from shopfront.kyc import KycVerifier
    from shopfront.limits import Limits
    from shopfront.mailer import OutboxMailer
    from shopfront.schemas import CatalogItemOut
    from shopfront.settings import Settings
    from shopfront.sim_provider import SimProvider

__all__ = ["AppState", "app_state"]


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    db: Database
    store: Store
    health: Health
    auth: Auth
    mailer: OutboxMailer
    limits: Limits
    ledger: Ledger
    idempotency: SqlBackend
    sim: SimProvider
    idempotency_secret: bytes
    drain: Drain
    cache: Cache
    """Read-through cache (its own Redis store when REDIS_URL is set, else in-process)."""
    cache_store: Store
    """The cache's store, closed at shutdown after the cache."""
    crm: Crm
    catalog_items: Namespace[list[CatalogItemOut]]
    governors: Governors
    """One governor per outbound dependency (``crm``, ``sim``, ``billing``, ``sms``, ``kyc``)."""
    crypto: Crypto
    """Field encryption: the ``ENCRYPTION_KEY`` keyring and the shops' data keys."""
    kyc_verifier: KycVerifier
    idempotency_previous: tuple[bytes, ...] = ()
    """Fingerprint secrets of ``SESSION_SECRET_PREVIOUS`` (a rotation's overlap)."""

    async def aclose(self) -> None:
        """Close what the app opened, users before what they use (clients, cache, stores, db)."""
        await self.sim.aclose()
        await self.kyc_verifier.aclose()
        await self.crm.aclose()
        await self.cache.aclose()
        await self.cache_store.aclose()
        await self.store.aclose()
        await self.db.aclose()


def app_state(request: Request) -> AppState:
    """Dependency: the app's long-lived state."""
    return cast("AppState", request.app.state.shopfront)
