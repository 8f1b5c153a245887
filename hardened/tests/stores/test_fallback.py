import asyncio
import contextlib
import uuid
from urllib.parse import urlsplit

import pytest
import structlog
from prometheus_client import REGISTRY

from hardened.errors import StoreUnavailable
from hardened.stores import FallbackStore, MemoryStore, RedisStore, Store


def _degraded_stores() -> float:
    return REGISTRY.get_sample_value("hardened_store_fallback_degraded") or 0.0


@pytest.mark.anyio
async def test_unreachable_primary_falls_back_visibly() -> None:
    """With Redis unreachable, operations run on the fallback and each is logged as such."""
    baseline = _degraded_stores()
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
    assert _degraded_stores() == baseline + 1
    await store.aclose()
    assert _degraded_stores() == baseline  # a closed store is no longer counted


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


class _Outage:
    """A TCP proxy to the real Redis whose outage is a closed port: refused, never slow."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._db = parts.path or "/0"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._db}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        self._writers |= {client_w, server_w}
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None


@pytest.mark.anyio
async def test_primary_is_used_again_as_soon_as_it_answers(redis_url: str) -> None:
    """Not sticky: after an outage the next operation goes to the primary; outage writes orphan."""
    outage = _Outage(redis_url)
    await outage.up()
    prefix = f"fallback-test:{uuid.uuid4().hex}:"
    direct = RedisStore.from_url(redis_url, prefix=prefix)
    memory = MemoryStore()
    store = FallbackStore(RedisStore.from_url(outage.url, prefix=prefix), memory)
    baseline = _degraded_stores()
    try:
        assert await store.set("before", b"1", ttl=30)
        degraded = [store.degraded]
        await outage.down()
        with structlog.testing.capture_logs() as logs:
            assert await store.set("during", b"2", ttl=30)
        degraded.append(store.degraded)
        assert _degraded_stores() == baseline + 1
        assert [e["event"] for e in logs] == ["store.fallback"]
        await outage.up()
        with structlog.testing.capture_logs() as logs:
            assert await store.set("after", b"3", ttl=30)
        assert await direct.get("after") == b"3"  # shared again: other workers see it
        assert await memory.get("after") is None
        assert await store.get("before") == b"1"
        degraded.append(store.degraded)
        assert degraded == [False, True, False]
        assert _degraded_stores() == baseline
        assert [e["event"] for e in logs] == ["store.primary_restored"]
        # Written during the outage: only in memory, no longer read, left to expire.
        assert await direct.get("during") is None
        assert await memory.get("during") == b"2"
        assert await store.get("during") is None
    finally:
        await direct.delete("before", "after")
        await direct.aclose()
        await store.aclose()
        await outage.down()
