"""Refresh-token families on `MemoryStore` and `RedisStore` alike.

Time: the memory backend advances a fake clock; the Redis backend sleeps
through short TTLs and grace windows. Redis-only tests watch the server between
two ``INFO commandstats`` probes with MONITOR, which names the client of every
command and tags those a script runs ``lua``; the commandstats deltas are then
reconciled with that window. So other suites sharing the server can neither
fake nor break the count: every SCAN or EVALSHA counted must be someone's.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import BlockingConnectionPool, Redis
from structlog.testing import capture_logs

from hardened.auth.refresh import (
    ROTATE,
    InvalidRefreshToken,
    RefreshConfig,
    RefreshTokens,
    RevocationEvent,
    TokenReused,
)
from hardened.errors import StoreUnavailable, Unauthorized
from hardened.stores import MemoryState, MemoryStore, RedisStore
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio

KEY = b"k" * 16 + b"server-side-secret-key!!"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SHORT = 0.3  # a TTL or grace window short enough to sleep through on Redis
PAST = 0.45


@dataclass
class Backend:
    name: str
    store: MemoryStore | RedisStore
    advance: Callable[[float], Awaitable[None]]
    prefix: str = ""
    events: list[RevocationEvent] = field(default_factory=list)

    def tokens(self, **config: Any) -> RefreshTokens:
        async def record(event: RevocationEvent) -> None:
            self.events.append(event)

        return RefreshTokens(self.store, key=KEY, config=RefreshConfig(**config), on_revoked=record)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = ManualClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Backend("memory", MemoryStore(clock=clock), advance)
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(url, max_connections=64, timeout=2.0, prefix=prefix)
    try:
        yield Backend("redis", store, asyncio.sleep, prefix)
    finally:  # the only SCAN: test cleanup, after every measurement
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()


def secret_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "=")


async def dump(backend: Backend) -> bytes:
    """Every key and value the backend holds for this test, as one blob."""
    parts: list[bytes] = []
    if isinstance(backend.store, MemoryStore):
        for name, stored in backend.store.state._data.items():
            value: Any = getattr(stored, "scores", stored)  # a sorted set: member -> score
            parts.append(name.encode())
            if isinstance(value, bytes):
                parts.append(value)
            elif isinstance(value, dict):
                parts += [k + (v if isinstance(v, bytes) else b"") for k, v in value.items()]
            else:
                parts += list(value)
        return b"|".join(parts)
    client: Any = backend.store.client  # replies are bytes: no decode_responses
    async for name in client.scan_iter(match=f"{backend.prefix}*"):
        kind = (await client.type(name)).decode()
        parts.append(name)
        if kind == "hash":
            parts += [k + v for k, v in (await client.hgetall(name)).items()]
        elif kind == "list":
            parts += await client.lrange(name, 0, -1)
        elif kind == "zset":
            parts += await client.zrange(name, 0, -1)
        else:
            parts.append(await client.get(name))
    return b"|".join(parts)


def outcomes(outcome: str) -> float:
    value = REGISTRY.get_sample_value("hardened_auth_refresh_total", {"outcome": outcome})
    return value or 0.0


# -- rotation and the grace window ---------------------------------------------------


async def test_token_is_user_family_and_a_256_bit_secret(backend: Backend) -> None:
    """A token is user.family.secret with a 32-byte secret; user ids may contain dots."""
    issued = await backend.tokens().start("user.42@example", tenant="shop-1")
    user, family, secret = issued.token.rsplit(".", 2)
    assert (user, family) == ("user.42@example", issued.family_id)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    rotated = await backend.tokens().rotate(issued.token)
    assert (rotated.user_id, rotated.family_id) == ("user.42@example", issued.family_id)


async def test_concurrent_refreshes_in_grace_all_get_the_same_child(backend: Backend) -> None:
    """50 concurrent refreshes of one token all succeed with one identical child token."""
    tokens = backend.tokens()
    issued = await tokens.start("u1", tenant="t1")
    grace_before = outcomes("grace")
    results = await asyncio.gather(*(tokens.rotate(issued.token) for _ in range(50)))
    assert len({r.token for r in results}) == 1
    assert {(r.family_id, r.tenant) for r in results} == {(issued.family_id, "t1")}
    assert outcomes("grace") - grace_before == 49
    child = results[0].token
    grandchild = await tokens.rotate(child)
    assert grandchild.token not in (child, issued.token)
    assert grandchild.family_id == issued.family_id
    assert len(await tokens.families("u1")) == 1


async def test_parent_within_grace_gets_the_current_child_and_changes_nothing(
    backend: Backend,
) -> None:
    """The immediate parent inside the grace gets the same child; older tokens never do."""
    tokens = backend.tokens()
    t0 = (await tokens.start("u1", tenant="t")).token
    t1 = (await tokens.rotate(t0)).token
    assert (await tokens.rotate(t0)).token == t1
    t2 = (await tokens.rotate(t1)).token
    assert (await tokens.rotate(t1)).token == t2  # t1 is now the parent
    with pytest.raises(TokenReused):
        await tokens.rotate(t0)  # an ancestor, even inside the grace window


async def test_grandparent_reuse_revokes_the_family_and_logs_a_security_event(
    backend: Backend,
) -> None:
    """Reusing T0 after T0→T1→T2 revokes the family; any later member is auth.token_reused."""
    tokens = backend.tokens()
    issued = await tokens.start("victim", tenant="t")
    t1 = (await tokens.rotate(issued.token)).token
    t2 = (await tokens.rotate(t1)).token
    other = await tokens.start("victim", tenant="t")
    with capture_logs() as logs, pytest.raises(TokenReused) as caught:
        await tokens.rotate(issued.token)
    assert (caught.value.status, caught.value.code) == (401, "auth.token_reused")
    assert isinstance(caught.value, Unauthorized)
    for member in (t2, t1, issued.token):
        with pytest.raises(TokenReused):
            await tokens.rotate(member)
    [event] = [e for e in logs if e["event"] == "auth.refresh_reuse"]
    assert event["user_id"] == "victim"
    assert event["family_id"] == issued.family_id
    assert event["log_level"] == "warning"
    assert not any(s in repr(logs) for s in (issued.token, t1, t2, issued.token[-43:]))
    assert backend.events == [RevocationEvent("victim", issued.family_id, "reused")]
    assert [f.family_id for f in await tokens.families("victim")] == [other.family_id]
    assert (await tokens.rotate(other.token)).family_id == other.family_id


async def test_parent_reuse_after_the_grace_window_is_reuse(backend: Backend) -> None:
    """Presenting the parent once the grace window has passed revokes the family."""
    tokens = backend.tokens(grace=SHORT)
    t0 = (await tokens.start("u1", tenant="t")).token
    t1 = (await tokens.rotate(t0)).token
    await backend.advance(PAST)
    with pytest.raises(TokenReused):
        await tokens.rotate(t0)
    with pytest.raises(TokenReused):
        await tokens.rotate(t1)


async def test_zero_grace_makes_any_parent_reuse_a_reuse(backend: Backend) -> None:
    """With grace=0 the parent is never accepted again, not even immediately."""
    tokens = backend.tokens(grace=0)
    t0 = (await tokens.start("u1", tenant="t")).token
    await tokens.rotate(t0)
    with pytest.raises(TokenReused):
        await tokens.rotate(t0)


async def test_reuse_is_recognised_for_the_last_ancestors_superseded_tokens(
    backend: Backend,
) -> None:
    """A family remembers `ancestors` superseded hashes: older tokens are merely invalid."""
    tokens = backend.tokens(ancestors=2)
    chain = [(await tokens.start("u1", tenant="t")).token]
    for _ in range(4):
        chain.append((await tokens.rotate(chain[-1])).token)
    with pytest.raises(InvalidRefreshToken):
        await tokens.rotate(chain[0])  # beyond memory: not recognised, nothing revoked
    assert len(await tokens.families("u1")) == 1
    with pytest.raises(TokenReused):
        await tokens.rotate(chain[1])  # still remembered


async def test_rotation_carries_tenant_and_updates_last_use(backend: Backend) -> None:
    """The tenant and meta set at start survive rotation; listing shows last use moving."""
    tokens = backend.tokens()
    first = await tokens.start("u1", tenant="shop-7", meta={"ua": "Firefox", "ip": "10.0.0.1"})
    await backend.advance(0.05)
    second = await tokens.start("u1", tenant="shop-8")
    await backend.advance(0.05)
    rotated = await tokens.rotate(first.token)
    assert rotated.tenant == "shop-7"
    assert (await tokens.rotate(rotated.token)).tenant == "shop-7"
    listed = await tokens.families("u1")
    assert [(f.family_id, f.tenant) for f in listed] == [
        (first.family_id, "shop-7"),
        (second.family_id, "shop-8"),
    ]
    assert listed[0].meta == {"ua": "Firefox", "ip": "10.0.0.1"}
    assert listed[1].meta == {}
    assert listed[0].last_used_at > listed[0].created_at
    assert listed[0].expires_at > listed[0].last_used_at + 29 * 24 * 3600


# -- caps, revocation, expiry --------------------------------------------------------


async def test_eleventh_start_evicts_the_oldest_family(backend: Backend) -> None:
    """The 11th login evicts the oldest family atomically; its token is then invalid."""
    tokens = backend.tokens()
    issued = [await tokens.start("u1", tenant="t") for _ in range(10)]
    assert all(i.evicted == () for i in issued)
    eleventh = await tokens.start("u1", tenant="t")
    assert eleventh.evicted == (issued[0].family_id,)
    with pytest.raises(InvalidRefreshToken):
        await tokens.rotate(issued[0].token)
    listed = [f.family_id for f in await tokens.families("u1")]
    assert listed == [i.family_id for i in issued[1:]] + [eleventh.family_id]
    assert (await tokens.rotate(issued[1].token)).family_id == issued[1].family_id
    assert backend.events == [RevocationEvent("u1", issued[0].family_id, "evicted")]


async def test_revoke_all_ends_every_family_and_its_sessions(backend: Backend) -> None:
    """Logout-all makes every refresh token invalid and every session inactive, others untouched."""
    tokens = backend.tokens()
    started = [await tokens.start("u1", tenant="t") for _ in range(3)]
    rotated = await tokens.rotate(started[0].token)
    bystander = await tokens.start("u2", tenant="t")
    assert await tokens.revoke_all("u1") == 3
    for token in [rotated.token, started[0].token, *(s.token for s in started[1:])]:
        with pytest.raises(InvalidRefreshToken):
            await tokens.rotate(token)
    assert [await tokens.session_active("u1", s.family_id) for s in started] == [False] * 3
    assert await tokens.families("u1") == []
    assert backend.events == [RevocationEvent("u1", None, "revoked_all")]
    assert (await tokens.rotate(bystander.token)).user_id == "u2"
    assert await tokens.session_active("u2", bystander.family_id)
    again = await tokens.start("u1", tenant="t")  # a login after logout-all works
    assert await tokens.session_active("u1", again.family_id)
    assert (await tokens.rotate(again.token)).family_id == again.family_id
    assert await tokens.revoke_all("u1") == 1


async def test_a_session_is_active_until_logout_reuse_or_eviction(backend: Backend) -> None:
    """session_active follows the family: live through rotation, gone after logout/reuse/evict."""
    tokens = backend.tokens(max_families=2, grace=0)
    logged_out = await tokens.start("u1", tenant="t")
    reused = await tokens.start("u1", tenant="t")
    assert await tokens.session_active("u1", logged_out.family_id)
    child = await tokens.rotate(reused.token)
    assert await tokens.session_active("u1", reused.family_id)
    await tokens.revoke("u1", logged_out.family_id)
    assert not await tokens.session_active("u1", logged_out.family_id)
    await tokens.rotate(child.token)
    with pytest.raises(TokenReused):
        await tokens.rotate(reused.token)
    assert not await tokens.session_active("u1", reused.family_id)
    first, _, _ = [await tokens.start("u1", tenant="t") for _ in range(3)]
    assert not await tokens.session_active("u1", first.family_id)  # evicted by the cap
    assert not await tokens.session_active("u1", "not-a-family-id")
    assert not await tokens.session_active("u2", first.family_id)


async def test_revoke_ends_one_family_only(backend: Backend) -> None:
    """Logout ends its own family (True once, then False) and leaves the others alive."""
    tokens = backend.tokens()
    mine = await tokens.start("u1", tenant="t")
    other = await tokens.start("u1", tenant="t")
    assert await tokens.revoke("u1", mine.family_id) is True
    assert await tokens.revoke("u1", mine.family_id) is False
    assert await tokens.revoke("u1", "not-a-family{}") is False
    with pytest.raises(InvalidRefreshToken):
        await tokens.rotate(mine.token)
    assert (await tokens.rotate(other.token)).family_id == other.family_id
    assert backend.events == [RevocationEvent("u1", mine.family_id, "revoked")]


async def test_family_expires_after_its_idle_ttl_and_rotation_slides_it(
    backend: Backend,
) -> None:
    """A family lives ttl after its last rotation, then its token is invalid (not reused)."""
    tokens = backend.tokens(ttl=3 * SHORT, grace=0)
    token = (await tokens.start("u1", tenant="t")).token
    for _ in range(4):  # 4 x SHORT in total: longer than the ttl, but each hop well within it
        await backend.advance(SHORT)
        token = (await tokens.rotate(token)).token
    await backend.advance(3 * SHORT + 0.15)
    with pytest.raises(InvalidRefreshToken):
        await tokens.rotate(token)
    assert await tokens.families("u1") == []
    fresh = await tokens.start("u1", tenant="t")
    assert fresh.evicted == ()


# -- forgery, storage, failure ------------------------------------------------------


async def test_forged_or_malformed_tokens_are_invalid_and_revoke_nothing(
    backend: Backend,
) -> None:
    """A wrong secret for a real family is invalid and the victim's family keeps working."""
    tokens = backend.tokens()
    victim = await tokens.start("victim", tenant="t")
    user, family, secret = victim.token.rsplit(".", 2)
    forged_secret = base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode()
    # 43 characters carry 258 bits: setting one of the 2 unused low bits keeps the bytes.
    last = ALPHABET[ALPHABET.index(secret[-1]) | 1]
    non_canonical = secret[:-1] + last
    assert secret_of(f"x.{non_canonical}") == secret_of(victim.token)
    forged = [
        f"{user}.{family}.{forged_secret}",
        f"other.{family}.{secret}",
        f"{user}.{'A' * 22}.{secret}",
        f"{user}.{family}.{secret[:-1]}",
        f"{user} x.{family}.{secret}",
        "",
        "garbage",
        f"{user}.{family}.{secret}.extra",
        f"{user}.{family}.{non_canonical}",
    ]
    for token in forged:
        with pytest.raises(InvalidRefreshToken) as caught:
            await tokens.rotate(token)
        assert caught.value.code == "auth.invalid_refresh"
    assert backend.events == []
    assert (await tokens.rotate(victim.token)).family_id == victim.family_id


async def test_store_holds_only_keyed_hashes(backend: Backend) -> None:
    """No raw secret (bytes or text) of any issued or rotated token appears in the store."""
    tokens = backend.tokens()
    issued = await tokens.start("u1", tenant="t")
    t1 = await tokens.rotate(issued.token)
    t2 = await tokens.rotate(t1.token)
    blob = await dump(backend)
    assert issued.family_id.encode() in blob  # the dump really holds this user's keys
    for token in (issued.token, t1.token, t2.token):
        assert secret_of(token) not in blob
        assert token.rsplit(".", 1)[1].encode() not in blob


async def test_a_failing_revocation_hook_does_not_mask_the_outcome(backend: Backend) -> None:
    """A hook that raises is logged; the reuse still raises TokenReused and revoke returns True."""

    async def broken(event: RevocationEvent) -> None:
        raise RuntimeError("socket layer down")

    tokens = RefreshTokens(backend.store, key=KEY, on_revoked=broken)
    t0 = (await tokens.start("u1", tenant="t")).token
    await tokens.rotate((await tokens.rotate(t0)).token)
    with capture_logs() as logs, pytest.raises(TokenReused):
        await tokens.rotate(t0)
    assert any(e["event"] == "auth.revocation_hook_failed" for e in logs)
    other = await tokens.start("u1", tenant="t")
    assert await tokens.revoke("u1", other.family_id) is True


async def test_store_outage_is_store_unavailable() -> None:
    """With Redis unreachable every operation raises StoreUnavailable, never a verdict."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    valid = (await RefreshTokens(MemoryStore(), key=KEY).start("u1", tenant="t")).token
    tokens = RefreshTokens(store, key=KEY)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: tokens.start("u1", tenant="t"),
            lambda: tokens.rotate(valid),
            lambda: tokens.revoke("u1", "A" * 22),
            lambda: tokens.revoke_all("u1"),
            lambda: tokens.session_active("u1", "A" * 22),
            lambda: tokens.families("u1"),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call()
    finally:
        await store.aclose()


async def test_config_and_inputs_are_validated() -> None:
    """Grace outside 0..30 s, a short key, bad caps and unsafe user ids are refused."""
    invalid: list[dict[str, Any]] = [
        {"grace": 31},
        {"grace": -1},
        {"ttl": 0},
        {"max_families": 0},
        {"ancestors": 0},
    ]
    for bad in invalid:
        with pytest.raises(ValueError, match=r"\w"):
            RefreshConfig(**bad)
    with pytest.raises(ValueError, match="32 bytes"):
        RefreshTokens(MemoryStore(), key=b"short")
    tokens = RefreshTokens(MemoryStore(), key=KEY)
    for user in ("", "has space", "x" * 129, "naïve"):
        with pytest.raises(ValueError, match="user_id"):
            await tokens.start(user, tenant="t")
    with pytest.raises(ValueError, match="meta"):
        await tokens.start("u1", tenant="t", meta={"big": "x" * 4096})


async def test_memory_lists_and_sorted_sets_answer_like_redis(redis_url: str) -> None:
    """The MemoryState list and sorted-set commands the twins use match Redis, edges included."""
    redis, state = Redis.from_url(redis_url), MemoryState(time.monotonic)
    prefix = f"test:{uuid.uuid4().hex}:"
    lst, zset = prefix + "list", prefix + "zset"
    spans = [(0, -1), (1, 1), (-2, -1), (-100, 100), (2, 1), (5, 10), (0, -4), (-1, -1)]
    try:
        assert state.lpush(lst, b"a", b"b", b"c") == await redis.lpush(lst, b"a", b"b", b"c")
        for start, stop in spans:
            assert state.lrange(lst, start, stop) == await redis.lrange(lst, start, stop)
        for value in (b"a", b"b", b"x"):
            assert state.lpos(lst, value) == await redis.lpos(lst, value.decode())
        state.ltrim(lst, 0, 1)
        await redis.ltrim(lst, 0, 1)
        assert state.lrange(lst, 0, -1) == await redis.lrange(lst, 0, -1)
        state.ltrim(lst, 5, 10)
        await redis.ltrim(lst, 5, 10)
        assert state.exists(lst) is bool(await redis.exists(lst)) is False
        scores = {b"a": 2.0, b"b": 1.0, b"c": 1.0, b"d": 3.0}
        assert state.zadd(zset, scores) == await redis.zadd(zset, scores)
        for start, stop in spans:
            expected = await redis.zrange(zset, start, stop, withscores=True)
            assert state.zrange(zset, start, stop) == expected
        assert state.zpopmin(zset, 3) == await redis.zpopmin(zset, 3)
        assert state.zcard(zset) == await redis.zcard(zset) == 1
        assert state.zrem(zset, b"d", b"x") == await redis.zrem(zset, b"d", b"x") == 1
        assert state.exists(zset) is bool(await redis.exists(zset)) is False
    finally:
        await redis.delete(lst, zset)
        await redis.aclose()


# -- what reaches Redis --------------------------------------------------------------


@dataclass
class Window:
    """What Redis ran between two probes: by whom, and its commandstats deltas."""

    ours: list[list[str]]  # [command, first argument] our store's connections sent
    scripted: list[str]  # commands run inside scripts (anyone's)
    foreign: list[str]  # commands other clients sent
    stats: dict[str, int]  # server-wide commandstats deltas over the same window

    def count(self, command: str) -> int:
        """How many times ``command`` ran in the window, whoever ran it (MONITOR's view)."""
        everyone = [c for c, _ in self.ours] + self.scripted + self.foreign
        return everyone.count(command)


@dataclass
class Observer:
    """Runs an operation through a named store and watches the server while it does."""

    url: str
    store: RedisStore
    name: str

    async def watch(self, operation: Callable[[], Awaitable[object]]) -> Window:
        """Watch ``operation`` once warmed up; again if another test flushed the script cache."""
        await operation()  # warm up: scripts loaded, pooled connections open
        for _ in range(5):
            window = await self._watch(operation)
            if ["SCRIPT", "LOAD"] not in window.ours:
                break
        return window

    async def _watch(self, operation: Callable[[], Awaitable[object]]) -> Window:
        monitor, probe = Redis.from_url(self.url), Redis.from_url(self.url)
        try:
            listed = await probe.client_list()
            ours = {c["addr"].rsplit(":", 1)[1] for c in listed if c["name"] == self.name}
            marker = uuid.uuid4().hex
            async with monitor.monitor() as lines:
                before = await probe.info("commandstats")
                await operation()
                after = await probe.info("commandstats")
                await probe.echo(marker)
                seen = []
                while marker not in (line := await lines.next_command())["command"]:
                    seen.append(line)
        finally:
            await monitor.aclose()
            await probe.aclose()
        starts = [i for i, line in enumerate(seen) if line["command"] == "INFO commandstats"]
        window = Window([], [], [], stats_delta(before, after))
        for line in seen[starts[0] + 1 : starts[-1]]:
            command, _, rest = line["command"].partition(" ")
            if line["client_type"] == "lua":
                window.scripted.append(command.upper())
            elif line["client_port"] in ours:
                window.ours.append([command.upper(), rest.split(" ", 1)[0]])
            else:
                window.foreign.append(command.upper())
        return window


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    calls = {
        name.removeprefix("cmdstat_").upper(): stats["calls"] - before.get(name, {}).get("calls", 0)
        for name, stats in after.items()
    }
    calls["INFO"] -= 1  # the first probe, counted once it had run
    return {name: n for name, n in calls.items() if n}


@pytest.fixture
async def observer(redis_url: str) -> AsyncIterator[Observer]:
    """A Redis-only store on a named connection, so its commands can be told apart."""
    prefix = f"test:{uuid.uuid4().hex}:"
    name = f"refresh-test-{uuid.uuid4().hex}"
    pool = BlockingConnectionPool.from_url(redis_url, client_name=name, max_connections=4)
    store = RedisStore(Redis(connection_pool=pool), prefix=prefix, owns_client=True)
    try:
        yield Observer(redis_url, store, name)
    finally:  # cleanup after every measurement
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()


async def test_rotation_is_one_round_trip(observer: Observer) -> None:
    """A rotation is one request, EVALSHA of the rotate script: MONITOR and commandstats agree."""
    tokens, rotations = RefreshTokens(observer.store, key=KEY), 20
    token = (await tokens.start("u1", tenant="t")).token

    async def rotate_chain() -> None:
        nonlocal token
        for _ in range(rotations):
            token = (await tokens.rotate(token)).token

    window = await observer.watch(rotate_chain)
    assert window.ours == [["EVALSHA", ROTATE.sha]] * rotations
    # Every EVALSHA the server counted is accounted for: ours, or another client's.
    assert (
        window.stats["EVALSHA"]
        == window.count("EVALSHA")
        == rotations + (window.foreign.count("EVALSHA"))
    )


async def test_no_scan_or_keys_reaches_redis(observer: Observer) -> None:
    """Start with eviction, rotate, listing, logout-all and session checks send no SCAN or KEYS."""
    tokens = RefreshTokens(observer.store, key=KEY, config=RefreshConfig(max_families=2))

    async def session_lifecycle() -> None:
        user = uuid.uuid4().hex
        for _ in range(3):
            last = await tokens.start(user, tenant="t")
        assert last.evicted
        await tokens.rotate(last.token)
        assert len(await tokens.families(user)) == 2
        assert await tokens.session_active(user, last.family_id)
        await tokens.revoke_all(user)

    window = await observer.watch(session_lifecycle)
    assert [command for command, _ in window.ours] == ["EVALSHA"] * 7
    for command in ("SCAN", "KEYS"):
        assert command not in window.scripted
        # commandstats: every SCAN/KEYS the server ran in the window came from someone else.
        assert (
            window.stats.get(command, 0) == window.count(command) == window.foreign.count(command)
        )
