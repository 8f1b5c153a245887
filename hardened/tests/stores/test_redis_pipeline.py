"""Auto-pipelining in `RedisStore`: batched calls behave exactly as lone ones, on a real Redis."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hardened.errors import StoreUnavailable
from hardened.stores import RedisStore, Script, ScriptError, tagged
from hardened.stores._pipeline import MAX_BATCH, Pipeliner
from hardened.testing import scratch_redis_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

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


def _pipeliner(store: RedisStore) -> Pipeliner:
    assert store._pipeliner is not None
    return store._pipeliner


def _errors(operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "hardened_store_errors_total", {"backend": "redis", "operation": operation}
    )
    return value or 0.0


def _resp(*args: str) -> bytes:
    """A command as RESP, for commands the store has no method for (BLPOP as a gate)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds: waits on an effect, never on a duration."""
    while not condition():
        await asyncio.sleep(0.001)


async def _pooled_client_ids(store: RedisStore, count: int) -> set[int]:
    """Open ``count`` pooled connections and return their server-side client ids."""
    pool = store._pool
    assert pool is not None
    conns = [await pool.get_connection() for _ in range(count)]
    ids = set()
    for conn in conns:
        await conn.send_command("CLIENT", "ID")
        ids.add(int(await conn.read_response()))
    for conn in conns:
        await pool.release(conn)
    return ids


async def _until_closed(admin: Redis, ids: set[int]) -> None:
    """Wait until the server lists none of the client ``ids``."""
    while ids & {int(client["id"]) for client in await admin.client_list()}:
        await asyncio.sleep(0.01)


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
    """A caller cancelled while its batch is on the wire: reply dropped, connection kept in step."""
    async with scratch_redis_store(redis_url, max_connections=1, timeout=60.0) as store:
        names = ("lone", "cancelled", "after", "next")
        for name in names:
            await store.set(name, name.encode(), ttl=60)
        client_id = await store.client.client_id()
        pipeliner = _pipeliner(store)
        gate = store._prefix + "gate"
        writes = pipeliner.writes
        # "lone" is sent at once; the rest queue behind it as one batch, whose replies
        # the server holds back behind the BLPOP until the gate opens.
        tasks = [
            asyncio.create_task(store.get("lone")),
            asyncio.create_task(pipeliner.call(_resp("BLPOP", gate, "0"))),
            asyncio.create_task(store.get("cancelled")),
            asyncio.create_task(store.get("after")),
        ]
        assert await tasks[0] == b"lone"
        await _until(lambda: pipeliner.writes >= writes + 2)  # the batch is on the wire
        tasks[2].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[2]
        assert not tasks[1].done()
        assert not tasks[3].done()
        admin = Redis.from_url(redis_url)  # the store's one connection carries the batch
        try:
            await admin.lpush(gate, "open")
        finally:
            await admin.aclose()
        assert await tasks[1] == [gate.encode(), b"open"]
        assert await tasks[3] == b"after"
        assert await store.get("next") == b"next"
        assert pipeliner.writes == writes + 3  # lone, the batch of three, next
        assert await store.client.client_id() == client_id  # never disconnected


async def test_connection_killed_mid_batch_fails_its_calls_then_recovers(redis_url: str) -> None:
    """CLIENT KILL while calls await replies: each fails as StoreUnavailable, the next succeed."""
    async with scratch_redis_store(redis_url, max_connections=2, timeout=60.0) as store:
        ids = await _pooled_client_ids(store, 2)
        pipeliner = _pipeliner(store)
        gate = store._prefix + "gate"
        writes, errors = pipeliner.writes, _errors(ECHO_ARGV.name)
        # A lone BLPOP is sent at once; the second heads the batch the 20 scripts join.
        # The gate never opens: no reply can arrive before the kill.
        held = [asyncio.create_task(pipeliner.call(_resp("BLPOP", gate, "0"))) for _ in range(2)]
        calls = [asyncio.create_task(store.run(ECHO_ARGV, [], [str(i)])) for i in range(20)]
        await _until(lambda: pipeliner.writes >= writes + 2)  # both on the wire
        admin = Redis.from_url(redis_url)
        try:
            killed = [await admin.client_kill_filter(_id=str(client_id)) for client_id in ids]
        finally:
            await admin.aclose()
        assert killed == [1, 1]
        async with asyncio.timeout(30):  # a lost batch that never fails fails here, not in a hang
            failed = await asyncio.gather(*held, *calls, return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError) for result in failed[:2]), failed
        assert all(isinstance(result, StoreUnavailable) for result in failed[2:]), failed
        assert _errors(ECHO_ARGV.name) == errors + 20
        assert pipeliner.writes == writes + 2
        again = await asyncio.gather(*(store.run(ECHO_ARGV, [], [str(i)]) for i in range(20)))
        assert again == [[str(i).encode()] for i in range(20)]


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
    """Replies held past `timeout` fail its batch and close the connection; later calls pass."""
    async with scratch_redis_store(redis_url, max_connections=2, timeout=1.0) as store:
        for i in range(10):
            await store.set(f"k{i}", f"v{i}".encode(), ttl=60)
        ids = await _pooled_client_ids(store, 2)
        pipeliner = _pipeliner(store)
        gate = store._prefix + "gate"
        writes, errors = pipeliner.writes, _errors("get")
        # A lone BLPOP is sent at once; the second one heads the batch the gets join.
        # The gate stays shut, so neither connection can answer within the timeout.
        held = [asyncio.create_task(pipeliner.call(_resp("BLPOP", gate, "0"))) for _ in range(2)]
        gets = [asyncio.create_task(store.get(f"k{i}")) for i in range(1, 10)]
        async with asyncio.timeout(30):  # a batch that never times out fails here, not in a hang
            failed = await asyncio.gather(*held, *gets, return_exceptions=True)
        assert all(isinstance(result, RedisTimeoutError) for result in failed[:2]), failed
        assert all(isinstance(result, StoreUnavailable) for result in failed[2:]), failed
        assert _errors("get") == errors + 9
        assert pipeliner.writes == writes + 2  # the lone BLPOP, then one batch of ten
        admin = Redis.from_url(redis_url)
        try:
            # Unread replies were left on both connections: the server must see them closed.
            async with asyncio.timeout(30):
                await _until_closed(admin, ids)
            await admin.lpush(gate, "late", "late")  # nobody is left to receive these
        finally:
            await admin.aclose()
        again = await asyncio.gather(*(store.get(f"k{i}") for i in range(10)))
        assert again == [f"v{i}".encode() for i in range(10)]
        assert pipeliner.writes == writes + 4  # a lone get, then a batch of nine


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
