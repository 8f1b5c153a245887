"""Migrating a plaintext column to an encrypted field, one reversible step at a time.

The steps, each a command, each idempotent (run it again and it does only
what is left):

1. `PlaintextMigration.add_columns`: the ciphertext, blind-index and
   ``key_version`` columns, nullable; then deploy the model with
   ``encrypted(plaintext_column=...)``: every write fills both (dual write) and
   rows not yet backfilled read from the plaintext.
2. `~PlaintextMigration.backfill`: seal every row whose ciphertext is missing,
   in batches, with progress; resumable after a kill.
3. Switch reads: deploy the model without ``plaintext_column``; then
   `~PlaintextMigration.scrub` checks each row's ciphertext decrypts to its
   plaintext and only then sets the plaintext to NULL.
4. `~PlaintextMigration.drop_plaintext`: drops the plaintext column, refused
   while any row still holds a plaintext (not scrubbed). The only step that
   cannot be undone.

Until the drop, `~PlaintextMigration.restore` goes back: each plaintext is
decrypted from its ciphertext (byte-identical) and the ciphertext columns are
cleared. What the drop does not erase: old values stay in backups, WAL
archives, replicas and (until ``VACUUM``, or ``VACUUM FULL`` to return the
space) in dead tuples of the table; see the component documentation.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, column, func, inspect, select, text

from hardened.crypto._batch import BatchConfig, Progress, run_batches
from hardened.crypto._errors import DecryptionFailed, refuse
from hardened.crypto._rotation import core_table, table_name

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Sequence

    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.expression import TableClause

    from hardened.crypto._cipher import TenantKeys
    from hardened.crypto._crypto import Crypto
    from hardened.crypto._orm import EncryptedField

__all__ = ["MigrationStatus", "PlaintextMigration"]


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Rows by state: plaintext only (to backfill), both (to scrub), ciphertext only (done)."""

    plaintext_only: int
    both: int
    ciphertext_only: int
    plaintext_column: bool


class PlaintextMigration:
    """Moves ``plaintext_column`` of ``field``'s table into the encrypted ``field``.

    The model must hold only this encrypted field while migrating (the row's
    ``key_version`` is the field's).
    """

    __slots__ = ("crypto", "field", "plaintext_column", "table")

    def __init__(self, crypto: Crypto, field: EncryptedField[Any], plaintext_column: str) -> None:
        model = field.owner
        if model is None:
            raise TypeError("field is not declared on a model")
        if len(model.__encrypted_fields__) != 1:
            raise TypeError("migrate a model with one encrypted field at a time")
        self.crypto = crypto
        self.field = field
        self.plaintext_column = plaintext_column
        self.table: TableClause = core_table(model)
        self.table.append_column(column(plaintext_column, Text()))

    @property
    def _ct(self) -> Any:
        return self.table.c[f"{self.field.name}_ct"]

    @property
    def _plain(self) -> Any:
        return self.table.c[self.plaintext_column]

    async def _columns(self, conn: AsyncConnection) -> set[str]:
        def names(sync: Any) -> set[str]:
            return {c["name"] for c in inspect(sync).get_columns(self.table.name)}

        return await conn.run_sync(names)

    async def add_columns(self, engine: AsyncEngine) -> list[str]:
        """Add the missing ciphertext, index and version columns; returns the ones added."""
        f = self.field
        wanted = {f"{f.name}_ct": "BYTEA", "key_version": "INTEGER"}
        if f.blind_index is not None:
            wanted[f"{f.name}_bidx"] = "BIGINT"
        added = []
        async with engine.begin() as conn:
            present = await self._columns(conn)
            for name, pg_kind in wanted.items():
                if name in present:
                    continue
                kind = (
                    pg_kind
                    if conn.dialect.name == "postgresql"
                    else pg_kind.replace("BYTEA", "BLOB")
                )
                await conn.execute(
                    text(f'ALTER TABLE "{self.table.name}" ADD COLUMN "{name}" {kind}')
                )
                added.append(name)
            if f.blind_index is not None:
                index = f"ix_{self.table.name}_{f.name}_bidx"
                await conn.execute(
                    text(
                        f'CREATE INDEX IF NOT EXISTS "{index}" ON "{self.table.name}"'
                        f' (tenant_id, "{f.name}_bidx")'
                    )
                )
        return added

    async def status(self, engine: AsyncEngine) -> MigrationStatus:
        """How many rows are in each state, and whether the plaintext column still exists."""
        async with engine.connect() as conn:
            if self.plaintext_column not in await self._columns(conn):
                total = (
                    await conn.execute(select(func.count()).select_from(self.table))
                ).scalar_one()
                return MigrationStatus(0, 0, int(total), plaintext_column=False)
            ct, plain = self._ct, self._plain

            async def count(*where: Any) -> int:
                query = select(func.count()).select_from(self.table).where(*where)
                return int((await conn.execute(query)).scalar_one())

            return MigrationStatus(
                await count(ct.is_(None), plain.is_not(None)),
                await count(ct.is_not(None), plain.is_not(None)),
                await count(ct.is_not(None), plain.is_(None)),
                plaintext_column=True,
            )

    async def _keys(
        self,
        conn: AsyncConnection,
        cache: dict[uuid.UUID, TenantKeys],
        tenant: uuid.UUID,
        *,
        create: bool,
    ) -> TenantKeys:
        keys = cache.get(tenant)
        if keys is None:
            store = self.crypto.store
            keys = await conn.run_sync(store.ensure if create else store.load, tenant)
            cache[tenant] = keys
        return keys

    async def _seal(
        self, cache: dict[uuid.UUID, TenantKeys], conn: AsyncConnection, rows: Sequence[Row[Any]]
    ) -> list[dict[str, Any]]:
        f = self.field
        out = []
        for row in rows:
            keys = await self._keys(conn, cache, row.tenant_id, create=True)
            cipher = keys.column(table_name(f.owner), f.name)  # type: ignore[arg-type]
            value: str = getattr(row, self.plaintext_column)
            version = keys.current
            assert version is not None  # noqa: S101 - ensure() refuses a tenant without one
            out.append(
                {"_id": row.id, "key_version": version, **f.sealed(cipher, value, row.id, version)}
            )
        return out

    async def backfill(
        self,
        engine: AsyncEngine,
        *,
        config: BatchConfig | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> int:
        """Seal every row that has a plaintext and no ciphertext; returns how many."""
        f = self.field
        sets = [f"{f.name}_ct", "key_version"]
        if f.blind_index is not None:
            sets.append(f"{f.name}_bidx")
        return await run_batches(
            engine,
            task="backfill",
            table=self.table,
            columns=[self.table.c.tenant_id, self._plain],
            where=[self._ct.is_(None), self._plain.is_not(None)],
            sets=sets,
            transform=partial(self._seal, {}),
            config=config or BatchConfig(),
            progress=progress,
        )

    async def _open(
        self,
        cache: dict[uuid.UUID, TenantKeys],
        conn: AsyncConnection,
        rows: Sequence[Row[Any]],
        *,
        check: bool,
    ) -> list[dict[str, Any]]:
        f = self.field
        out = []
        for row in rows:
            keys = await self._keys(conn, cache, row.tenant_id, create=False)
            cipher = keys.column(table_name(f.owner), f.name)  # type: ignore[arg-type]
            plain = cipher.decrypt(bytes(getattr(row, f"{f.name}_ct")), row.id)
            if check:
                stored: str = getattr(row, self.plaintext_column)
                if not hmac.compare_digest(plain, stored.encode()):
                    raise refuse(
                        DecryptionFailed, "ciphertext differs from plaintext", id=str(row.id)
                    )
                out.append({"_id": row.id, self.plaintext_column: None})
            else:
                values: dict[str, Any] = {
                    "_id": row.id,
                    self.plaintext_column: plain.decode(),
                    f"{f.name}_ct": None,
                    "key_version": None,
                }
                if f.blind_index is not None:
                    values[f"{f.name}_bidx"] = None
                out.append(values)
        return out

    async def scrub(
        self,
        engine: AsyncEngine,
        *,
        config: BatchConfig | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> int:
        """NULL each plaintext whose ciphertext decrypts to it (reads must be switched first)."""
        return await run_batches(
            engine,
            task="scrub",
            table=self.table,
            columns=[self.table.c.tenant_id, self._plain, self._ct],
            where=[self._ct.is_not(None), self._plain.is_not(None)],
            sets=[self.plaintext_column],
            transform=partial(self._open, {}, check=True),
            config=config or BatchConfig(),
            progress=progress,
        )

    async def restore(
        self,
        engine: AsyncEngine,
        *,
        config: BatchConfig | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> int:
        """Undo it: each plaintext decrypted back from its ciphertext, ciphertexts cleared."""
        f = self.field
        sets = [self.plaintext_column, f"{f.name}_ct", "key_version"]
        if f.blind_index is not None:
            sets.append(f"{f.name}_bidx")
        return await run_batches(
            engine,
            task="restore",
            table=self.table,
            columns=[self.table.c.tenant_id, self._plain, self._ct],
            where=[self._ct.is_not(None)],
            sets=sets,
            transform=partial(self._open, {}, check=False),
            config=config or BatchConfig(),
            progress=progress,
        )

    async def drop_plaintext(self, engine: AsyncEngine) -> bool:
        """Drop the plaintext column (irreversible); refused while a row still holds plaintext."""
        state = await self.status(engine)
        if not state.plaintext_column:
            return False
        if state.plaintext_only or state.both:
            msg = (
                f"{state.plaintext_only + state.both} rows still hold plaintext:"
                " backfill and scrub before dropping"
            )
            raise RuntimeError(msg)
        async with engine.begin() as conn:
            await conn.execute(
                text(f'ALTER TABLE "{self.table.name}" DROP COLUMN "{self.plaintext_column}"')
            )
        return True
