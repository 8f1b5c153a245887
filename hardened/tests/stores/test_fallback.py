import pytest
import structlog

from hardened.errors import StoreUnavailable
from hardened.stores import FallbackStore, MemoryStore, RedisStore, Store


@pytest.mark.anyio
async def test_unreachable_primary_falls_back_visibly() -> None:
    """With Redis unreachable, operations run on the fallback and each is logged as such."""
    dead = RedisStore.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    memory = MemoryStore()
    store: Store = FallbackStore(dead, memory)
    with structlog.testing.capture_logs() as logs:
        assert await store.set("k", b"v")
        assert await store.get("k") == b"v"
    assert await memory.get("k") == b"v"
    assert [e["event"] for e in logs].count("store.fallback") == 2
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.aclose()


@pytest.mark.anyio
async def test_reachable_primary_is_used(redis_url: str) -> None:
    """With Redis up, the fallback is untouched."""
    primary = RedisStore.from_url(redis_url, prefix="fallback-test:")
    memory = MemoryStore()
    store = FallbackStore(primary, memory)
    try:
        assert await store.set("k", b"v", ttl=5)
        assert await store.get("k") == b"v"
        assert await memory.get("k") is None
    finally:
        await primary.delete("k")
        await store.aclose()
