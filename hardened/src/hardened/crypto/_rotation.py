"""Moving rows onto a tenant's current data key, and retiring the old versions.

`reencrypt` runs `run_batches` per tenant that holds more than one live
data-key version, over rows whose ``key_version`` is not the current one:
each row's fields are decrypted under the version they name and sealed again
under the current one, blind indexes included. `destroy_old_versions`
destroys a version only once no row of the given models still uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Integer, LargeBinary, Uuid, column, func, select, table

from hardened.crypto._batch import BatchConfig, Progress, run_batches
from hardened.crypto._datakeys import lock_tenant_keys
from hardened.observability.metrics import gauge

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Sequence

    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.expression import ColumnClause, TableClause

    from hardened.crypto._cipher import ColumnCipher
    from hardened.crypto._crypto import Crypto
    from hardened.crypto._orm import Encrypted, EncryptedField

__all__ = ["RotationReport", "count_by_version", "destroy_old_versions", "reencrypt"]

_ROWS = gauge(
    "crypto_rows",
    "Encrypted rows per table and data-key version (set by re-encryption runs)",
    ["table", "key_version"],
)


def _fields(model: type[Encrypted]) -> tuple[EncryptedField[Any], ...]:
    fields = model.__encrypted_fields__
    if not fields:
        raise TypeError(f"{model.__name__} has no encrypted fields")
    return fields


def core_table(model: type[Encrypted], *extra: str) -> TableClause:
    """A plain Core view of ``model``'s table: id, tenant, key version, ciphertexts, indexes."""
    cols: list[ColumnClause[Any]] = [
        column("id", Uuid()),
        column("tenant_id", Uuid()),
        column("key_version", Integer()),
    ]
    for f in _fields(model):
        cols.append(column(f"{f.name}_ct", LargeBinary()))
        if f.blind_index is not None:
            cols.append(column(f"{f.name}_bidx", BigInteger()))
    cols.extend(column(name) for name in extra)
    return table(table_name(model), *cols)


def table_name(model: type[Encrypted]) -> str:
    """The table of an encrypted model (the name its values' associated data carries)."""
    return str(model.__tablename__)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class RotationReport:
    """Rows moved per tenant and the per-version counts after the run."""

    moved: dict[uuid.UUID, int]
    versions: dict[int, int]


async def _reseal(
    fields: Sequence[EncryptedField[Any]],
    ciphers: dict[str, ColumnCipher],
    current: int,
    _conn: AsyncConnection,
    rows: Sequence[Row[Any]],
) -> list[dict[str, Any]]:
    """Each row's fields decrypted under their version and sealed under ``current``."""
    out = []
    for row in rows:
        values: dict[str, Any] = {"_id": row.id, "key_version": current}
        for f in fields:
            cipher = ciphers[f.name]
            sealed = getattr(row, f"{f.name}_ct")
            plain = None if sealed is None else cipher.decrypt(bytes(sealed), row.id).decode()
            values.update(f.sealed(cipher, plain, row.id, current))
        out.append(values)
    return out


async def count_by_version(conn: AsyncConnection, model: type[Encrypted]) -> dict[int, int]:
    """Rows of ``model`` per data-key version (also published as ``hardened_crypto_rows``)."""
    t = core_table(model)
    rows = (
        await conn.execute(select(t.c.key_version, func.count()).group_by(t.c.key_version))
    ).all()
    counts = {int(v): int(n) for v, n in rows if v is not None}
    for version, n in counts.items():
        _ROWS.labels(t.name, str(version)).set(n)
    return counts


async def reencrypt(
    engine: AsyncEngine,
    crypto: Crypto,
    model: type[Encrypted],
    *,
    config: BatchConfig | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RotationReport:
    """Re-encrypt every row of ``model`` not on its tenant's current data-key version."""
    fields = _fields(model)
    t = core_table(model)
    async with engine.connect() as conn:
        tenants = await conn.run_sync(crypto.store.tenants_with_old_versions)
    moved: dict[uuid.UUID, int] = {}
    for tenant, current in tenants:
        async with engine.connect() as conn:
            keys = await crypto.tenant_keys(conn, tenant)
        ciphers = {f.name: keys.column(table_name(model), f.name) for f in fields}

        transform = partial(_reseal, fields, ciphers, current)
        sets = [c.name for c in t.c if c.name not in ("id", "tenant_id")]
        moved[tenant] = await run_batches(
            engine,
            task="reencrypt",
            table=t,
            columns=[c for c in t.c if c.name.endswith("_ct")],
            where=[t.c.tenant_id == tenant, t.c.key_version != current],
            sets=sets,
            transform=transform,
            config=config or BatchConfig(),
            progress=progress,
        )
    async with engine.connect() as conn:
        versions = await count_by_version(conn, model)
    return RotationReport(moved, versions)


async def destroy_old_versions(
    engine: AsyncEngine, crypto: Crypto, models: Sequence[type[Encrypted]]
) -> dict[uuid.UUID, list[int]]:
    """Destroy every non-current version that no row of ``models`` uses; returns what went."""
    destroyed: dict[uuid.UUID, list[int]] = {}
    async with engine.connect() as conn:
        tenants = await conn.run_sync(crypto.store.tenants_with_old_versions)
    for tenant, current in tenants:
        async with engine.begin() as conn:
            # Writers hold this shared: once it is ours, no value is being sealed under
            # a version we are about to find unused.
            await conn.run_sync(lock_tenant_keys, tenant)
            keys = await crypto.tenant_keys(conn, tenant)
            in_use: set[int] = set()
            for model in models:
                t = core_table(model)
                rows = await conn.execute(
                    select(t.c.key_version).where(t.c.tenant_id == tenant).distinct()
                )
                in_use.update(int(v) for (v,) in rows if v is not None)
            for version in keys.live_versions:
                if version != current and version not in in_use:
                    await crypto.destroy_version(conn, tenant, version)
                    destroyed.setdefault(tenant, []).append(version)
    return destroyed
