"""WebSockets: auth before accept, tickets, sockets per user, limits, revocation on every worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from ws_worker import State, build_app

from hardened.auth.websockets import (
    MemoryRevocationBus,
    MessageRateLimit,
    RedisRevocationBus,
    SocketRegistry,
    SocketRevocation,
    TicketStore,
    error_frame,
    websocket_credentials,
    websocket_ticket,
)
from hardened.errors import StoreUnavailable
from hardened.stores import MemoryStore, RedisStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

WORKER = Path(__file__).with_name("ws_worker.py")

# uvicorn's ws="websockets" runs on websockets.legacy: known deprecations, not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets.legacy"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"hardened_{name}", labels) or 0.0


@contextlib.asynccontextmanager
async def serve(state: State) -> AsyncIterator[str]:
    """Serve the test app with real uvicorn on 127.0.0.1 and yield its ws:// base URL."""
    config = uvicorn.Config(
        build_app(state),
        host="127.0.0.1",
        port=0,
        lifespan="off",
        ws="websockets",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def echo(ws: ClientConnection, text: str = "ping") -> dict[str, Any]:
    await ws.send(text)
    async with asyncio.timeout(2):
        reply: dict[str, Any] = json.loads(await ws.recv())
    return reply


async def closed(ws: ClientConnection) -> tuple[int, str]:
    """Wait for the server to close ``ws``; return the close code and reason."""
    async with asyncio.timeout(2):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            frame = exc.rcvd
    assert frame is not None, "closed without a close frame"
    return frame.code, frame.reason


def bearer(user: str = "u", session: str = "s") -> list[Any]:
    return ["bearer", f"valid~{user}~{session}"]


# -- handshake authentication ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "subprotocols",
    [None, ["bearer", "forged~u~s"], ["bearer"], ["ticket", "A" * 43], ["chat"]],
    ids=["none", "invalid-token", "marker-only", "unknown-ticket", "other-protocol"],
)
async def test_handshake_without_valid_credentials_is_refused_before_accept(
    subprotocols: list[Any] | None,
) -> None:
    """No or bad credentials: HTTP 403 at the handshake, accept never called, logged, counted."""
    state = State()
    before = metric("ws_rejected_total", reason="unauthorized")
    async with serve(state) as url:
        with capture_logs() as logs, pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/ws", subprotocols=subprotocols, open_timeout=5)
    assert info.value.response.status_code == 403
    assert state.accepted == 0
    assert state.refused == 1
    assert [e["event"] for e in logs if e["event"] == "ws.rejected"] == ["ws.rejected"]
    assert metric("ws_rejected_total", reason="unauthorized") == before + 1


@pytest.mark.anyio
async def test_token_in_query_string_is_ignored() -> None:
    """A token in the URL is never read (URLs end up in logs): the handshake is refused."""
    state = State()
    async with serve(state) as url:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/ws?token=valid~u~s&access_token=valid~u~s")
    assert info.value.response.status_code == 403
    assert state.accepted == 0


@pytest.mark.anyio
async def test_valid_bearer_is_accepted_with_the_bearer_subprotocol() -> None:
    """A valid token in Sec-WebSocket-Protocol is accepted; the server echoes only 'bearer'."""
    state = State()
    async with serve(state) as url, connect(f"{url}/ws", subprotocols=bearer()) as ws:
        assert ws.subprotocol == "bearer"
        assert ws.response is not None
        assert "valid~u~s" not in str(ws.response.headers)
        assert await echo(ws) == {"echo": "ping", "user": "u"}
    assert state.accepted == 1


@pytest.mark.anyio
async def test_two_sockets_of_one_user_are_both_registered() -> None:
    """Two tabs of the same user and session are two live, registered sockets."""
    state = State()
    async with (
        serve(state) as url,
        connect(f"{url}/ws", subprotocols=bearer()) as first,
        connect(f"{url}/ws", subprotocols=bearer()) as second,
    ):
        await echo(first)
        await echo(second)
        assert state.registry.count("u") == 2
    async with asyncio.timeout(2):
        while state.registry.count("u"):
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_one_time_ticket_works_once() -> None:
    """A ticket opens one socket (subprotocol 'ticket'); the second handshake with it is 403."""
    state = State()
    ticket = await state.tickets.issue({"user_id": "u", "session_id": "s"})
    async with serve(state) as url:
        async with connect(f"{url}/ws", subprotocols=["ticket", ticket]) as ws:
            assert ws.subprotocol == "ticket"
            assert (await echo(ws))["user"] == "u"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/ws", subprotocols=["ticket", ticket])
    assert info.value.response.status_code == 403
    assert state.accepted == 1


@pytest.mark.anyio
async def test_message_rate_limit_closes_with_1008_after_the_burst() -> None:
    """Burst 3 at 1/s: three echoes, then the fourth message closes the socket 1008."""
    state = State(rate=1.0, burst=3)
    before = metric("ws_closed_total", cause="rate_limited")
    async with serve(state) as url, connect(f"{url}/ws", subprotocols=bearer()) as ws:
        for i in range(3):
            assert (await echo(ws, f"m{i}"))["echo"] == f"m{i}"
        await ws.send("one too many")
        assert await closed(ws) == (1008, "rate limited")
    assert metric("ws_closed_total", cause="rate_limited") == before + 1


@pytest.mark.anyio
async def test_error_frames_have_the_standard_shape() -> None:
    """Errors travel as {"type": "error", "code", "message"} text frames."""
    assert json.loads(error_frame("ws.bad", "nope")) == {
        "type": "error",
        "code": "ws.bad",
        "message": "nope",
    }
    state = State()
    async with serve(state) as url, connect(f"{url}/ws", subprotocols=bearer()) as ws:
        assert (await echo(ws, "boom"))["type"] == "error"


@pytest.mark.anyio
async def test_memory_bus_closes_the_revoked_session_only_then_all() -> None:
    """A session revocation closes that session's sockets with 4401; revoke-all closes the rest."""
    state = State()
    runner = asyncio.create_task(state.bus.run(state.registry))
    await asyncio.sleep(0)
    try:
        async with (
            serve(state) as url,
            connect(f"{url}/ws", subprotocols=bearer("u", "s1")) as s1,
            connect(f"{url}/ws", subprotocols=bearer("u", "s1")) as s1_again,
            connect(f"{url}/ws", subprotocols=bearer("u", "s2")) as s2,
            connect(f"{url}/ws", subprotocols=bearer("v", "s1")) as other_user,
        ):
            for ws in (s1, s1_again, s2, other_user):
                await echo(ws)
            await state.bus.publish(SocketRevocation("u", "s1"))
            assert await closed(s1) == (4401, "revoked")
            assert await closed(s1_again) == (4401, "revoked")
            assert (await echo(s2))["user"] == "u"
            await state.bus.publish(SocketRevocation("u", None))
            assert await closed(s2) == (4401, "revoked")
            assert (await echo(other_user))["user"] == "v"
    finally:
        runner.cancel()


# -- the pieces, without a server ------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "token"),
    [
        (["bearer", "abc.def-ghi_"], "abc.def-ghi_"),
        (["chat", "bearer", "tok"], "tok"),
        (["bearer"], None),
        (["bearer", "a", "bearer", "b"], None),
        (["bearer", "has space"], None),
        (["bearer", ""], None),
        ([], None),
    ],
)
def test_bearer_subprotocol_parsing(offered: list[str], token: str | None) -> None:
    """Only one 'bearer' marker followed by a token-shaped value yields credentials."""
    assert websocket_credentials({"type": "websocket", "subprotocols": offered}) == token


def test_ticket_subprotocol_parsing() -> None:
    """A ticket must have the shape of one we issue (43 url-safe characters)."""
    good = "A" * 43
    assert websocket_ticket({"subprotocols": ["ticket", good]}) == good
    assert websocket_ticket({"subprotocols": ["ticket", "short"]}) is None
    assert websocket_ticket({"subprotocols": ["bearer", good]}) is None


def test_message_rate_limit_is_a_gcra() -> None:
    """Burst 3 at 2/s: three at once, then one per 0.5 s, and refusals consume nothing."""
    now = [100.0]
    limit = MessageRateLimit(2.0, 3, now=lambda: now[0])
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.25
    assert not limit.allow()
    now[0] += 0.25
    assert limit.allow()
    assert not limit.allow()
    now[0] += 10
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError, match="rate"):
        MessageRateLimit(0, 1)


@pytest.mark.anyio
async def test_registry_close_user_semantics() -> None:
    """Session-scoped and user-wide closes, unknown sessions closed, failures isolated."""
    registry = SocketRegistry()
    calls: list[tuple[str, int, str]] = []

    def closer(name: str, *, fail: bool = False) -> Any:
        async def close(code: int, reason: str) -> None:
            calls.append((name, code, reason))
            if fail:
                raise RuntimeError("socket already gone")

        return close

    registry.register("u", "s1", closer("a", fail=True))
    registry.register("u", "s1", closer("b"))
    registry.register("u", None, closer("unknown-session"))
    kept = registry.register("u", "s2", closer("c"))
    registry.register("v", "s1", closer("d"))
    with capture_logs() as logs:
        assert await registry.close_user("u", "s1") == 3
    assert sorted(n for n, _, _ in calls) == ["a", "b", "unknown-session"]
    assert {(c, r) for _, c, r in calls} == {(4401, "revoked")}
    assert [e["event"] for e in logs].count("ws.close_failed") == 1
    assert await registry.close_user("u", "s1") == 0
    assert registry.count("u") == 1
    assert registry.count() == 2
    registry.unregister(kept)
    registry.unregister(kept)
    assert registry.count("u") == 0
    assert await registry.close_user("v", None, code=4000, reason="x" * 200) == 1
    assert calls[-1][1:] == (4000, "x" * 123)


@pytest.mark.anyio
async def test_memory_bus_without_runner_drops_events() -> None:
    """Like pub/sub, the memory bus only reaches registries that are running."""
    bus, registry = MemoryRevocationBus(), SocketRegistry()
    closed_with: list[int] = []

    async def close(code: int, reason: str) -> None:
        closed_with.append(code)

    registry.register("u", "s", close)
    await bus.publish(SocketRevocation("u"))
    assert closed_with == []
    runner = asyncio.create_task(bus.run(registry))
    await asyncio.sleep(0)
    await bus.publish(SocketRevocation("u"))
    assert closed_with == [4401]
    runner.cancel()


def test_revocation_event_json_round_trip() -> None:
    """Events travel as {"user_id", "session_id"} and malformed payloads are refused."""
    event = SocketRevocation("u", "fam-1")
    assert json.loads(event.to_json()) == {"user_id": "u", "session_id": "fam-1"}
    assert SocketRevocation.from_json(event.to_json()) == event
    assert SocketRevocation.from_json(b'{"user_id": "u"}') == SocketRevocation("u", None)
    for bad in (b"[]", b'{"user_id": 1}', b'{"user_id": "u", "session_id": 2}', b"{"):
        with pytest.raises((ValueError, TypeError, KeyError)):
            SocketRevocation.from_json(bad)


# -- tickets on both backends ----------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def ticket_store(request: pytest.FixtureRequest) -> Iterator[MemoryStore | RedisStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    yield RedisStore.from_url(url, prefix=f"test-{uuid.uuid4().hex}:")


@pytest.mark.anyio
async def test_ticket_is_single_use_under_a_storm(ticket_store: MemoryStore | RedisStore) -> None:
    """50 concurrent redemptions of one ticket: exactly one gets the payload."""
    tickets = TicketStore(ticket_store)
    ticket = await tickets.issue({"user_id": "u", "session_id": "s"})
    await asyncio.gather(*(ticket_store.get("warm-up") for _ in range(50)))  # 50 live connections
    results = await asyncio.gather(*(tickets.redeem(ticket) for _ in range(50)))
    assert [r for r in results if r is not None] == [{"user_id": "u", "session_id": "s"}]
    assert await tickets.redeem(ticket) is None
    await ticket_store.aclose()


class KeyRecorder:
    """A `KeyValue` that remembers the keys written through it."""

    def __init__(self, store: MemoryStore | RedisStore) -> None:
        self.store = store
        self.keys: list[str] = []
        self.get, self.delete, self.ttl = store.get, store.delete, store.ttl

    async def set(self, key: str, value: bytes, **kwargs: Any) -> bool:
        self.keys.append(key)
        return await self.store.set(key, value, **kwargs)


@pytest.mark.anyio
async def test_ticket_is_stored_hashed_and_expires(
    ticket_store: MemoryStore | RedisStore,
) -> None:
    """The raw ticket is in no key, the entry carries the TTL, junk and expired tickets fail."""
    recorder = KeyRecorder(ticket_store)
    tickets = TicketStore(recorder, ttl=0.2)  # type: ignore[arg-type]
    ticket = await tickets.issue({"user_id": "u"})
    [key] = recorder.keys
    assert ticket not in key
    assert key.startswith("hardened:{ws-ticket:")
    remaining = await ticket_store.ttl(key)
    assert remaining is not None
    assert 0 < remaining <= 0.2
    assert await tickets.redeem("not a ticket") is None
    await asyncio.sleep(0.3)
    assert await tickets.redeem(ticket) is None
    with pytest.raises(ValueError, match="ttl"):
        TicketStore(ticket_store, ttl=0)
    with pytest.raises(TypeError, match="str to str"):
        await tickets.issue({"user_id": 1})  # type: ignore[dict-item]
    await ticket_store.aclose()


# -- Redis bus -------------------------------------------------------------------------


def unique_channel() -> str:
    return f"hardened:test:revocations:{uuid.uuid4().hex}"


def recorder(log: list[tuple[float, int, str]]) -> Any:
    async def close(code: int, reason: str) -> None:
        log.append((time.perf_counter(), code, reason))

    return close


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_redis_bus_reconnects_after_its_connection_is_killed(redis_url: str) -> None:
    """Killing the subscriber connection is logged and counted; the bus resubscribes and works."""
    name = f"ws-bus-{uuid.uuid4().hex[:12]}"
    client = Redis.from_url(redis_url, client_name=name, retry=Retry(NoBackoff(), 0))
    admin = Redis.from_url(redis_url)
    reconnects: list[int] = []

    async def on_reconnect(registry: SocketRegistry) -> None:
        reconnects.append(registry.count())

    bus = RedisRevocationBus(
        client, unique_channel(), backoff=(0.01, 0.05), on_reconnect=on_reconnect
    )
    registry, closes = SocketRegistry(), []
    registry.register("u", "s", recorder(closes))
    before = metric("ws_revocation_bus_errors_total", operation="subscribe")
    with capture_logs() as logs:
        runner = asyncio.create_task(bus.run(registry))
        try:
            await wait_for(lambda: bus.subscribed)
            for line in (await admin.execute_command("CLIENT", "LIST")).decode().splitlines():
                fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
                if fields.get("name") == name and fields.get("sub") == "1":
                    await admin.execute_command("CLIENT", "KILL", "ID", fields["id"])
            await wait_for(lambda: reconnects == [1])
            assert bus.subscribed
            await bus.publish(SocketRevocation("u", "s"))
            await wait_for(lambda: bool(closes))
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    assert [c[1:] for c in closes] == [(4401, "revoked")]
    assert metric("ws_revocation_bus_errors_total", operation="subscribe") == before + 1
    events = [e["event"] for e in logs]
    assert "ws.revocations.disconnected" in events
    assert "ws.revocations.reconnected" in events
    assert not bus.subscribed
    await client.aclose()
    await admin.aclose()


class FreezableProxy:
    """A TCP proxy to Redis whose open connections can go silent (half-open), new ones work."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._open: list[dict[str, bool]] = []
        self._server: asyncio.Server | None = None

    def freeze(self) -> None:
        """Stop forwarding on every connection open now, without closing any."""
        for connection in self._open:
            connection["frozen"] = True

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        connection = {"frozen": False}
        self._open.append(connection)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if not connection["frozen"]:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@pytest.mark.anyio
async def test_redis_bus_detects_a_silent_connection_and_resubscribes(redis_url: str) -> None:
    """When Redis stops answering without closing TCP, the missing pong triggers a reconnect."""
    port = httpx.URL(redis_url.replace("redis://", "http://")).port or 6379
    async with FreezableProxy(port) as proxy:
        client = Redis(host="127.0.0.1", port=proxy.port, retry=Retry(NoBackoff(), 0))
        reconnects: list[float] = []

        async def on_reconnect(registry: SocketRegistry) -> None:
            reconnects.append(time.perf_counter())

        bus = RedisRevocationBus(
            client,
            unique_channel(),
            backoff=(0.01, 0.05),
            ping_interval=0.2,
            on_reconnect=on_reconnect,
        )
        runner = asyncio.create_task(bus.run(SocketRegistry()))
        try:
            await wait_for(lambda: bus.subscribed)
            await asyncio.sleep(0.5)  # pings answered: no reconnect while healthy
            assert reconnects == []
            frozen_at = time.perf_counter()
            proxy.freeze()
            await wait_for(lambda: bool(reconnects), timeout=3)
            assert reconnects[0] - frozen_at < 1.0  # two ping intervals, plus the reconnect
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await client.aclose()


@pytest.mark.anyio
async def test_redis_bus_with_redis_down_fails_publish_and_keeps_retrying() -> None:
    """Unreachable Redis: publish raises StoreUnavailable; run retries, counts, cancels cleanly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    client = Redis(
        host="127.0.0.1", port=dead_port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=0.2
    )
    bus = RedisRevocationBus(client, unique_channel(), backoff=(0.01, 0.02))
    with pytest.raises(StoreUnavailable):
        await bus.publish(SocketRevocation("u"))
    before = metric("ws_revocation_bus_errors_total", operation="subscribe")
    runner = asyncio.create_task(bus.run(SocketRegistry()))
    await asyncio.sleep(0.3)
    assert metric("ws_revocation_bus_errors_total", operation="subscribe") >= before + 3
    assert not bus.subscribed
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await client.aclose()


# -- the Must-show: revocation on another worker process ---------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two uvicorn worker processes sharing only Redis (one channel per test)."""
    channel = unique_channel()
    procs, urls = [], []
    for name in ("a", "b"):
        port = free_port()
        log = (tmp_path / f"worker-{name}.log").open("w")
        command = [
            sys.executable,
            str(WORKER),
            "--port",
            str(port),
            "--redis-url",
            redis_url,
            "--channel",
            channel,
        ]
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 20
        for name, url, proc in zip("ab", urls, procs, strict=True):
            while True:
                assert proc.poll() is None, (tmp_path / f"worker-{name}.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://{url}/ready", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline, "worker did not become ready"
                time.sleep(0.05)
        yield urls[0], urls[1]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


@pytest.mark.anyio
async def test_revocation_on_worker_b_closes_the_socket_on_worker_a_within_1s(
    workers: tuple[str, str], record_property: Any
) -> None:
    """Family revoked via worker B: worker A closes that socket with 4401 in <= 1 s, no other."""
    worker_a, worker_b = workers
    async with (
        connect(f"ws://{worker_a}/ws", subprotocols=bearer("u", "fam-1")) as revoked,
        connect(f"ws://{worker_a}/ws", subprotocols=bearer("u", "fam-2")) as other_family,
        httpx.AsyncClient(base_url=f"http://{worker_b}") as b,
    ):
        await echo(revoked)
        await echo(other_family)
        started = time.perf_counter()
        response = await b.post("/revoke", json={"user_id": "u", "session_id": "fam-1"})
        assert response.status_code == 204
        assert await closed(revoked) == (4401, "revoked")
        elapsed = time.perf_counter() - started
        record_property("revoked_socket_closed_after_s", round(elapsed, 4))
        assert elapsed <= 1.0, f"closed after {elapsed:.3f} s"
        assert (await echo(other_family))["user"] == "u"

        started = time.perf_counter()
        await b.post("/revoke", json={"user_id": "u", "session_id": None})
        assert await closed(other_family) == (4401, "revoked")
        assert time.perf_counter() - started <= 1.0
    async with httpx.AsyncClient(base_url=f"http://{worker_a}") as a:
        assert (await a.get("/sockets", params={"user": "u"})).json() == {"count": 0}
