"""Encrypted fields through the ORM: round trip, binding to the cell, typed failures."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from crypto_models import K1, K2, A, B, Kyc, crypto, sessions
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from hardened.crypto import (
    DecryptionFailed,
    KeyDestroyed,
    MalformedCiphertext,
    PlaintextRefused,
    UnknownKey,
    lookup,
)
from hardened.db.tenancy import tenant_session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.anyio
T = Kyc.__table__

NATIONAL = "1234 5678 9012"
BANK = "GB29NWBK60161331926819"


async def _add(
    engine: AsyncEngine, tenant: uuid.UUID, national: str, bank: str | None
) -> uuid.UUID:
    async with tenant_session(sessions(engine), tenant) as s, s.begin():
        row = Kyc(name="n", national_id=national, bank_account=bank)
        s.add(row)
    return row.id


async def _read(engine: AsyncEngine, tenant: uuid.UUID, row_id: uuid.UUID) -> Kyc:
    async with tenant_session(sessions(engine), tenant) as s:
        row = await s.get(Kyc, row_id)
        assert row is not None
        return row


async def _raw(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def test_values_round_trip_and_the_table_holds_only_ciphertext(engine: AsyncEngine) -> None:
    """A written value reads back equal in a new session; the raw row holds no plaintext."""
    crypto()
    row_id = await _add(engine, A, NATIONAL, BANK)
    row = await _read(engine, A, row_id)
    assert (row.national_id, row.bank_account, row.key_version) == (NATIONAL, BANK, 1)
    async with engine.connect() as conn:
        raw = (await conn.execute(text("SELECT national_id_ct, bank_account_ct FROM kyc"))).one()
    for value, plain in zip(raw, (NATIONAL, BANK), strict=True):
        assert plain.encode() not in bytes(value)
        assert bytes(value)[0] == 1  # format version


async def test_null_stays_null_and_an_update_reseals_the_row(engine: AsyncEngine) -> None:
    """A nullable field stores NULL; changing one field reseals it and keeps the other readable."""
    crypto()
    row_id = await _add(engine, A, NATIONAL, None)
    async with tenant_session(sessions(engine), A) as s, s.begin():
        row = await s.get(Kyc, row_id)
        assert row is not None
        assert row.bank_account is None
        row.bank_account = BANK
    row = await _read(engine, A, row_id)
    assert (row.national_id, row.bank_account) == (NATIONAL, BANK)


def _copy(src: uuid.UUID, dst: uuid.UUID, source: str, target: str) -> object:
    value = select(T.c[source]).where(T.c.id == src).scalar_subquery()
    return update(T).where(T.c.id == dst).values({target: value})


@pytest.mark.parametrize("where", ["other-row", "other-column", "other-tenant"])
async def test_a_ciphertext_moved_to_another_cell_does_not_decrypt(
    engine: AsyncEngine, where: str
) -> None:
    """A value copied to another row, column or tenant fails its tag check with a typed error."""
    crypto()
    src = await _add(engine, A, NATIONAL, BANK)
    dst_tenant = B if where == "other-tenant" else A
    dst = await _add(engine, dst_tenant, "999", BANK)
    if where == "other-column":
        statement, victim, tenant = _copy(src, src, "national_id_ct", "bank_account_ct"), src, A
    else:
        statement, victim, tenant = (
            _copy(src, dst, "national_id_ct", "national_id_ct"),
            dst,
            dst_tenant,
        )
    async with engine.begin() as conn:
        await conn.execute(statement)  # type: ignore[call-overload]
    with pytest.raises(DecryptionFailed):
        await _read(engine, tenant, victim)


async def _tamper(engine: AsyncEngine, row_id: uuid.UUID, edit: object) -> None:
    async with engine.begin() as conn:
        value = (
            await conn.execute(select(T.c.national_id_ct).where(T.c.id == row_id))
        ).scalar_one()
        await conn.execute(
            update(T).where(T.c.id == row_id).values(national_id_ct=edit(bytes(value)))
        )  # type: ignore[operator]


def _flip(value: bytes, at: int) -> bytes:
    return value[:at] + bytes([value[at] ^ 1]) + value[at + 1 :]


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda v: _flip(v, len(v) - 1), DecryptionFailed),  # tag
        (lambda v: _flip(v, 20), DecryptionFailed),  # ciphertext
        (lambda v: _flip(v, 8), DecryptionFailed),  # nonce
        (lambda v: v[:1] + (7).to_bytes(4, "big") + v[5:], UnknownKey),  # key version
        (lambda v: b"\x02" + v[1:], MalformedCiphertext),  # format version
        (lambda v: v[:10], MalformedCiphertext),  # truncated
    ],
    ids=["tag", "ciphertext", "nonce", "unknown-key-version", "format", "truncated"],
)
async def test_an_altered_value_fails_with_a_typed_error(
    engine: AsyncEngine, edit: object, error: type[Exception]
) -> None:
    """A flipped bit, an unknown key id, another format or a cut value never decrypts."""
    crypto()
    row_id = await _add(engine, A, NATIONAL, None)
    await _tamper(engine, row_id, edit)
    with pytest.raises(error):
        await _read(engine, A, row_id)


async def test_a_session_without_encryption_cannot_write_plaintext(engine: AsyncEngine) -> None:
    """A plaintext set on a session class without encryption fails the flush; no row is written."""
    crypto()
    plain = async_sessionmaker(engine)
    async with plain() as s:
        s.add(Kyc(id=uuid.uuid4(), tenant_id=A, name="n", national_id=NATIONAL))
        with pytest.raises(Exception) as caught:  # noqa: PT011 - wrapped by the DBAPI layer
            await s.commit()
    assert (
        isinstance(caught.value, PlaintextRefused)
        or isinstance(caught.value.__cause__, PlaintextRefused)
        or "PlaintextRefused" in repr(caught.value)
    )
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM kyc"))).scalar_one() == 0


async def test_kek_rotation_rewraps_data_keys_and_touches_no_row(engine: AsyncEngine) -> None:
    """New KEK primary, rewrap, old KEK removed: every value decrypts, no row changed."""
    crypto(K1)
    ids = [await _add(engine, t, f"{n}1", BANK) for n, t in enumerate((A, B, A))]
    async with engine.connect() as conn:
        before = (await conn.execute(select(T).order_by(T.c.id))).all()
    promoted = crypto(f"{K2},{K1}")
    async with engine.begin() as conn:
        assert await promoted.wrapped_under(conn) == {"k1": 2}
        assert await promoted.rewrap(conn) == 2
        assert await promoted.wrapped_under(conn) == {"k2": 2}
    crypto(K2)  # k1 retired
    for n, (row_id, tenant) in enumerate(zip(ids, (A, B, A), strict=True)):
        assert (await _read(engine, tenant, row_id)).national_id == f"{n}1"
    async with engine.connect() as conn:
        assert (await conn.execute(select(T).order_by(T.c.id))).all() == before


async def test_a_data_key_under_a_retired_kek_fails_with_unknown_key(engine: AsyncEngine) -> None:
    """Removing a KEK before rewrapping leaves its data keys unreadable, with a typed error."""
    crypto(K1)
    row_id = await _add(engine, A, NATIONAL, None)
    crypto(K2)
    with pytest.raises(UnknownKey):
        await _read(engine, A, row_id)


async def test_shredding_a_tenant_makes_its_values_unreadable_and_spares_others(
    engine: AsyncEngine,
) -> None:
    """After A's data keys are destroyed every A value fails KeyDestroyed; B reads as before."""
    c = crypto()
    a_ids = [await _add(engine, A, f"1{n}", BANK) for n in range(3)]
    b_ids = [await _add(engine, B, f"2{n}", BANK) for n in range(3)]
    async with engine.begin() as conn:
        assert await c.shred(conn, A) == 1
    for row_id in a_ids:
        with pytest.raises(KeyDestroyed):
            await _read(engine, A, row_id)
    for n, row_id in enumerate(b_ids):
        assert (await _read(engine, B, row_id)).national_id == f"2{n}"
    async with tenant_session(sessions(engine), A) as s:
        assert await lookup(s, Kyc.national_id, "10") == []
    with pytest.raises(KeyDestroyed):
        await _add(engine, A, "new", None)


async def test_blind_index_lookup_finds_equal_values_only(engine: AsyncEngine) -> None:
    """Lookup by a normalised value returns exactly the rows holding it, within the tenant."""
    crypto()
    wanted = await _add(engine, A, NATIONAL, None)
    await _add(engine, A, "1234 5678 9013", None)
    await _add(engine, B, NATIONAL, None)
    async with tenant_session(sessions(engine), A) as s:
        found = await lookup(s, Kyc.national_id, "1234-5678-9012")
        assert [row.id for row in found] == [wanted]
        assert await lookup(s, Kyc.national_id, "0000") == []
