"""Refresh-token families across a rotation of the server key (``previous_keys``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest

from hardened.auth.refresh import InvalidRefreshToken, RefreshTokens, TokenReused
from hardened.stores import MemoryStore, RedisStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hardened.stores import AtomicScripts

pytestmark = pytest.mark.anyio

OLD = b"o" * 16 + b"ld-server-side-secret-key"
NEW = b"n" * 16 + b"ew-server-side-secret-key"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AtomicScripts]:
    """A memory store, or Redis under a private prefix removed afterwards."""
    if request.param == "memory":
        yield MemoryStore()
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    redis = RedisStore.from_url(url, timeout=2.0, prefix=prefix)
    try:
        yield redis
    finally:
        keys = [k async for k in redis.client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await redis.client.delete(*keys)
        await redis.aclose()


async def test_family_started_under_the_old_key_refreshes_with_it_as_previous(
    store: AtomicScripts,
) -> None:
    """A pre-rotation token rotates under the new key with the old as previous; then without it."""
    issued = await RefreshTokens(store, key=OLD).start("u1", tenant="t")
    rotated = RefreshTokens(store, key=NEW, previous_keys=(OLD,))
    child = await rotated.rotate(issued.token)
    assert (child.user_id, child.family_id, child.tenant) == ("u1", issued.family_id, "t")
    # The child is hashed under the new key: it rotates once the previous key is dropped.
    grandchild = await RefreshTokens(store, key=NEW).rotate(child.token)
    assert grandchild.family_id == issued.family_id


async def test_without_the_previous_key_a_rotation_ends_the_family(store: AtomicScripts) -> None:
    """Why previous_keys exists: under a new key alone, a pre-rotation token is invalid."""
    issued = await RefreshTokens(store, key=OLD).start("u1", tenant="t")
    with pytest.raises(InvalidRefreshToken):
        await RefreshTokens(store, key=NEW).rotate(issued.token)


async def test_racing_refreshes_of_a_pre_rotation_token_get_one_child(store: AtomicScripts) -> None:
    """Concurrent refreshes of one old token in the grace window all get the same child."""
    issued = await RefreshTokens(store, key=OLD).start("u1", tenant="t")
    rotated = RefreshTokens(store, key=NEW, previous_keys=(OLD,))
    children = await asyncio.gather(*(rotated.rotate(issued.token) for _ in range(10)))
    assert len({c.token for c in children}) == 1


async def test_reuse_of_a_pre_rotation_ancestor_revokes_the_family(store: AtomicScripts) -> None:
    """A token superseded before the rotation is still reuse after it: the family ends."""
    before = RefreshTokens(store, key=OLD)
    issued = await before.start("u1", tenant="t")
    first = await before.rotate(issued.token)
    await before.rotate(first.token)
    rotated = RefreshTokens(store, key=NEW, previous_keys=(OLD,))
    with pytest.raises(TokenReused):
        await rotated.rotate(issued.token)
    assert not await rotated.session_active("u1", issued.family_id)


def test_previous_keys_are_checked() -> None:
    """A short previous key, or the current key repeated, refuses to build."""
    for previous in ((b"short",), (NEW,)):
        with pytest.raises(ValueError, match="previous_keys"):
            RefreshTokens(MemoryStore(), key=NEW, previous_keys=previous)
