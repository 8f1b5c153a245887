"""At scale on PostgreSQL: batch runs killed mid-batch resume exactly, blind indexes stay cheap.

The batch commands run in a worker process (crypto_worker.py). To kill one in
the middle of a batch, an AFTER UPDATE trigger logs every rewritten row into a
log table; once enough rows are logged the test locks the log, waits until
the worker's backend is blocked on that lock inside its open batch, SIGKILLs
the worker and releases the lock. The log also counts how often each row was
rewritten: once, or the run skipped or repeated work.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
import pytest
from crypto_models import A, B, Kyc, crypto, digits, sessions
from crypto_worker import application_name
from psycopg import sql
from scale_models import TaxRecord, tax_migration
from sqlalchemy import func, select

from hardened.crypto import BatchConfig, count_by_version, destroy_old_versions, lookup
from hardened.db.tenancy import tenant_session

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.ext.asyncio import AsyncEngine

    from hardened.crypto import Crypto, TenantKeys

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

WORKER = Path(__file__).with_name("crypto_worker.py")
T = Kyc.__table__
KYC_COLUMNS = (
    "id",
    "tenant_id",
    "name",
    "national_id_ct",
    "national_id_bidx",
    "bank_account_ct",
    "key_version",
)
KYC_TYPES = ["uuid", "uuid", "text", "bytea", "int8", "bytea", "int4"]
INDEX_BITS = Kyc.national_id.blind_index.bits  # type: ignore[union-attr]


def _libpq(url: str) -> str:
    """The psycopg (libpq) form of the fixture's SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


async def _connect(url: str, *, autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(_libpq(url), autocommit=autocommit)


async def _scalar(
    conn: psycopg.AsyncConnection[Any], query: LiteralString | sql.Composed, *params: object
) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return row[0]


def _count(log: str) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(log))


async def _logged(conn: psycopg.AsyncConnection[Any], log: str) -> tuple[int, int]:
    """(entries, distinct row ids) of ``log``."""
    query = sql.SQL("SELECT count(*), count(DISTINCT row_id) FROM {}").format(sql.Identifier(log))
    row = await (await conn.execute(query)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _log_updates(conn: psycopg.AsyncConnection[Any], table: str) -> str:
    """An AFTER UPDATE trigger on ``table`` logging each rewritten row id; returns the log."""
    log = f"{table}_rewrites"
    names = {
        "table": sql.Identifier(table),
        "log": sql.Identifier(log),
        "fn": sql.Identifier(f"{log}_fn"),
        "trg": sql.Identifier(f"{log}_trg"),
    }
    await conn.execute(sql.SQL("CREATE TABLE {log} (row_id uuid NOT NULL)").format(**names))
    await conn.execute(
        sql.SQL(
            "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO {log} (row_id) VALUES (NEW.id); RETURN NEW; END $$"
        ).format(**names)
    )
    await conn.execute(
        sql.SQL(
            "CREATE TRIGGER {trg} AFTER UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}()"
        ).format(**names)
    )
    return log


@dataclass
class Worker:
    """A running crypto_worker.py with its output in files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def app(self) -> str:
        return application_name(self.proc.pid)

    def output(self) -> str:
        return self.out.read_text()

    def failure(self) -> str:
        return f"worker exited {self.proc.returncode}: {self.err.read_text()[-3000:]}"

    async def finish(self) -> list[str]:
        """Wait for a clean exit; the lines it printed."""
        await asyncio.to_thread(self.proc.wait, 240)
        assert self.proc.returncode == 0, self.failure()
        return self.output().splitlines()


def _start(tmp_path: Path, command: str, url: str, batch: int, run: int) -> Worker:
    out, err = tmp_path / f"{command}-{run}.out", tmp_path / f"{command}-{run}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), command, url, f"--batch={batch}"],
            cwd=WORKER.parent,
            env={**os.environ, "PYTHONPATH": str(WORKER.parent)},
            stdout=stdout,
            stderr=stderr,
        )
    return Worker(proc, out, err)


async def _kill_mid_batch(worker: Worker, url: str, log: str, threshold: int) -> None:
    """Once ``threshold`` rows are logged, SIGKILL the worker while it waits inside a batch."""
    control = await _connect(url)
    locker = await _connect(url, autocommit=False)
    try:
        while await _scalar(control, _count(log)) < threshold:
            assert worker.proc.poll() is None, worker.failure()
            await asyncio.sleep(0.005)
        # Granted once the batch in flight commits; the next batch's trigger then waits.
        await locker.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(log)))
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        while not await _scalar(control, f"{waiting} AND wait_event_type = 'Lock'", worker.app):
            assert worker.proc.poll() is None, worker.failure()
            await asyncio.sleep(0.005)
        worker.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.proc.wait, 60)
        assert worker.proc.returncode == -signal.SIGKILL
        await locker.rollback()
        while await _scalar(control, waiting, worker.app):
            await asyncio.sleep(0.005)
    finally:
        await locker.close()
        await control.close()


def _progress(lines: list[str]) -> list[tuple[int, int]]:
    """(done, total) of every progress line."""
    found = (re.fullmatch(r"progress \w+ \w+ (\d+)/(\d+)", line) for line in lines)
    return [(int(m[1]), int(m[2])) for m in found if m]


def _national_id(i: int) -> str:
    n = 100_000_000 + i
    return f"{n // 1_000_000:03}-{n // 1000 % 1000:03}-{n % 1000:03}"


async def _copy_kyc(
    url: str, keys: TenantKeys, plain: Mapping[uuid.UUID, tuple[str, str | None]]
) -> None:
    """Seal ``plain`` (id: national id, bank account) under the current key; COPY it into kyc."""
    national = keys.column("kyc", "national_id")
    bank = keys.column("kyc", "bank_account")
    version = keys.current
    conn = await _connect(url)
    try:
        async with conn.cursor().copy(
            f"COPY kyc ({', '.join(KYC_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(KYC_TYPES)
            for row_id, (nid, account) in plain.items():
                await copy.write_row(
                    (
                        row_id,
                        keys.tenant,
                        "n",
                        national.encrypt(nid.encode(), row_id, version=version),
                        national.blind_index(digits(nid).encode(), INDEX_BITS, version=version),
                        None
                        if account is None
                        else bank.encrypt(account.encode(), row_id, version=version),
                        version,
                    )
                )
    finally:
        await conn.close()


async def _create_key(engine: AsyncEngine, c: Crypto, tenant: uuid.UUID) -> TenantKeys:
    async with engine.begin() as conn:
        return await c.create_key(conn, tenant)


async def _tenant_keys(engine: AsyncEngine, c: Crypto, tenant: uuid.UUID) -> TenantKeys:
    async with engine.connect() as conn:
        return await c.tenant_keys(conn, tenant)


@pytest.mark.timeout(300)
async def test_reencryption_of_10000_rows_killed_mid_batch_resumes_without_skipping_or_repeating(
    pg_engine: AsyncEngine, pg_url: str, tmp_path: Path
) -> None:
    """Re-encryption SIGKILLed mid-batch and rerun rewrites each of 10,000 rows exactly once."""
    c = crypto()
    plain = {
        uuid.uuid4(): (_national_id(i), None if i % 5 == 0 else f"GB{i:020}") for i in range(10_000)
    }
    other = {uuid.uuid4(): (_national_id(i), f"B{i}") for i in range(20)}
    await _copy_kyc(pg_url, await _create_key(pg_engine, c, A), plain)
    await _copy_kyc(pg_url, await _create_key(pg_engine, c, B), other)
    async with pg_engine.begin() as conn:
        assert await c.rotate(conn, A) == 2
    control = await _connect(pg_url)
    try:
        log = await _log_updates(control, "kyc")
        first = _start(tmp_path, "reencrypt", pg_url, 200, 1)
        await _kill_mid_batch(first, pg_url, log, 4_000)
        async with pg_engine.connect() as conn:
            halfway = await count_by_version(conn, Kyc)
        moved = await _scalar(control, _count(log))
        # Committed batches are whole and logged; the killed one left nothing behind.
        assert halfway == {1: 10_000 - moved + 20, 2: moved}
        assert 4_000 <= moved < 10_000
        assert moved % 200 == 0
        assert _progress(first.output().splitlines())[-1] == (moved, 10_000)

        lines = await _start(tmp_path, "reencrypt", pg_url, 200, 2).finish()
        assert lines[-1] == f"finished {10_000 - moved}"
        assert _progress(lines)[-1] == (10_000 - moved, 10_000 - moved)
        assert await _logged(control, log) == (10_000, 10_000)
        of_a = "SELECT count(*) FROM kyc_rewrites JOIN kyc ON kyc.id = row_id WHERE tenant_id = %s"
        assert await _scalar(control, of_a, A) == 10_000
    finally:
        await control.close()
    async with pg_engine.connect() as conn:
        assert await count_by_version(conn, Kyc) == {2: 10_000, 1: 20}
    keys = await _tenant_keys(pg_engine, c, A)
    national, bank = keys.column("kyc", "national_id"), keys.column("kyc", "bank_account")
    async with pg_engine.connect() as conn:
        stored = (
            await conn.execute(
                select(T.c.id, T.c.national_id_ct, T.c.national_id_bidx, T.c.bank_account_ct).where(
                    T.c.tenant_id == A
                )
            )
        ).all()
    assert len(stored) == 10_000
    for row_id, nid_ct, bidx, bank_ct in stored:
        nid, account = plain[row_id]
        assert national.version_of(nid_ct) == 2
        assert national.decrypt(nid_ct, row_id).decode() == nid
        assert bidx == national.blind_index(digits(nid).encode(), INDEX_BITS, version=2)
        assert (None if bank_ct is None else bank.decrypt(bank_ct, row_id).decode()) == account

    assert await destroy_old_versions(pg_engine, c, [Kyc]) == {A: [1]}
    async with tenant_session(sessions(pg_engine), A) as s:
        rows = (await s.execute(select(Kyc))).scalars().all()
        assert {r.id: (r.national_id, r.bank_account) for r in rows} == plain
        sample = next(iter(plain))
        found = await lookup(s, Kyc.national_id, digits(plain[sample][0]))
        assert [r.id for r in found] == [sample]


@pytest.mark.timeout(300)
async def test_backfill_of_100000_rows_killed_and_resumed_then_restored_byte_identical(
    pg_engine: AsyncEngine, pg_url: str, tmp_path: Path
) -> None:
    """A killed and resumed 100,000-row backfill seals each row once; restore is byte-identical."""
    c = crypto()
    migration = tax_migration(c)
    fingerprint = (
        "SELECT md5(string_agg(id::text || ':' || tax_id, ',' ORDER BY id)) FROM tax_records"
    )
    control = await _connect(pg_url)
    try:
        await control.execute(
            "CREATE TABLE tax_records (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, tax_id text)"
        )
        await control.execute(
            "INSERT INTO tax_records (id, tenant_id, tax_id)"
            " SELECT gen_random_uuid(), CASE WHEN i %% 2 = 0 THEN %s::uuid ELSE %s::uuid END,"
            " 'TAX-' || lpad(i::text, 9, '0') FROM generate_series(1, 100000) AS i",
            (A, B),
        )
        before = await _scalar(control, fingerprint)
        assert set(await migration.add_columns(pg_engine)) == {"tax_ct", "tax_bidx", "key_version"}
        log = await _log_updates(control, "tax_records")
        first = _start(tmp_path, "backfill", pg_url, 1000, 1)
        await _kill_mid_batch(first, pg_url, log, 40_000)
        sealed = await _scalar(control, _count(log))
        assert 40_000 <= sealed < 100_000
        assert sealed % 1000 == 0
        sealed_rows = "SELECT count(*) FROM tax_records WHERE tax_ct IS NOT NULL"
        assert await _scalar(control, sealed_rows) == sealed
        assert _progress(first.output().splitlines())[-1] == (sealed, 100_000)
        status = await migration.status(pg_engine)
        assert (status.plaintext_only, status.both) == (100_000 - sealed, sealed)

        lines = await _start(tmp_path, "backfill", pg_url, 1000, 2).finish()
        assert lines[-1] == f"finished {100_000 - sealed}"
        assert _progress(lines)[-1] == (100_000 - sealed, 100_000 - sealed)
        assert await _logged(control, log) == (100_000, 100_000)
        await control.execute("DROP TRIGGER tax_records_rewrites_trg ON tax_records")
        status = await migration.status(pg_engine)
        assert (status.plaintext_only, status.both, status.ciphertext_only) == (0, 100_000, 0)
        async with tenant_session(sessions(pg_engine), A) as s:
            found = await lookup(s, TaxRecord.tax, "TAX-000000002")
            assert [r.tax for r in found] == ["TAX-000000002"]

        config = BatchConfig(batch=2000)
        assert await migration.scrub(pg_engine, config=config) == 100_000
        plaintexts = "SELECT count(*) FROM tax_records WHERE tax_id IS NOT NULL"
        assert await _scalar(control, plaintexts) == 0
        status = await migration.status(pg_engine)
        assert (status.plaintext_only, status.both, status.ciphertext_only) == (0, 0, 100_000)

        assert await migration.restore(pg_engine, config=config) == 100_000
        assert await _scalar(control, fingerprint) == before
        sealed_left = (
            "SELECT count(*) FROM tax_records"
            " WHERE tax_ct IS NOT NULL OR tax_bidx IS NOT NULL OR key_version IS NOT NULL"
        )
        assert await _scalar(control, sealed_left) == 0
    finally:
        await control.close()


@pytest.mark.timeout(300)
async def test_blind_index_lookups_over_100000_rows_use_the_index_and_return_exact_matches(
    pg_engine: AsyncEngine, pg_url: str
) -> None:
    """Over 100,000 rows lookups use the composite index and return exactly the matching rows."""
    assert INDEX_BITS == 15  # floor(log2(100,000 / 2))
    c = crypto()
    control = await _connect(pg_url)
    try:
        # 70,000 distinct national ids over 100,000 rows: 30,000 of them held by two rows.
        numbers = await (
            await control.execute(
                "SELECT regexp_replace(lpad((i % 70000)::text, 9, '0'),"
                " '(\\d{3})(\\d{2})(\\d{4})', '\\1-\\2-\\3')"
                " FROM generate_series(1, 100000) AS i"
            )
        ).fetchall()
    finally:
        await control.close()
    plain = {uuid.uuid4(): (nid, None) for (nid,) in numbers}
    holders: dict[str, set[uuid.UUID]] = {}
    for row_id, (nid, _) in plain.items():
        holders.setdefault(digits(nid), set()).add(row_id)
    keys = await _create_key(pg_engine, c, A)
    await _copy_kyc(pg_url, keys, plain)
    # B holds some of A's values: a lookup in A must not return them.
    await _copy_kyc(
        pg_url,
        await _create_key(pg_engine, c, B),
        {uuid.uuid4(): (nid, None) for nid, _ in list(plain.values())[:50]},
    )
    async with pg_engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE kyc")
        assert (await conn.execute(select(func.count()).select_from(T))).scalar_one() == 100_050

    national = keys.column("kyc", "national_id")
    sample = random.Random(1234).sample(sorted(holders), 200)
    entries = national.blind_indexes(sample[0].encode(), INDEX_BITS)
    statement = select(Kyc).where(Kyc.tenant_id == A, T.c.national_id_bidx.in_(entries))
    compiled = statement.compile(dialect=pg_engine.dialect, compile_kwargs={"literal_binds": True})
    async with pg_engine.connect() as conn:
        plan = "\n".join(line for (line,) in await conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert re.search(r"(Index Scan using|Bitmap Index Scan on) ix_kyc_national_id_bidx", plan), plan

    candidates = matches = 0
    async with tenant_session(sessions(pg_engine), A) as s, pg_engine.connect() as conn:
        for value in sample:
            nid = f"{value[:3]} {value[3:5]} {value[5:]}"  # written differently, normalised alike
            found = {r.id for r in await lookup(s, Kyc.national_id, nid)}
            assert found == holders[value], nid
            matches += len(found)
            entries = national.blind_indexes(value.encode(), INDEX_BITS)
            candidates += (
                await conn.execute(
                    select(func.count()).where(
                        T.c.tenant_id == A, T.c.national_id_bidx.in_(entries)
                    )
                )
            ).scalar_one()
    per_lookup = (candidates - matches) / len(sample)
    sys.stdout.write(
        f"blind index: {INDEX_BITS} bits, {candidates / len(sample):.2f} candidates per lookup,"
        f" {matches / len(sample):.2f} matches, {per_lookup:.2f} false positives"
        f" (expected {100_000 / 2**INDEX_BITS:.2f})\n"
    )
    # About N / 2**bits = 3.05 rows of other values per lookup: never 0, never many.
    assert 2.0 <= per_lookup <= 4.5
