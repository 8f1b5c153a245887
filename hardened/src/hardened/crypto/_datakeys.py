"""Per-tenant data keys, wrapped under the key-encryption key, in one database table.

A row is (tenant, version): the key wrapped by the provider under ``kek_id``,
with the tenant and version in the wrap's associated data so a wrapped key
copied to another tenant or version does not unwrap. The current version of
a tenant is its highest live one. Destroying a version (crypto-shredding)
overwrites the wrapped key with NULL and keeps the row as a tombstone, so the
version is never reused and readers get `KeyDestroyed`, not `UnknownKey`.

Every operation is synchronous on a SQLAlchemy ``Connection`` inside the
caller's transaction (the ORM events run there); `Crypto` offers the async
forms.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Uuid,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from hardened.crypto._cipher import TenantKeys
from hardened.crypto._errors import KeyDestroyed, refuse
from hardened.crypto._format import frame
from hardened.crypto._keyring import KEY_BYTES, KeyProvider
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    import uuid

    from sqlalchemy import Connection

__all__ = ["DataKeyStore", "data_keys_table", "lock_tenant_keys"]

_WRAP_LABEL = b"hardened.crypto/data-key/v1"
_log = structlog.get_logger("hardened.crypto")
_KEY_EVENTS = counter(
    "crypto_key_events_total",
    "Data-key lifecycle events (created, rotated, rewrapped, destroyed)",
    ["event"],
)


def data_keys_table(metadata: MetaData, name: str = "hardened_data_keys") -> Table:
    """The data-key table on ``metadata`` (create it with the app's migrations)."""
    return Table(
        name,
        metadata,
        Column("tenant_id", Uuid(), nullable=False),
        Column("version", Integer(), nullable=False),
        Column("kek_id", String(32), nullable=False),
        Column("wrapped", LargeBinary(), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("destroyed_at", DateTime(timezone=True), nullable=True),
        PrimaryKeyConstraint("tenant_id", "version", name=f"pk_{name}"),
    )


def _associated(tenant: uuid.UUID, version: int) -> bytes:
    return frame(_WRAP_LABEL, tenant.bytes, str(version).encode())


def lock_tenant_keys(conn: Connection, tenant: uuid.UUID, *, exclusive: bool = True) -> None:
    """On PostgreSQL, a transaction-scoped advisory lock on the tenant's keys.

    Writers hold it shared for their transaction, destroying a version holds it
    exclusively: a transaction that sealed values under a version it loaded
    before a rotation commits before the in-use check runs, so a version is
    never destroyed under a value being written. (No table privilege is needed:
    the app role may not UPDATE the key table, so row locks are not an option.)
    """
    if conn.dialect.name != "postgresql":
        return
    key = int.from_bytes(
        hashlib.sha256(b"hardened.crypto/keys" + tenant.bytes).digest()[:8], "big", signed=True
    )
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(text(f"SELECT {function}(:key)"), {"key": key})


class DataKeyStore:
    """Creates, loads, rotates, rewraps and destroys tenants' data keys."""

    __slots__ = ("provider", "table")

    def __init__(self, table: Table, provider: KeyProvider) -> None:
        self.table = table
        self.provider = provider

    def load(self, conn: Connection, tenant: uuid.UUID) -> TenantKeys:
        """Every version of ``tenant``, unwrapped (destroyed ones as None)."""
        t = self.table
        rows = conn.execute(
            select(t.c.version, t.c.kek_id, t.c.wrapped).where(t.c.tenant_id == tenant)
        ).all()
        versions: dict[int, bytes | None] = {}
        for version, kek_id, wrapped in rows:
            versions[int(version)] = (
                None
                if wrapped is None
                else self.provider.unwrap(kek_id, bytes(wrapped), _associated(tenant, int(version)))
            )
        return TenantKeys(tenant, versions)

    def _insert(self, conn: Connection, tenant: uuid.UUID, version: int) -> None:
        key = os.urandom(KEY_BYTES)
        kek_id, wrapped = self.provider.wrap(key, _associated(tenant, version))
        conn.execute(
            self.table.insert().values(
                tenant_id=tenant,
                version=version,
                kek_id=kek_id,
                wrapped=wrapped,
                created_at=datetime.now(UTC),
            )
        )

    def ensure(self, conn: Connection, tenant: uuid.UUID) -> TenantKeys:
        """The keys for writing; creates version 1 when there is none (never after a shred)."""
        lock_tenant_keys(conn, tenant, exclusive=False)
        keys = self.load(conn, tenant)
        if keys.versions:
            if keys.current is None:
                raise refuse(KeyDestroyed, "tenant's data keys were destroyed", tenant=str(tenant))
            return keys
        nested = conn.begin_nested()
        try:
            self._insert(conn, tenant, 1)
        except IntegrityError:
            # A concurrent transaction created it first: use that one.
            nested.rollback()
            return self.load(conn, tenant)
        nested.commit()
        _KEY_EVENTS.labels("created").inc()
        return self.load(conn, tenant)

    def rotate(self, conn: Connection, tenant: uuid.UUID) -> int:
        """Add a new data-key version and make it current; old values stay readable."""
        t = self.table
        latest = conn.execute(
            select(func.max(t.c.version)).where(t.c.tenant_id == tenant)
        ).scalar_one_or_none()
        version = int(latest or 0) + 1
        self._insert(conn, tenant, version)
        _KEY_EVENTS.labels("rotated").inc()
        _log.info("crypto.data_key_rotated", tenant=str(tenant), version=version)
        return version

    def rewrap(self, conn: Connection, *, batch: int = 500) -> int:
        """Rewrap every live data key not under the primary KEK; returns how many."""
        t = self.table
        primary = self.provider.primary_id
        done = 0
        while True:
            rows = conn.execute(
                select(t.c.tenant_id, t.c.version, t.c.kek_id, t.c.wrapped)
                .where(t.c.kek_id != primary, t.c.wrapped.is_not(None))
                .order_by(t.c.tenant_id, t.c.version)
                .limit(batch)
            ).all()
            if not rows:
                return done
            for tenant, version, kek_id, wrapped in rows:
                associated = _associated(tenant, int(version))
                key = self.provider.unwrap(kek_id, bytes(wrapped), associated)
                new_id, new_wrapped = self.provider.wrap(key, associated)
                conn.execute(
                    update(t)
                    .where(t.c.tenant_id == tenant, t.c.version == version, t.c.kek_id == kek_id)
                    .values(kek_id=new_id, wrapped=new_wrapped)
                )
                done += 1
            _KEY_EVENTS.labels("rewrapped").inc(len(rows))

    def wrapped_under(self, conn: Connection) -> dict[str, int]:
        """How many live data keys each KEK id wraps (what retiring a KEK would strand)."""
        t = self.table
        rows = conn.execute(
            select(t.c.kek_id, func.count()).where(t.c.wrapped.is_not(None)).group_by(t.c.kek_id)
        ).all()
        return {str(kek_id): int(n) for kek_id, n in rows}

    def destroy(self, conn: Connection, tenant: uuid.UUID, version: int | None = None) -> int:
        """Destroy one version, or every version (``None``: crypto-shred the tenant)."""
        lock_tenant_keys(conn, tenant)
        t = self.table
        statement = (
            update(t)
            .where(t.c.tenant_id == tenant, t.c.wrapped.is_not(None))
            .values(wrapped=None, destroyed_at=datetime.now(UTC))
        )
        if version is not None:
            statement = statement.where(t.c.version == version)
        count = conn.execute(statement).rowcount
        _KEY_EVENTS.labels("destroyed").inc(count)
        _log.warning(
            "audit.crypto_key_destroyed",
            tenant=str(tenant),
            version="all" if version is None else version,
            keys=count,
        )
        return int(count)

    def tenants_with_old_versions(self, conn: Connection) -> list[tuple[uuid.UUID, int]]:
        """(tenant, current version) of every tenant holding more than one live version."""
        t = self.table
        rows = conn.execute(
            select(t.c.tenant_id, func.max(t.c.version), func.count())
            .where(t.c.wrapped.is_not(None))
            .group_by(t.c.tenant_id)
        ).all()
        return [(tenant, int(current)) for tenant, current, n in rows if n > 1]
