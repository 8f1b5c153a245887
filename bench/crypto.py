"""Field encryption: hardened.crypto against bare AES-GCM, a plain UPDATE and a plaintext lookup.

Run: ``uv run python bench/crypto.py`` (20-40 s; ``--profile``: also prints a cProfile
of each hardened part to stderr). A fresh database ``bench_crypto_<random>``
(`hardened.testing.temporary_database`) is created on the server of ``DATABASE_URL``
(default ``postgresql://postgres@127.0.0.1:5432/hardened_test``) and dropped afterwards. Prints
one JSON line; exits 1 when a sanity check fails (``valid`` false, reasons in
``problems``). Goals (``goal_*_met``) are reported, never a reason to fail.

Every part runs ``REPS`` times, its variants alternating inside each repetition, and
reports the median repetition; ratios divide those medians, all from this one run.

* Field (in memory, no ORM): ``bare``: ``cryptography``'s ``AESGCM.encrypt`` then
  ``decrypt`` of a 32-byte value, a fresh ``os.urandom(12)`` nonce per value, the key
  object built once, associated data as long as hardened's (built here by the
  documented layout: header, framed label, tenant, table and column, framed row id);
  ``field``: `ColumnCipher.encrypt` then ``decrypt`` of the same value, a row id per
  value (current version looked up, header, associated data, nonce, AEAD).
* Rotation (PostgreSQL): ``ROWS`` rows of one tenant, two encrypted fields
  (``national_id`` with a blind index, ``bank_account``). ``rotate``: `Crypto.rotate`
  (untimed) then `reencrypt` with ``BatchConfig(batch=BATCH)``, the whole call timed;
  ``update``: the floor, on a copy of the table (``LIKE ... INCLUDING ALL``): per batch
  one transaction selecting ``BATCH`` ids of the tenant by ``id > last ORDER BY id
  LIMIT``, then an executemany ``UPDATE`` of the same columns (both ciphertexts, the
  blind index, ``key_version``) to random values of the same lengths, on the same
  engine. Old versions are destroyed and both tables vacuumed between repetitions.
* Lookup (PostgreSQL, the same rows, one live key version): `lookup` by blind index of
  a random existing ``national_id``, a fresh tenant session (one transaction) per call,
  against the same ORM select on an indexed plaintext twin model (``String`` columns,
  index ``(tenant_id, national_id)``) through the same session class. A lookup with
  a session per call loads the tenant's data keys each time (one more query and an
  unwrap) and decrypts every candidate the truncated index lets through
  (``lookup_candidates_mean`` rows, each with both fields decrypted on load).
  ``*_one_tx``: the same calls, 100 to a session (one transaction, so the keys load
  once), ``expunge_all`` after each so every call loads and decrypts its rows again.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import random
import statistics
import struct
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import cryptography
import psycopg
import sqlalchemy
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Uuid,
    bindparam,
    column,
    func,
    select,
    table,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hardened.crypto import (
    BatchConfig,
    BlindIndex,
    ColumnCipher,
    Crypto,
    Encrypted,
    EncryptedField,
    Keyring,
    LocalKeyProvider,
    data_keys_table,
    destroy_old_versions,
    encrypted,
    generate_keyring_entry,
    install_encryption,
    lookup,
    reencrypt,
)
from hardened.db.tenancy import TenantScoped, install_tenancy, tenant_session
from hardened.logging import configure_logging
from hardened.testing import temporary_database

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

REPS = 3
ROWS = 20_000
BATCH = 500
FIELD_VALUES = 50_000  # encrypt+decrypt pairs per variant per repetition
FIELD_SLICES = 10  # the variants alternate in slices of FIELD_VALUES / FIELD_SLICES
LOOKUPS = 600  # lookups per variant per repetition
LOOKUP_SLICE = 100
PLAINTEXT = b"0123456789abcdef0123456789abcdef"  # 32 bytes
TENANT = uuid.UUID("c0ffee00-0000-4000-8000-00000000c1a0")
BITS = BlindIndex(expected_rows=ROWS).bits  # the blind index width for ROWS rows
GOALS = {"ratio": 0.7, "rotate_ratio": 0.5, "lookup_ratio": 0.7}
# The field format's label, as hardened.crypto's format documentation lays it out.
FIELD_LABEL = b"hardened.crypto/field/v1"


def digits(value: str) -> str:
    """National ids compare without spaces or dashes."""
    return "".join(ch for ch in value if ch.isdigit())


class Base(DeclarativeBase):
    metadata = MetaData()


DATA_KEYS = data_keys_table(Base.metadata)


class Record(TenantScoped, Encrypted, Base):
    """Two encrypted fields, one with a blind index sized for the table."""

    __tablename__ = "bench_records"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    national_id: EncryptedField[str] = encrypted(
        blind_index=BlindIndex(expected_rows=ROWS, normalise=digits)
    )
    bank_account: EncryptedField[str] = encrypted()


class PlainRecord(TenantScoped, Base):
    """The plaintext twin of `Record`: the same values in indexed ``String`` columns."""

    __tablename__ = "bench_plain_records"
    __table_args__ = (Index("ix_bench_plain_records_national_id", "tenant_id", "national_id"),)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    national_id: Mapped[str] = mapped_column(String(32))
    bank_account: Mapped[str] = mapped_column(String(32))


class BenchSession(Session):
    """Tenancy and encryption, as an application installs them."""


install_tenancy(BenchSession)

UPDATE_TABLE = table(
    "bench_update_records",
    column("id", Uuid()),
    column("tenant_id", Uuid()),
    column("key_version", Integer()),
    column("national_id_ct", LargeBinary()),
    column("national_id_bidx", BigInteger()),
    column("bank_account_ct", LargeBinary()),
)


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def associated_length(table_name: str, column_name: str) -> int:
    """Hardened's associated-data length: 5-byte header, framed prefix, framed row id."""
    prefix = _frame(FIELD_LABEL, TENANT.bytes, table_name.encode(), column_name.encode())
    return 5 + len(prefix) + len(_frame(uuid.uuid4().bytes))


# -- field: in memory ---------------------------------------------------------------


def bare_pairs(aead: AESGCM, associated: bytes, ids: list[uuid.UUID]) -> float:
    """Seconds for one encrypt+decrypt per id (the id unused: the same loop as `field_pairs`)."""
    urandom, encrypt, decrypt, value = os.urandom, aead.encrypt, aead.decrypt, PLAINTEXT
    start = time.perf_counter()
    for _ in ids:
        nonce = urandom(12)
        decrypt(nonce, encrypt(nonce, value, associated), associated)
    return time.perf_counter() - start


def field_pairs(cipher: ColumnCipher, ids: list[uuid.UUID]) -> float:
    """Seconds for one `ColumnCipher` encrypt+decrypt per row id."""
    encrypt, decrypt, value = cipher.encrypt, cipher.decrypt, PLAINTEXT
    start = time.perf_counter()
    for row_id in ids:
        decrypt(encrypt(value, row_id), row_id)
    return time.perf_counter() - start


def field_part(cipher: ColumnCipher, problems: list[str]) -> dict[str, Any]:
    length = associated_length(cipher.table, cipher.column)
    associated = os.urandom(length)
    aead = AESGCM(os.urandom(32))
    per_slice = FIELD_VALUES // FIELD_SLICES
    ids = [uuid.uuid4() for _ in range(per_slice)]
    if cipher.decrypt(cipher.encrypt(PLAINTEXT, ids[0]), ids[0]) != PLAINTEXT:
        problems.append("field: ColumnCipher did not round-trip")
    bare_pairs(aead, associated, ids)  # warm-up
    field_pairs(cipher, ids)
    bare, field = [], []
    for rep in range(REPS):
        gc.collect()
        spent = {"bare": 0.0, "field": 0.0}
        for s in range(FIELD_SLICES):
            order = ("bare", "field") if (rep + s) % 2 == 0 else ("field", "bare")
            for name in order:
                if name == "bare":
                    spent[name] += bare_pairs(aead, associated, ids)
                else:
                    spent[name] += field_pairs(cipher, ids)
        bare.append(per_slice * FIELD_SLICES / spent["bare"])
        field.append(per_slice * FIELD_SLICES / spent["field"])
    bare_per_s, field_per_s = statistics.median(bare), statistics.median(field)
    return {
        "bare_per_s": round(bare_per_s),
        "field_per_s": round(field_per_s),
        "ratio": round(field_per_s / bare_per_s, 3),
        "field_values": FIELD_VALUES,
        "field_bytes": len(PLAINTEXT),
        "associated_bytes": length,
        "bare_reps_per_s": [round(x) for x in bare],
        "field_reps_per_s": [round(x) for x in field],
    }


# -- data ---------------------------------------------------------------------------


def national_id(i: int) -> str:
    return f"{700_000_000_000 + i * 7919:012d}"


def bank_account(i: int) -> str:
    return f"DE89{370_400_440_532_013_000 + i:018d}"


def load(sync_url: str, cipher_ni: ColumnCipher, cipher_ba: ColumnCipher, bits: int) -> None:
    """COPY the rows into the encrypted table, its plaintext twin and the update copy."""
    version = cipher_ni.keys.current
    rows, plain = [], []
    for i in range(ROWS):
        row_id = uuid.uuid4()
        ni, ba = national_id(i), bank_account(i)
        rows.append(
            (
                row_id,
                TENANT,
                version,
                cipher_ni.encrypt(ni.encode(), row_id),
                cipher_ni.blind_index(digits(ni).encode(), bits),
                cipher_ba.encrypt(ba.encode(), row_id),
            )
        )
        plain.append((row_id, TENANT, ni, ba))
    cols = "id, tenant_id, key_version, national_id_ct, national_id_bidx, bank_account_ct"
    with psycopg.connect(sync_url) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY bench_records ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            with cur.copy(
                "COPY bench_plain_records (id, tenant_id, national_id, bank_account) FROM STDIN"
            ) as copy:
                for plain_row in plain:
                    copy.write_row(plain_row)
            cur.execute("CREATE TABLE bench_update_records (LIKE bench_records INCLUDING ALL)")
            cur.execute("INSERT INTO bench_update_records SELECT * FROM bench_records")
        conn.commit()
    vacuum(sync_url)


def vacuum(sync_url: str) -> None:
    with psycopg.connect(sync_url, autocommit=True) as conn:
        for name in ("bench_records", "bench_plain_records", "bench_update_records"):
            conn.execute(f"VACUUM ANALYZE {name}")


# -- rotation -----------------------------------------------------------------------


async def plain_update(engine: AsyncEngine, lengths: tuple[int, int]) -> int:
    """The floor: the same batches, selects and executemany UPDATEs, random values."""
    t = UPDATE_TABLE
    statement = (
        update(t)
        .where(t.c.id == bindparam("_id"))
        .values(
            key_version=bindparam("key_version"),
            national_id_ct=bindparam("national_id_ct"),
            national_id_bidx=bindparam("national_id_bidx"),
            bank_account_ct=bindparam("bank_account_ct"),
        )
    )
    ni_len, ba_len = lengths
    urandom, bits = os.urandom, random.getrandbits
    done, after = 0, None
    while True:
        async with engine.begin() as conn:
            query = select(t.c.id).where(t.c.tenant_id == TENANT).order_by(t.c.id).limit(BATCH)
            if after is not None:
                query = query.where(t.c.id > after)
            ids = (await conn.execute(query)).scalars().all()
            if not ids:
                return done
            params = [
                {
                    "_id": row_id,
                    "key_version": 2,
                    "national_id_ct": urandom(ni_len),
                    "national_id_bidx": (2 << 32) | bits(BITS),
                    "bank_account_ct": urandom(ba_len),
                }
                for row_id in ids
            ]
            await conn.execute(statement, params)
        after = ids[-1]
        done += len(ids)


async def rotate_once(engine: AsyncEngine, crypto: Crypto) -> tuple[float, int]:
    async with engine.begin() as conn:
        await crypto.rotate(conn, TENANT)
    start = time.perf_counter()
    report = await reencrypt(engine, crypto, Record, config=BatchConfig(batch=BATCH))
    return time.perf_counter() - start, report.moved.get(TENANT, 0)


async def rotation_part(
    engine: AsyncEngine, crypto: Crypto, sync_url: str, problems: list[str]
) -> dict[str, Any]:
    async with engine.connect() as conn:
        ni_len, ba_len = (
            await conn.execute(
                text(
                    "SELECT length(national_id_ct), length(bank_account_ct) "
                    "FROM bench_records LIMIT 1"
                )
            )
        ).one()
    rotate, plain = [], []
    for rep in range(REPS):
        for name in ("rotate", "update") if rep % 2 == 0 else ("update", "rotate"):
            gc.collect()
            if name == "rotate":
                seconds, moved = await rotate_once(engine, crypto)
                if moved != ROWS:
                    problems.append(f"rotation rep {rep}: moved {moved} rows, not {ROWS}")
                rotate.append(ROWS / seconds)
            else:
                start = time.perf_counter()
                done = await plain_update(engine, (int(ni_len), int(ba_len)))
                plain.append(done / (time.perf_counter() - start))
                if done != ROWS:
                    problems.append(f"update rep {rep}: {done} rows, not {ROWS}")
        destroyed = await destroy_old_versions(engine, crypto, [Record])
        if len(destroyed.get(TENANT, [])) != 1:
            problems.append(f"rotation rep {rep}: destroyed {destroyed}")
        vacuum(sync_url)
    rotate_per_s, update_per_s = statistics.median(rotate), statistics.median(plain)
    return {
        "rotate_rows_per_s": round(rotate_per_s),
        "update_rows_per_s": round(update_per_s),
        "rotate_ratio": round(rotate_per_s / update_per_s, 3),
        "rotate_reps_rows_per_s": [round(x) for x in rotate],
        "update_reps_rows_per_s": [round(x) for x in plain],
    }


# -- lookup -------------------------------------------------------------------------


async def lookup_part(
    sessions: async_sessionmaker[AsyncSession], problems: list[str]
) -> dict[str, Any]:
    rng = random.Random(7)
    wanted = [rng.randrange(ROWS) for _ in range(LOOKUP_SLICE)]
    candidates: list[int] = []

    async def find(s: AsyncSession, i: int, *, plain: bool) -> None:
        if plain:
            statement = select(PlainRecord).where(PlainRecord.national_id == national_id(i))
            found: list[Any] = list((await s.execute(statement)).scalars().all())
        else:
            found = await lookup(s, Record.national_id, national_id(i))
        if len(found) != 1:
            raise RuntimeError(f"lookup of row {i} found {len(found)} rows (plain: {plain})")

    def per_call(*, plain: bool) -> Callable[[list[int]], Awaitable[float]]:
        async def calls(values: list[int]) -> float:
            start = time.perf_counter()
            for i in values:
                async with tenant_session(sessions, TENANT) as s:
                    await find(s, i, plain=plain)
            return time.perf_counter() - start

        return calls

    def one_tx(*, plain: bool) -> Callable[[list[int]], Awaitable[float]]:
        async def calls(values: list[int]) -> float:
            start = time.perf_counter()
            async with tenant_session(sessions, TENANT) as s:
                for i in values:
                    await find(s, i, plain=plain)
                    s.expunge_all()  # every call loads (and decrypts) its rows again
            return time.perf_counter() - start

        return calls

    variants = {
        "lookup": per_call(plain=False),
        "plain_lookup": per_call(plain=True),
        "lookup_one_tx": one_tx(plain=False),
        "plain_lookup_one_tx": one_tx(plain=True),
    }
    # Candidates per lookup: the rows sharing the value's blind-index entry.
    async with tenant_session(sessions, TENANT) as s:
        for i in wanted:
            ni = national_id(i)
            row = (await lookup(s, Record.national_id, ni))[0]
            entry = getattr(row, "_national_id_bidx")  # noqa: B009 - the mixin's mapped column
            statement = (
                select(func.count())
                .where(
                    Record.__table__.c.tenant_id == TENANT,
                    Record.__table__.c.national_id_bidx == entry,
                )
                .execution_options(tenant_checked=True)  # the tenant is in the WHERE
            )
            candidates.append(int((await s.execute(statement)).scalar_one()))
            if row.bank_account != bank_account(i):
                problems.append(f"lookup: row {i} decrypted to another bank account")
    for calls in variants.values():  # warm-up
        await calls(wanted)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(REPS):
        gc.collect()
        spent = dict.fromkeys(names, 0.0)
        for s_ in range(LOOKUPS // LOOKUP_SLICE):
            values = [rng.randrange(ROWS) for _ in range(LOOKUP_SLICE)]
            for k in range(len(names)):
                name = names[(k + rep + s_) % len(names)]
                spent[name] += await variants[name](values)
        for name in names:
            rates[name].append(LOOKUPS / spent[name])
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "lookup_per_s": round(med["lookup"], 1),
        "plain_lookup_per_s": round(med["plain_lookup"], 1),
        "lookup_ratio": round(med["lookup"] / med["plain_lookup"], 3),
        "lookup_session": "a fresh tenant session (one transaction) per call",
        "lookup_one_tx_per_s": round(med["lookup_one_tx"], 1),
        "plain_lookup_one_tx_per_s": round(med["plain_lookup_one_tx"], 1),
        "lookup_one_tx_ratio": round(med["lookup_one_tx"] / med["plain_lookup_one_tx"], 3),
        "lookup_one_tx_session": "one session per 100 calls, expunge_all after each call",
        "lookups": LOOKUPS,
        "lookup_candidates_mean": round(statistics.mean(candidates), 2),
        **{f"{name}_reps_per_s": [round(x, 1) for x in r] for name, r in rates.items()},
    }


# -- profile ------------------------------------------------------------------------


def _print_profile(title: str, prof: cProfile.Profile) -> None:
    text_ = io.StringIO()
    text_.write(f"==== {title}: by own time ====\n")
    stats = pstats.Stats(prof, stream=text_)
    stats.sort_stats("tottime").print_stats(25)
    text_.write(f"==== {title}: by cumulative time ====\n")
    stats.sort_stats("cumulative").print_stats(30)
    print(text_.getvalue(), file=sys.stderr)


async def _profiled(title: str, call: Callable[[], Awaitable[Any]]) -> None:
    prof = cProfile.Profile()
    prof.enable()
    await call()
    prof.disable()
    _print_profile(title, prof)


async def profile(
    engine: AsyncEngine,
    crypto: Crypto,
    cipher: ColumnCipher,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ids = [uuid.uuid4() for _ in range(20_000)]
    prof = cProfile.Profile()
    prof.enable()
    field_pairs(cipher, ids)
    prof.disable()
    _print_profile("field: 20,000 encrypt+decrypt", prof)

    async def rotation() -> None:
        await reencrypt(engine, crypto, Record, config=BatchConfig(batch=BATCH))

    async with engine.begin() as conn:
        await crypto.rotate(conn, TENANT)
    await _profiled(f"reencrypt of {ROWS} rows", rotation)
    await destroy_old_versions(engine, crypto, [Record])

    async def lookups() -> None:
        for i in range(300):
            async with tenant_session(sessions, TENANT) as s:
                await lookup(s, Record.national_id, national_id(i * 61 % ROWS))

    await _profiled("300 lookups, a session each", lookups)

    async def lookups_one_tx() -> None:
        async with tenant_session(sessions, TENANT) as s:
            for i in range(300):
                await lookup(s, Record.national_id, national_id(i * 61 % ROWS))
                s.expunge_all()

    await _profiled("300 lookups in one session", lookups_one_tx)


# -- main ---------------------------------------------------------------------------


async def run(url: str, sync_url: str, *, with_profile: bool) -> dict[str, Any]:
    problems: list[str] = []
    out: dict[str, Any] = {"bench": "crypto"}
    crypto = Crypto(DATA_KEYS, LocalKeyProvider(Keyring.parse(generate_keyring_entry("bench"))))
    install_encryption(BenchSession, crypto)
    engine = create_async_engine(url, pool_size=4, max_overflow=0)
    sessions = async_sessionmaker(engine, sync_session_class=BenchSession, expire_on_commit=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            keys = await crypto.create_key(conn, TENANT)
        bits = Record.national_id.blind_index.bits  # type: ignore[union-attr]
        cipher_ni = keys.column(Record.__tablename__, "national_id")
        cipher_ba = keys.column(Record.__tablename__, "bank_account")

        out.update(field_part(cipher_ni, problems))
        started = time.perf_counter()
        load(sync_url, cipher_ni, cipher_ba, bits)
        out["load_seconds"] = round(time.perf_counter() - started, 2)
        out.update(await lookup_part(sessions, problems))  # one live version: before rotating
        out.update(await rotation_part(engine, crypto, sync_url, problems))
        if with_profile:
            await profile(engine, crypto, cipher_ni, sessions)
        async with engine.connect() as conn:
            out["postgres"] = (await conn.execute(text("SHOW server_version"))).scalar_one()
    finally:
        await engine.dispose()
    out.update(
        {
            "rows": ROWS,
            "fields": 2,
            "fields_detail": "national_id (blind index) + bank_account, both rotated",
            "batch": BATCH,
            "blind_index_bits": bits,
            "reps": REPS,
            "python": sys.version.split()[0],
            "cryptography": cryptography.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "psycopg": psycopg.__version__,
        }
    )
    for key, goal in GOALS.items():
        out[f"goal_{key}_met"] = out.get(key, 0) >= goal
    out["problems"] = problems
    out["valid"] = not problems
    return out


def cli() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--profile", action="store_true", help="cProfile each part to stderr")
    args = parser.parse_args()
    configure_logging(json=True, level="WARNING", stream=sys.stderr)  # stdout: the result only
    started = time.monotonic()
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hardened_test")
    with temporary_database(base, prefix="bench_crypto") as url:
        sync_url = urlunsplit(urlsplit(url)._replace(scheme="postgresql"))
        out = asyncio.run(run(url, sync_url, with_profile=args.profile))
    out["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, separators=(",", ":")))
    return 0 if out["valid"] else 1


if __name__ == "__main__":
    sys.exit(cli())
