"""`Idempotent.operation()` and ``@idempotent`` over real Redis (and a fake clock where exact).

Real leases are short (0.3 s) and bodies slower than them, so heartbeats,
takeovers and waiting happen for real; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import BlockingConnectionPool, Redis

from hardened.idempotency import (
    IdempotencyConfig,
    IdempotencyInFlight,
    IdempotencyKeyReused,
    Idempotent,
    LeaseLost,
    StoreBackend,
    current_operation,
    idempotent,
)
from hardened.idempotency._store import CLAIM, COMPLETE
from hardened.stores import MemoryStore, RedisStore
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, max_connections=20, timeout=2.0, prefix=prefix)
    try:
        yield store
    finally:
        await drop_prefix(store, prefix)
        await store.aclose()


async def drop_prefix(store: RedisStore, prefix: str) -> None:
    keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await store.client.delete(*keys)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def new_key() -> str:
    return f"job:{uuid.uuid4().hex}"


async def test_heartbeat_keeps_a_slow_operation_from_being_duplicated(
    redis_store: RedisStore,
) -> None:
    """A 1 s body under a 0.3 s lease runs once: later callers see 409 or wait for its result."""
    backend, key, runs = StoreBackend(redis_store), new_key(), 0
    holder = Idempotent(backend, IdempotencyConfig(lease=0.3))
    impatient = Idempotent(backend, IdempotencyConfig(lease=0.3, wait=0.0))
    patient = Idempotent(backend, IdempotencyConfig(lease=0.3, wait=5.0))

    async def run(idem: Idempotent) -> bytes:
        nonlocal runs
        async with idem.operation(key, b"payload") as op:
            if op.replayed:
                assert op.result is not None
                return op.result
            runs += 1
            await asyncio.sleep(1.0)
            await op.complete(b"activated")
            return b"activated"

    first = asyncio.create_task(run(holder))
    await asyncio.sleep(0.5)  # past the lease: only the heartbeat keeps it
    with pytest.raises(IdempotencyInFlight) as refused:
        await run(impatient)
    assert int(refused.value.headers["retry-after"]) >= 1
    waited = asyncio.create_task(run(patient))
    await asyncio.sleep(0.2)
    with pytest.raises(IdempotencyInFlight):
        await run(impatient)
    assert await first == b"activated"
    assert await waited == b"activated"
    assert runs == 1


class _Stalled(StoreBackend):
    """A holder whose renewals never reach the store (a paused process): its lease lapses."""

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        return True


async def test_holder_whose_lease_was_taken_over_cannot_publish(redis_store: RedisStore) -> None:
    """A taken-over holder (no heartbeat): its complete and checkpoint raise LeaseLost."""
    backend, key = StoreBackend(redis_store), new_key()
    stalled = Idempotent(_Stalled(redis_store), IdempotencyConfig(lease=0.3))
    fresh = Idempotent(backend, IdempotencyConfig(lease=5.0))
    lost_before = sample("hardened_idempotency_lease_lost_total")
    async with stalled.operation(key) as old:
        await old.checkpoint("reserved", b"r-1")
        await asyncio.sleep(0.4)  # the lease lapses; nobody renews it
        async with fresh.operation(key) as new:
            assert (new.replayed, new.phase, new.data) == (False, "reserved", b"r-1")
            assert new.token is not None
            assert old.token is not None
            assert new.token > old.token
            with pytest.raises(LeaseLost):
                await old.complete(b"stale")
            assert old.lease_lost
            with pytest.raises(LeaseLost):
                await old.checkpoint("activated")
            await new.complete(b"fresh")
        with pytest.raises(LeaseLost):
            await old.complete(b"stale")
    async with fresh.operation(key) as replay:
        assert (replay.replayed, replay.result) == (True, b"fresh")
    assert sample("hardened_idempotency_lease_lost_total") == lost_before + 1


async def test_heartbeat_finding_the_lease_gone_marks_the_operation() -> None:
    """When a heartbeat learns of a takeover, later writes raise LeaseLost without a round trip."""
    clock = ManualClock()
    backend = StoreBackend(MemoryStore(clock=clock))
    beating = Idempotent(backend, IdempotencyConfig(lease=30.0, heartbeat=0.02))
    other = Idempotent(backend, IdempotencyConfig(lease=30.0))
    key = new_key()
    async with beating.operation(key) as old:
        clock.now += 31.0  # the fake clock runs past the lease before any beat
        async with other.operation(key) as new:
            for _ in range(100):
                if old.lease_lost:
                    break
                await asyncio.sleep(0.02)
            assert old.lease_lost
            with pytest.raises(LeaseLost):
                await old.checkpoint("late")
            await new.complete(b"new")
    async with other.operation(key) as replay:
        assert replay.result == b"new"


async def test_decorator_runs_once_for_fifty_concurrent_calls(redis_store: RedisStore) -> None:
    """Fifty concurrent calls with one key run the function once and all get its value."""
    idem = Idempotent(StoreBackend(redis_store), IdempotencyConfig(lease=0.3, wait=5.0))
    calls = 0

    @idempotent(idem, key=lambda order_id: f"charge:{order_id}")
    async def charge(order_id: str) -> dict[str, object]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"order": order_id, "charged": 500}

    order = uuid.uuid4().hex
    results = await asyncio.gather(*(charge(order) for _ in range(50)))
    assert calls == 1
    assert results == [{"order": order, "charged": 500}] * 50


async def test_exception_releases_so_a_retry_runs_again(redis_store: RedisStore) -> None:
    """A call that raised leaves no claim behind: the retry runs, and later calls replay it."""
    idem = Idempotent(StoreBackend(redis_store), IdempotencyConfig(lease=5.0))
    calls = 0

    @idempotent(idem, key=lambda n: f"send:{n}")
    async def send(n: str) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("provider timed out")
        return [calls]

    name = uuid.uuid4().hex
    with pytest.raises(ConnectionError):
        await send(name)
    assert await send(name) == [2]
    assert await send(name) == [2]
    assert calls == 2


async def test_replay_returns_the_stored_value_decoded(redis_store: RedisStore) -> None:
    """A replay returns decode(encode(first value)) without running the function again."""
    idem = Idempotent(StoreBackend(redis_store))
    calls = 0

    @idempotent(
        idem,
        key=lambda a, b: f"sum:{a}:{b}",
        encode=lambda v: str(v).encode(),
        decode=int,
    )
    async def add(a: int, b: int) -> int:
        nonlocal calls
        calls += 1
        return a + b

    suffix = uuid.uuid4().int % 1000
    assert await add(suffix, 1) == suffix + 1
    assert await add(suffix, 1) == suffix + 1
    assert calls == 1


async def test_retry_resumes_after_the_last_checkpoint(redis_store: RedisStore) -> None:
    """A run that failed after a checkpoint is retried from that phase, not from the start."""
    idem = Idempotent(StoreBackend(redis_store), IdempotencyConfig(lease=5.0))
    steps: list[str] = []

    @idempotent(idem, key=lambda sim: f"activate:{sim}")
    async def activate(sim: str) -> str:
        op = current_operation()
        if op.phase is None:
            steps.append("reserve")
            await op.checkpoint("reserved", b"reservation-1")
        if op.phase == "reserved":
            steps.append(f"activate with {op.data!r}")
            if len(steps) == 2:
                raise TimeoutError("provider")
            await op.checkpoint("activated")
        steps.append("capture")
        return "active"

    sim = uuid.uuid4().hex
    with pytest.raises(TimeoutError):
        await activate(sim)
    assert await activate(sim) == "active"
    assert steps == [
        "reserve",
        "activate with b'reservation-1'",
        "activate with b'reservation-1'",
        "capture",
    ]


async def test_other_arguments_under_one_key_are_refused(redis_store: RedisStore) -> None:
    """With a fingerprint, reusing a key with other arguments raises IdempotencyKeyReused (422)."""
    idem = Idempotent(StoreBackend(redis_store))

    @idempotent(
        idem, key=lambda ref, amount: f"debit:{ref}", fingerprint=lambda ref, amount: b"%d" % amount
    )
    async def debit(ref: str, amount: int) -> int:
        return amount

    ref = uuid.uuid4().hex
    assert await debit(ref, 100) == 100
    with pytest.raises(IdempotencyKeyReused) as refused:
        await debit(ref, 200)
    assert (refused.value.status, refused.value.code) == (422, "idempotency.key_reused")


async def test_leaving_without_complete_releases_the_key() -> None:
    """A block left without complete() frees the key for the next run at once."""
    idem = Idempotent(StoreBackend(MemoryStore()), IdempotencyConfig(lease=30.0))
    key = new_key()
    async with idem.operation(key) as first:
        assert not first.replayed
    async with idem.operation(key) as second:
        assert (second.replayed, second.phase) == (False, None)
        await second.complete(b"done")
    async with idem.operation(key) as third:
        assert (third.replayed, third.result) == (True, b"done")


async def test_claim_outcomes_are_counted() -> None:
    """Claims count as claimed, replayed, in_flight and mismatch in the claims metric."""
    idem = Idempotent(StoreBackend(MemoryStore()))
    outcomes = ("claimed", "replayed", "in_flight", "mismatch")
    before = {o: sample("hardened_idempotency_claims_total", {"outcome": o}) for o in outcomes}
    key = new_key()
    async with idem.operation(key, b"a") as op:
        with pytest.raises(IdempotencyInFlight):
            async with idem.operation(key, b"a"):
                pass
        await op.complete(b"r")
    async with idem.operation(key, b"a"):
        pass
    with pytest.raises(IdempotencyKeyReused):
        async with idem.operation(key, b"b"):
            pass
    after = {o: sample("hardened_idempotency_claims_total", {"outcome": o}) for o in outcomes}
    assert {o: after[o] - before[o] for o in outcomes} == dict.fromkeys(outcomes, 1.0)


def test_config_refuses_nonsense() -> None:
    """Non-positive lease, retention or heartbeat and negative wait are refused at construction."""
    for bad in ({"lease": 0.0}, {"retention": -1.0}, {"heartbeat": 0.0}, {"wait": -0.1}):
        with pytest.raises(ValueError, match="must be"):
            IdempotencyConfig(**bad)  # type: ignore[arg-type]
    assert IdempotencyConfig(lease=9.0).heartbeat_interval == 3.0


def test_default_lease_is_five_seconds() -> None:
    """A crashed holder's operation is retryable after 5 s by default, renewed every third."""
    config = IdempotencyConfig()
    assert config.lease == 5.0
    assert config.heartbeat_interval == pytest.approx(5.0 / 3)


async def test_result_with_a_lone_surrogate_is_stored_and_replayed() -> None:
    """The default JSON encoding is total: a lone surrogate in a result does not rerun the body."""
    idem = Idempotent(StoreBackend(MemoryStore()))
    runs = 0

    @idempotent(idem, key=lambda ref: f"name:{ref}")
    async def name(ref: str) -> dict[str, str]:
        nonlocal runs
        runs += 1
        return {"name": "bad\ud800"}

    ref = uuid.uuid4().hex
    assert await name(ref) == {"name": "bad\ud800"}
    assert await name(ref) == {"name": "bad\ud800"}
    assert runs == 1


# -- round trips ------------------------------------------------------------------------


async def _commands(redis_url: str, action: Callable[[RedisStore], Awaitable[None]]) -> list[str]:
    """EVALSHA script shas our client sent during ``action`` (MONITOR, filtered to our client)."""
    prefix, name = f"test:{uuid.uuid4().hex}:", f"idem-test-{uuid.uuid4().hex}"
    pool = BlockingConnectionPool.from_url(redis_url, client_name=name, max_connections=4)
    store = RedisStore(Redis(connection_pool=pool), prefix=prefix, owns_client=True)
    monitor, probe = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        await StoreBackend(store).claim("warm-up", b"", lease=1.0, retention=1.0)
        ours = {c["addr"].rsplit(":", 1)[1] for c in await probe.client_list() if c["name"] == name}
        marker = uuid.uuid4().hex
        async with monitor.monitor() as lines:
            await probe.echo(f"start-{marker}")
            await action(store)
            await probe.echo(f"end-{marker}")
            seen = []
            while f"end-{marker}" not in (line := await lines.next_command())["command"]:
                seen.append(line)
    finally:
        await monitor.aclose()
        await probe.aclose()
        await drop_prefix(store, prefix)
        await store.aclose()
    start = next(i for i, line in enumerate(seen) if f"start-{marker}" in line["command"])
    return [
        " ".join(line["command"].split(" ")[:2])
        for line in seen[start + 1 :]
        if line["client_port"] in ours
    ]


async def test_first_claim_and_replay_are_one_round_trip_each(redis_url: str) -> None:
    """On Redis a claim is one EVALSHA, a whole first run two, and a replay exactly one."""
    key = new_key()

    async def claim_only(store: RedisStore) -> None:
        await StoreBackend(store).claim("raw-key", b"fp", lease=30.0, retention=60.0)

    async def first_run_then_replay(store: RedisStore) -> None:
        idem = Idempotent(StoreBackend(store))
        async with idem.operation(key, b"fp") as op:
            await op.complete(b"result")
        async with idem.operation(key, b"fp") as replay:
            assert replay.replayed

    assert await _commands(redis_url, claim_only) == [f"EVALSHA {CLAIM.sha}"]
    assert await _commands(redis_url, first_run_then_replay) == [
        f"EVALSHA {CLAIM.sha}",
        f"EVALSHA {COMPLETE.sha}",
        f"EVALSHA {CLAIM.sha}",
    ]
