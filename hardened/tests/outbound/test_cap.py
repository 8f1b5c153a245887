"""The shared interval cap: its bound on both stores, across processes, and with Redis down."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hardened.outbound import Admission, CapConfig, CapExceeded, IntervalCap
from hardened.stores import MemoryStore, RedisStore, hash_tag
from hardened.testing import ManualClock, PrivateRedis

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    import redis.asyncio as aioredis

    from hardened.stores import Store

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("cap_worker.py")
US = 1_000_000


def _most_in_any_window(stamps: list[int], width_us: int) -> int:
    """The largest number of stamps inside any half-open window [t, t + width)."""
    ordered = sorted(stamps)
    best, low = 0, 0
    for high, stamp in enumerate(ordered):
        while stamp - ordered[low] >= width_us:
            low += 1
        best = max(best, high - low + 1)
    return best


async def _reserve_all(cap: IntervalCap, n: int, max_wait: float) -> list[Admission | CapExceeded]:
    """``n`` reservations at once; each an admission or its refusal."""
    results = await asyncio.gather(
        *(cap.reserve(max_wait) for _ in range(n)), return_exceptions=True
    )
    for r in results:
        if not isinstance(r, Admission | CapExceeded):
            raise r
    return [r for r in results if isinstance(r, Admission | CapExceeded)]


def _closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_key_is_one_per_dependency_under_its_own_hash_tag() -> None:
    """The cap keys on the dependency name inside a hash tag, escaped like every component's."""
    cap = IntervalCap("crm", CapConfig(), MemoryStore())
    assert cap.key == "hardened:{outbound:crm}:cap"
    assert hash_tag(IntervalCap("a:b}", CapConfig(), MemoryStore()).key) == "outbound:a%3Ab%7D"


def test_the_interval_rounds_up_so_the_cap_is_never_exceeded() -> None:
    """I = period / calls in whole microseconds, rounded up (1 s / 3 is 333,334 us)."""
    assert IntervalCap("x", CapConfig(calls=3, period=1.0), MemoryStore()).interval_us == 333_334
    assert IntervalCap("x", CapConfig(calls=20, period=0.2), MemoryStore()).interval_us == 10_000


async def test_a_burst_gets_calls_plus_burst_slots_per_period_and_the_rest_are_refused(
    cap_store: Store,
) -> None:
    """30 at once, 10 per 60 s + 2: 13 slots within 60 s, ≤ 12 starts per window, 17 refused."""
    cap = IntervalCap("crm", CapConfig(calls=10, period=60.0, burst=2), cap_store)
    results = await _reserve_all(cap, 30, max_wait=60.0)
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, CapExceeded)]
    assert (len(admitted), len(refused)) == (13, 17)
    stamps = [a.stamp for a in admitted if a.stamp is not None]
    assert len(stamps) == 13
    assert _most_in_any_window(stamps, 60 * US) == 10 + 2
    assert all(0 <= a.wait <= 60.0 for a in admitted)
    assert sum(a.wait == 0 for a in admitted) == 3  # the burst and the free slot: no wait
    assert all(r.retry_after is not None and r.retry_after > 0 for r in refused)
    assert {(r.code, r.dependency, r.status) for r in refused} == {("outbound.capped", "crm", 503)}


async def test_with_a_long_wait_allowed_each_reservation_waits_one_interval_longer(
    cap_store: Store,
) -> None:
    """After the burst, consecutive slots start exactly I apart on the store's clock."""
    cap = IntervalCap("crm", CapConfig(calls=10, period=60.0, burst=2), cap_store)
    admissions = [await cap.reserve(3600.0) for _ in range(8)]
    stamps = [a.stamp for a in admissions if a.stamp is not None]
    waits = [a.wait for a in admissions]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert [b - a for a, b in itertools.pairwise(stamps[3:])] == [6 * US] * 4
    assert all(b > a for a, b in itertools.pairwise(waits[2:]))
    if isinstance(cap_store, MemoryStore):  # its clock stands still: the waits are exact
        assert waits == [0.0, 0.0, 0.0, 6.0, 12.0, 18.0, 24.0, 30.0]


async def test_a_refused_reservation_changes_nothing(cap_store: Store) -> None:
    """Refusals write nothing: the TAT stays, and the next slot is where it was before them."""
    cap = IntervalCap("crm", CapConfig(calls=10, period=60.0, burst=0), cap_store)
    first = await cap.reserve(0.0)
    before = await cap_store.get(cap.key)
    for _ in range(5):
        with pytest.raises(CapExceeded) as refused:
            await cap.reserve(1.0)
        assert refused.value.retry_after == 5  # the 6 s slot minus the 1 s it may wait, rounded up
    assert await cap_store.get(cap.key) == before
    waiting = await cap.reserve(3600.0)
    assert first.stamp is not None
    assert waiting.stamp == first.stamp + 6 * US


async def test_an_idle_cap_leaves_no_key_and_has_its_burst_back(
    cap_store: Store, let_time_pass: Callable[[float], Awaitable[None]]
) -> None:
    """The key expires just past its TAT; after that the burst is free again."""
    cap = IntervalCap("crm", CapConfig(calls=5, period=1.0, burst=2), cap_store)
    assert [(await cap.reserve(0.0)).wait for _ in range(3)] == [0.0, 0.0, 0.0]
    ttl = await cap_store.ttl(cap.key)
    assert ttl is not None
    assert 0 < ttl <= 3 * 0.2 + 0.002
    await let_time_pass(3 * 0.2 + 0.05)
    assert await cap_store.get(cap.key) is None
    assert [(await cap.reserve(0.0)).wait for _ in range(3)] == [0.0, 0.0, 0.0]


async def test_random_schedules_never_exceed_calls_plus_burst_in_any_period() -> None:
    """Over 40 random arrival patterns on the memory twin, no window holds more than calls + b."""
    rng = random.Random(20240611)
    for _ in range(40):
        clock = ManualClock()
        calls, burst = rng.randint(1, 12), rng.randint(0, 4)
        period = rng.choice([0.05, 0.2, 1.0, 60.0])
        cap = IntervalCap(
            "dep", CapConfig(calls=calls, period=period, burst=burst), MemoryStore(clock=clock)
        )
        stamps: list[int] = []
        for _ in range(300):
            clock.now += rng.expovariate(3 * calls / period)
            max_wait = rng.choice([0.0, period / 4, period, 3 * period])
            try:
                admission = await cap.reserve(max_wait)
            except CapExceeded:
                continue
            assert admission.wait <= max_wait
            assert admission.stamp is not None
            stamps.append(admission.stamp)
        assert _most_in_any_window(stamps, round(period * US)) <= calls + burst
        assert len(stamps) > calls  # the pattern really pressed on the cap


async def test_admit_returns_only_once_its_slot_has_started_on_the_server_clock(
    redis_store: RedisStore, redis: aioredis.Redis
) -> None:
    """Each concurrent admit() returns at or after its stamp, judged by Redis TIME."""
    cap = IntervalCap("crm", CapConfig(calls=10, period=2.0, burst=1), redis_store)

    async def admitted_then_time() -> tuple[Admission, int]:
        admission = await cap.admit(10.0)
        seconds, micros = await redis.time()
        return admission, seconds * US + micros

    pairs = await asyncio.gather(*(admitted_then_time() for _ in range(6)))
    assert all(a.stamp is not None and a.stamp <= now for a, now in pairs)
    assert sorted(a.wait > 0 for a, _ in pairs) == [False, False, True, True, True, True]


async def test_two_processes_share_one_cap_by_the_server_clock(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """2 processes x 100 concurrent admits, 20 per 0.2 s + 2: all admitted, ≤ 22 per window."""
    prefix = f"test:{uuid.uuid4().hex}:"
    command = [sys.executable, str(WORKER), f"--url={redis_url}", f"--prefix={prefix}"]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    try:
        while int(await redis.get(f"{prefix}ready") or 0) < 2:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            await asyncio.sleep(0.02)
        await redis.set(f"{prefix}go", 1)
        outputs = [await asyncio.to_thread(p.communicate, timeout=100) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in outputs]
    reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    assert [(r["errors"], r["failed_open"]) for r in reports] == [([], 0), ([], 0)]
    assert [len(r["stamps"]) for r in reports] == [100, 100]
    stamps = [s for r in reports for s in r["stamps"]]
    assert None not in stamps
    assert _most_in_any_window(stamps, 200_000) <= 20 + 2
    # The processes overlapped: their slots interleave on the one schedule.
    first, second = (sorted(r["stamps"]) for r in reports)
    assert first[0] < second[-1]
    assert second[0] < first[-1]
    owners = [
        owner for _, owner in sorted((s, i) for i, r in enumerate(reports) for s in r["stamps"])
    ]
    assert sum(a != b for a, b in itertools.pairwise(owners)) >= 10


async def test_with_redis_unreachable_a_fail_open_cap_admits_uncapped_and_counts_it() -> None:
    """The store down: admit() returns at once with no stamp, and failed_open counts each."""
    store = RedisStore.from_url(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.3)
    cap = IntervalCap("crm", CapConfig(calls=1, period=60.0, fail_open=True), store)
    try:
        admissions = [await cap.admit(10.0) for _ in range(3)]
    finally:
        await store.aclose()
    assert admissions == [Admission(0.0, None)] * 3
    assert cap.failed_open == 3


async def test_with_redis_unreachable_a_fail_closed_cap_refuses_with_its_own_code() -> None:
    """fail_open=False and the store down: CapExceeded coded outbound.cap_unavailable, 1 s."""
    store = RedisStore.from_url(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.3)
    cap = IntervalCap("crm", CapConfig(fail_open=False), store)
    try:
        with pytest.raises(CapExceeded) as refused:
            await cap.admit(10.0)
    finally:
        await store.aclose()
    assert (refused.value.code, refused.value.retry_after) == ("outbound.cap_unavailable", 1)
    assert refused.value.dependency == "crm"
    assert cap.failed_open == 0


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    """A Redis of this test's own, so stopping it disturbs nobody."""
    redis = PrivateRedis()
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


async def test_a_cap_fails_open_while_redis_is_stopped_and_caps_again_once_it_is_back(
    server: PrivateRedis,
) -> None:
    """Stamped, then uncapped and counted while Redis is stopped, then stamped again."""
    store = RedisStore.from_url(server.url, timeout=0.5)
    cap = IntervalCap("crm", CapConfig(calls=100, period=1.0, burst=5), store)
    try:
        before = await cap.admit(1.0)
        server.stop()
        during = [await cap.admit(1.0) for _ in range(2)]
        server.start()
        after = await cap.admit(1.0)
    finally:
        await store.aclose()
    assert before.stamp is not None
    assert during == [Admission(0.0, None)] * 2
    assert after.stamp is not None
    assert cap.failed_open == 2
