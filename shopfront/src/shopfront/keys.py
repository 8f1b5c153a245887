"""Operator commands for field encryption: status, KEK rewrap, key rotation, re-encryption, shred.

They connect with ``MIGRATION_DATABASE_URL`` (else ``DATABASE_URL``): they
work across shops, so that role must bypass row-level security (the table
owner under ``FORCE`` RLS does not; a superuser or a ``BYPASSRLS`` role does).
Every command that changes keys logs an ``audit.*`` event naming the
operator (``$USER``) and never a key.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from hardened.crypto import (
    BatchConfig,
    Crypto,
    LocalKeyProvider,
    Progress,
    count_by_version,
    destroy_old_versions,
    reencrypt,
)
from shopfront.models import DATA_KEYS, Integration, KycRecord, OAuthAccount, Tenant
from shopfront.settings import async_database_url

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncEngine

    from shopfront.settings import Settings

__all__ = ["ENCRYPTED_MODELS", "KeyCommands"]

ENCRYPTED_MODELS = (KycRecord, OAuthAccount, Integration)
_log = structlog.get_logger("shopfront.keys")


def _bar(progress: Progress) -> None:
    """A one-line progress bar on stderr (re-drawn in place)."""
    width = 30
    filled = width if progress.total == 0 else width * progress.done // progress.total
    sys.stderr.write(
        f"\r{progress.task} {progress.table} [{'#' * filled}{'.' * (width - filled)}]"
        f" {progress.done}/{progress.total}"
    )
    if progress.done >= progress.total:
        sys.stderr.write("\n")
    sys.stderr.flush()


class KeyCommands:
    """The commands, over one engine (owner or BYPASSRLS) and the service's keyring."""

    def __init__(self, settings: Settings, engine: AsyncEngine | None = None) -> None:
        self.engine = engine or create_async_engine(async_database_url(settings.migrations_url))
        self.crypto = Crypto(DATA_KEYS, LocalKeyProvider(settings.keyring()))

    async def aclose(self) -> None:
        await self.engine.dispose()

    async def _shop(self, domain: str) -> uuid.UUID:
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(select(Tenant.id).where(Tenant.domain == domain.lower()))
            ).scalar_one_or_none()
        if found is None:
            raise LookupError(f"no shop with domain {domain}")
        return found

    async def status(self) -> dict[str, object]:
        """Data keys per KEK id and encrypted rows per table and data-key version."""
        async with self.engine.connect() as conn:
            wrapped = await self.crypto.wrapped_under(conn)
            rows = {m.__tablename__: await count_by_version(conn, m) for m in ENCRYPTED_MODELS}
        return {"primary_kek": self.crypto.provider.primary_id, "data_keys": wrapped, "rows": rows}

    async def rewrap(self) -> int:
        """After promoting a new KEK: rewrap every data key under it (no row touched)."""
        async with self.engine.begin() as conn:
            count = await self.crypto.rewrap(conn)
        _log.warning(
            "audit.kek_rewrapped",
            actor=getpass.getuser(),
            primary=self.crypto.provider.primary_id,
            keys=count,
        )
        return count

    async def rotate(self, domain: str) -> int:
        """A new data-key version for one shop (run ``reencrypt`` next)."""
        tenant = await self._shop(domain)
        async with self.engine.begin() as conn:
            version = await self.crypto.rotate(conn, tenant)
        _log.warning(
            "audit.data_key_rotated", actor=getpass.getuser(), tenant=str(tenant), version=version
        )
        return version

    async def reencrypt(
        self, *, batch: int = 500, rows_per_second: float | None = None, progress: bool = True
    ) -> dict[str, int]:
        """Move every row onto its shop's current data key, then destroy unused old versions."""
        config = BatchConfig(batch=batch, rows_per_second=rows_per_second)
        moved = {}
        for model in ENCRYPTED_MODELS:
            report = await reencrypt(
                self.engine, self.crypto, model, config=config, progress=_bar if progress else None
            )
            moved[model.__tablename__] = sum(report.moved.values())
        destroyed = await destroy_old_versions(self.engine, self.crypto, ENCRYPTED_MODELS)
        for tenant, versions in destroyed.items():
            _log.warning(
                "audit.data_key_destroyed",
                actor=getpass.getuser(),
                tenant=str(tenant),
                versions=versions,
            )
        return moved

    async def shred(self, domain: str) -> int:
        """Crypto-shred a shop: every encrypted value of it becomes unreadable, at once."""
        tenant = await self._shop(domain)
        async with self.engine.begin() as conn:
            count = await self.crypto.shred(conn, tenant)
        _log.warning(
            "audit.tenant_shredded", actor=getpass.getuser(), tenant=str(tenant), keys=count
        )
        return count
