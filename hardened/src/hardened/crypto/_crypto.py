"""`Crypto`: one object holding the key provider and the data-key table.

Applications build one at start-up (``Crypto.from_env(table)`` validates
``ENCRYPTION_KEY`` there, so a bad keyring refuses start-up rather than the
first write) and hand it to `install_encryption`. The async methods run the
synchronous `DataKeyStore` operations on the caller's session or connection,
inside its transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from hardened.crypto._datakeys import DataKeyStore
from hardened.crypto._keyring import KeyProvider, LocalKeyProvider
from hardened.crypto._orm import forget_keys

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Mapping

    from sqlalchemy import Connection, Table
    from sqlalchemy.orm import Session

    from hardened.crypto._cipher import TenantKeys

__all__ = ["Crypto"]

_R = TypeVar("_R")


async def _run(target: AsyncSession | AsyncConnection, fn: Callable[[Connection], _R]) -> _R:
    if isinstance(target, AsyncConnection):
        return await target.run_sync(fn)

    def on_session(session: Session) -> _R:
        return fn(session.connection())

    return await target.run_sync(on_session)


class Crypto:
    """Field encryption for one application: a key provider and where data keys live."""

    __slots__ = ("provider", "store")

    def __init__(self, table: Table, provider: KeyProvider) -> None:
        self.provider = provider
        self.store = DataKeyStore(table, provider)

    @classmethod
    def from_env(
        cls, table: Table, name: str = "ENCRYPTION_KEY", environ: Mapping[str, str] | None = None
    ) -> Crypto:
        """A `Crypto` over the local keyring in ``name``; ValueError names the variable."""
        return cls(table, LocalKeyProvider.from_env(name, environ))

    async def create_key(
        self, target: AsyncSession | AsyncConnection, tenant: uuid.UUID
    ) -> TenantKeys:
        """Make sure ``tenant`` has a data key (at provisioning; writes create one too)."""
        return await _run(target, lambda conn: self.store.ensure(conn, tenant))

    async def tenant_keys(
        self, target: AsyncSession | AsyncConnection, tenant: uuid.UUID
    ) -> TenantKeys:
        """``tenant``'s unwrapped keys (for work outside the ORM: imports, re-encryption)."""
        return await _run(target, lambda conn: self.store.load(conn, tenant))

    async def rotate(self, target: AsyncSession | AsyncConnection, tenant: uuid.UUID) -> int:
        """A new data-key version for ``tenant``; run re-encryption to move rows onto it."""
        version = await _run(target, lambda conn: self.store.rotate(conn, tenant))
        self._forget(target, tenant)
        return version

    async def destroy_version(
        self, target: AsyncSession | AsyncConnection, tenant: uuid.UUID, version: int
    ) -> int:
        """Destroy one old data-key version (after re-encryption left no row on it)."""
        count = await _run(target, lambda conn: self.store.destroy(conn, tenant, version))
        self._forget(target, tenant)
        return count

    async def shred(self, target: AsyncSession | AsyncConnection, tenant: uuid.UUID) -> int:
        """Crypto-shred ``tenant``: destroy every data-key version; its values are gone for good."""
        count = await _run(target, lambda conn: self.store.destroy(conn, tenant, None))
        self._forget(target, tenant)
        return count

    async def rewrap(self, target: AsyncSession | AsyncConnection) -> int:
        """Rewrap every data key under the primary KEK (after promoting a new one)."""
        return await _run(target, self.store.rewrap)

    async def wrapped_under(self, target: AsyncSession | AsyncConnection) -> dict[str, int]:
        """Live data keys per KEK id: a KEK may be retired when it wraps none."""
        return await _run(target, self.store.wrapped_under)

    @staticmethod
    def _forget(target: Any, tenant: uuid.UUID) -> None:
        if isinstance(target, AsyncSession):
            forget_keys(target.sync_session, tenant)

    def __repr__(self) -> str:
        return f"Crypto(provider={self.provider!r}, table={self.store.table.name!r})"
