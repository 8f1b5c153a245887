"""A RedisStore of a test's own: a unique key prefix on the shared server, cleaned up after."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hardened.stores import RedisStore

__all__ = ["scratch_redis_store"]


@contextlib.asynccontextmanager
async def scratch_redis_store(url: str, **options: Any) -> AsyncIterator[RedisStore]:
    """``RedisStore.from_url(url, **options)`` under a fresh prefix; its keys deleted at exit.

    Tests on one server never see each other's keys, and nothing is flushed, so
    parallel runs and other users of the database are left alone.
    """
    from hardened.stores import RedisStore  # noqa: PLC0415 - redis is an optional extra

    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(url, prefix=prefix, **options)
    try:
        yield store
    finally:
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()
