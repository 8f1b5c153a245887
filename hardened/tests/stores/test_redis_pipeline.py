"""Auto-pipelining in `RedisStore`: batched calls behave exactly as lone ones, on a real Redis."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from hardened.errors import StoreUnavailable
from hardened.stores import RedisStore, Script, ScriptError, tagged
from hardened.stores._pipeline import MAX_BATCH, Pipeliner
from hardened.testing import scratch_redis_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

ECHO_ARGV = Script("test_pipeline_echo_argv", "return ARGV", lambda s, k, a, n: list(a))
ECHO_KEY = Script(
    "test_pipeline_echo_key", "return {KEYS[1], ARGV[1]}", lambda s, k, a, n: [k[0], a[0]]
)
COUNT_ARGV = Script("test_pipeline_count_argv", "return #ARGV", lambda s, k, a, n: len(a))
# An argument starting with "!" becomes an error reply with the rest as its message.
MAYBE_FAIL = Script(
    "test_pipeline_maybe_fail",
    "if string.sub(ARGV[1], 1, 1) == '!' then\n"
    "  return redis.error_reply(string.sub(ARGV[1], 2))\n"
    "end\n"
    "return ARGV[1]\n",
    lambda s, k, a, n: a[0],
)
# Busy-waits ARGV[1] ms on the server clock, then returns ARGV[2]: holds replies back.
SLOW_ECHO = Script(
    "test_pipeline_slow_echo",
    "local t = redis.call('TIME')\n"
    "local start = t[1] * 1000000 + t[2]\n"
    "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= ARGV[1] * 1000\n"
    "return ARGV[2]\n",
    lambda s, k, a, n: a[1],
)


def _pipeliner(store: RedisStore) -> Pipeliner:
    assert store._pipeliner is not None
    return store._pipeliner


def _errors(operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "hardened_store_errors_total", {"backend": "redis", "operation": operation}
    )
    return value or 0.0


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    async with scratch_redis_store(redis_url) as store:
        yield store


async def _mixed(store: RedisStore, i: int) -> tuple[Any, Any]:
    kind, key, arg = i % 4, tagged("test", f"mixed{i}"), f"v{i}"
    if kind == 0:
        return await store.run(ECHO_ARGV, [], [arg, i]), [arg.encode(), str(i).encode()]
    if kind == 1:
        expected = [(store._prefix + key).encode(), arg.encode()]
        return await store.run(ECHO_KEY, [key], [arg]), expected
    if kind == 2:
        return await store.run(COUNT_ARGV, [], [arg] * (i % 7)), i % 7
    await store.set(key, arg.encode(), ttl=30)
    return await store.get(key), arg.encode()


async def test_concurrent_calls_get_their_own_replies_in_few_writes(store: RedisStore) -> None:
    """500 concurrent mixed script and key calls each get their own reply, in few writes."""
    await store.run(ECHO_ARGV, [], ["warm"])  # loaded once, so no NOSCRIPT below
    writes = _pipeliner(store).writes
    pairs = await asyncio.gather(*(_mixed(store, i) for i in range(500)))
    assert [reply for reply, _ in pairs] == [expected for _, expected in pairs]
    sent = _pipeliner(store).writes - writes
    # 625 commands (the key calls make two each); batches are capped at MAX_BATCH.
    assert math.ceil(500 / MAX_BATCH) <= sent <= 40


async def test_cancelled_caller_in_a_batch_leaves_the_connection_in_step(redis_url: str) -> None:
    """A caller cancelled while its batch is on the wire: reply dropped, connection kept."""
    store = RedisStore.from_url(redis_url, max_connections=1, timeout=2.0)
    try:
        client_id = await store.client.client_id()
        writes = _pipeliner(store).writes
        calls = [(0, "lone"), (500, "slow"), (0, "cancelled"), (0, "after")]
        tasks = [asyncio.create_task(store.run(SLOW_ECHO, [], list(c))) for c in calls]
        while _pipeliner(store).writes < writes + 2:  # lone answered, the batch on the wire
            await asyncio.sleep(0.002)
        assert not tasks[1].done()  # the batch is held by "slow"
        tasks[2].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[2]
        assert [await tasks[i] for i in (0, 1, 3)] == [b"lone", b"slow", b"after"]
        assert await store.run(SLOW_ECHO, [], [0, "next"]) == b"next"
        assert _pipeliner(store).writes == writes + 3  # lone, the batch of three, next
        assert await store.client.client_id() == client_id  # never disconnected
    finally:
        await store.aclose()


async def test_connection_killed_mid_batch_fails_its_calls_then_recovers(redis_url: str) -> None:
    """CLIENT KILL while calls await replies: each fails as StoreUnavailable, the next succeed."""
    store = RedisStore.from_url(redis_url, max_connections=2, timeout=2.0)
    admin = Redis.from_url(redis_url)
    pool = store.client.connection_pool
    try:
        conns = [await pool.get_connection() for _ in range(2)]
        ids = []
        for conn in conns:
            await conn.send_command("CLIENT", "ID")
            ids.append(await conn.read_response())
        for conn in conns:
            await pool.release(conn)
        # One read on the server: it runs the slow script, then kills both pooled
        # connections before it reads what the store sends meanwhile.
        pipe = admin.pipeline(transaction=False)
        pipe.eval(SLOW_ECHO.source, 0, 300, "admin")
        for client_id in ids:
            pipe.client_kill_filter(_id=client_id)
        killer = asyncio.create_task(pipe.execute())
        await asyncio.sleep(0.05)
        writes, errors = _pipeliner(store).writes, _errors(ECHO_ARGV.name)
        calls = [store.run(ECHO_ARGV, [], [str(i)]) for i in range(20)]
        failed = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, StoreUnavailable) for result in failed), failed
        assert _pipeliner(store).writes == writes + 2  # the lone first call, then one batch
        assert _errors(ECHO_ARGV.name) == errors + 20
        assert (await killer)[0] == b"admin"
        again = await asyncio.gather(*(store.run(ECHO_ARGV, [], [str(i)]) for i in range(20)))
        assert again == [[str(i).encode()] for i in range(20)]
    finally:
        await admin.aclose()
        await store.aclose()


async def test_noscript_inside_a_batch_is_recovered_for_every_call(store: RedisStore) -> None:
    """After SCRIPT FLUSH, every call of a batch reloads its script and gets its own reply."""
    script = Script(
        "test_pipeline_fresh", f"-- {uuid.uuid4().hex}\nreturn ARGV", lambda s, k, a, n: list(a)
    )
    assert await store.run(script, [], ["first"]) == [b"first"]
    await store.client.script_flush()
    replies = await asyncio.gather(*(store.run(script, [], [str(i)]) for i in range(50)))
    assert replies == [[str(i).encode()] for i in range(50)]


async def test_error_reply_fails_only_its_own_call(store: RedisStore) -> None:
    """In one batch, HARDENED is a ScriptError, other errors StoreUnavailable, the rest OK."""
    not_a_number = tagged("test", "text")
    await store.set(not_a_number, b"text")
    before = _errors(MAYBE_FAIL.name)

    async def call(i: int) -> Any:
        if i == 13:
            return await store.incr(not_a_number)  # ERR value is not an integer
        arg = {7: "!HARDENED refused", 21: "!ERR broken"}.get(i, str(i))
        return await store.run(MAYBE_FAIL, [], [arg])

    results = await asyncio.gather(*(call(i) for i in range(30)), return_exceptions=True)
    assert isinstance(results[7], ScriptError)
    assert str(results[7]) == "refused"
    assert isinstance(results[13], StoreUnavailable)
    assert isinstance(results[21], StoreUnavailable)
    assert all(results[i] == str(i).encode() for i in range(30) if i not in (7, 13, 21))
    assert _errors(MAYBE_FAIL.name) == before + 1


async def test_batch_timeout_fails_its_calls_then_recovers(redis_url: str) -> None:
    """A batch whose replies outlast `timeout` fails as StoreUnavailable; later calls pass."""
    store = RedisStore.from_url(redis_url, max_connections=2, timeout=0.25)
    try:
        calls = [store.run(SLOW_ECHO, [], [600 if i == 0 else 0, str(i)]) for i in range(10)]
        failed = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, StoreUnavailable) for result in failed), failed
        await asyncio.sleep(0.5)  # the server is done with the slow script
        again = await asyncio.gather(*(store.run(SLOW_ECHO, [], [0, str(i)]) for i in range(10)))
        assert again == [str(i).encode() for i in range(10)]
    finally:
        await store.aclose()


async def test_store_without_pipeline_serves_bursts(redis_url: str) -> None:
    """from_url(pipeline=False) sends each call on its own, through the same blocking pool."""
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, max_connections=5, prefix=prefix, pipeline=False)
    key = tagged("test", "unpipelined")
    try:
        assert store._pipeliner is None
        replies = await asyncio.gather(*(store.run(ECHO_ARGV, [], [str(i)]) for i in range(200)))
        assert replies == [[str(i).encode()] for i in range(200)]
        await asyncio.gather(*(store.incr(key) for _ in range(200)))
        assert await store.get(key) == b"200"
    finally:
        await store.delete(key)
        await store.aclose()
