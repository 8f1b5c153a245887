"""Data-key rotation: re-encryption moves every row to the new version, then the old one goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from crypto_models import A, B, Kyc, crypto, sessions
from sqlalchemy import select

from hardened.crypto import (
    BatchConfig,
    KeyDestroyed,
    count_by_version,
    destroy_old_versions,
    lookup,
    reencrypt,
)
from hardened.db.tenancy import tenant_session

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.anyio
T = Kyc.__table__


async def _add(engine: AsyncEngine, tenant: uuid.UUID, n: int) -> list[uuid.UUID]:
    async with tenant_session(sessions(engine), tenant) as s, s.begin():
        rows = [Kyc(name="n", national_id=f"9{i:05}", bank_account=f"B{i}") for i in range(n)]
        s.add_all(rows)
    return [r.id for r in rows]


async def test_rotation_then_reencryption_moves_every_row_and_retires_the_old_key(
    engine: AsyncEngine,
) -> None:
    """Rotate A's key, re-encrypt: all A rows on v2 and readable, v1 destroyed, B untouched."""
    c = crypto()
    a_ids = await _add(engine, A, 25)
    await _add(engine, B, 5)
    async with engine.begin() as conn:
        assert await c.rotate(conn, A) == 2
    async with tenant_session(sessions(engine), A) as s:
        # before re-encryption: old rows read, lookups find them under v1
        assert [r.id for r in await lookup(s, Kyc.national_id, "900003")] == [a_ids[3]]
    seen = []
    report = await reencrypt(engine, c, Kyc, config=BatchConfig(batch=7), progress=seen.append)
    assert report.moved == {A: 25}
    assert seen[-1].done == 25
    async with engine.connect() as conn:
        assert await count_by_version(conn, Kyc) == {2: 25, 1: 5}
    assert await destroy_old_versions(engine, c, [Kyc]) == {A: [1]}
    async with tenant_session(sessions(engine), A) as s:
        rows = (await s.execute(select(Kyc))).scalars().all()
        assert sorted(r.national_id for r in rows) == [f"9{i:05}" for i in range(25)]
        assert [r.id for r in await lookup(s, Kyc.national_id, "900003")] == [a_ids[3]]
    keys = await _keys(engine, c)
    assert keys.versions[2] is not None
    with pytest.raises(KeyDestroyed):
        keys.key(1)


async def _keys(engine: AsyncEngine, c: object) -> object:
    async with engine.connect() as conn:
        return await c.tenant_keys(conn, A)  # type: ignore[attr-defined]


async def test_old_versions_in_use_are_not_destroyed(engine: AsyncEngine) -> None:
    """A version some row still uses survives destroy_old_versions."""
    c = crypto()
    await _add(engine, A, 3)
    async with engine.begin() as conn:
        await c.rotate(conn, A)
    assert await destroy_old_versions(engine, c, [Kyc]) == {}
