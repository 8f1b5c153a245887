"""A ``complete`` the backend could not answer: retried in the background, never a second run.

The backends are real (`StoreBackend` over `MemoryStore` with a hand-moved
clock, and over Redis; `SqlBackend` for `run_phases`) behind a wrapper whose
``complete`` fails a set number of times. Every try after the first waits for
the wrapper's ``gate``, so the test decides when the backend "comes back",
and the wrapper reports each heartbeat that renewed the lease, so "more than a
lease has passed while the completion was pending" is a condition waited for,
never a sleep raced against.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from idem_sql_support import DIALECTS, SqlEnv, sql_env
from prometheus_client import REGISTRY
from sqlalchemy import insert
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from hardened.errors import StoreUnavailable
from hardened.idempotency import (
    ExternalPhase,
    HttpIdempotencyConfig,
    IdempotencyConfig,
    IdempotencyInFlight,
    IdempotencyMiddleware,
    Idempotent,
    IdempotentRoute,
    LocalPhase,
    PhaseState,
    SqlBackend,
    idempotent,
    run_phases,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from sqlalchemy.ext.asyncio import AsyncSession

    from conftest import IdemBackend
    from hardened.idempotency import Claim, IdempotencyBackend

pytestmark = pytest.mark.anyio

SECRET = b"test-secret-0123456789abcdef0123"
LEASE = 1.0
BEAT = 0.1  # ten beats per lease: a busy machine can miss several without losing it
STORE_BACKENDS = pytest.mark.parametrize("idem_backend", ["memory", "redis"], indirect=True)


class Faults:
    """``complete`` fails ``failures`` times (tries after the first wait for ``gate``)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.gate = asyncio.Event()
        self.landed = asyncio.Event()
        self._beats = 0
        self._renewed = 0  # the latest beat (by start order) that renewed the lease
        self._beat = asyncio.Condition()

    async def complete(self, store: Callable[[], Awaitable[bool]]) -> bool:
        self.attempts += 1
        if self.attempts > 1:
            await self.gate.wait()
        if self.attempts <= self.failures:
            raise StoreUnavailable(context={"backend": "test"})
        stored = await store()
        self.landed.set()
        return stored

    async def heartbeat(self, beat: Callable[[], Awaitable[bool]]) -> bool:
        self._beats += 1
        seq = self._beats
        alive = await beat()
        if alive:
            async with self._beat:
                self._renewed = max(self._renewed, seq)
                self._beat.notify_all()
        return alive

    async def renewed(self) -> None:
        """Wait for a heartbeat sent after this call to renew the lease."""
        mark = self._beats

        async def wait() -> None:
            async with self._beat:
                await self._beat.wait_for(lambda: self._renewed > mark)

        await asyncio.wait_for(wait(), 30)

    async def outlive_the_lease(self, advance: Callable[[float], Awaitable[None]]) -> None:
        """Let 1.5 leases pass on the backend's clock, each half renewed by a heartbeat."""
        for _ in range(3):
            await advance(LEASE / 2)
            await self.renewed()


class FlakyComplete:
    """A real `IdempotencyBackend` whose ``complete`` fails as `Faults` says."""

    def __init__(self, inner: IdempotencyBackend, failures: int) -> None:
        self.inner = inner
        self.faults = Faults(failures)

    async def claim(self, key: str, fingerprint: bytes, *, lease: float, retention: float) -> Claim:
        return await self.inner.claim(key, fingerprint, lease=lease, retention=retention)

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        return await self.faults.heartbeat(lambda: self.inner.heartbeat(key, token, lease=lease))

    async def checkpoint(self, key: str, token: int, phase: str, data: bytes) -> bool:
        return await self.inner.checkpoint(key, token, phase, data)

    async def complete(self, key: str, token: int, result: bytes, *, retention: float) -> bool:
        return await self.faults.complete(
            lambda: self.inner.complete(key, token, result, retention=retention)
        )

    async def release(self, key: str, token: int) -> bool:
        return await self.inner.release(key, token)


def abandoned_total() -> float:
    return REGISTRY.get_sample_value("hardened_idempotency_complete_abandoned_total") or 0.0


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def logged(logs: list[dict[str, Any]], name: str) -> None:
    """Wait until ``name`` was logged (the background work it ends has finished)."""

    async def poll() -> None:
        while not events(logs, name):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 30)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


# -- the middleware --------------------------------------------------------------------------------


def shop(runs: Counter[str], backend: IdempotencyBackend, **config: Any) -> Any:
    async def orders(request: Request) -> Response:
        runs["orders"] += 1
        return JSONResponse({"order": runs["orders"], "id": uuid.uuid4().hex}, status_code=201)

    app = Starlette(routes=[Route("/orders", orders, methods=["POST"])])
    return IdempotencyMiddleware(
        app,
        backend=backend,
        secret=SECRET,
        rules=(IdempotentRoute("/orders"),),
        config=HttpIdempotencyConfig(lease=LEASE, heartbeat=BEAT, **config),
    )


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.example")


@STORE_BACKENDS
async def test_failed_complete_lands_later_and_the_handler_runs_once(
    idem_backend: IdemBackend, logs: list[dict[str, Any]]
) -> None:
    """A complete failing 3 times: the lease outlives itself, a retry gets 409, then the replay."""
    backend = FlakyComplete(idem_backend.backend, failures=3)
    runs: Counter[str] = Counter()
    headers = {"idempotency-key": str(uuid.uuid4())}
    async with client(shop(runs, backend)) as c:
        first = await asyncio.wait_for(c.post("/orders", json={}, headers=headers), 30)
        await backend.faults.outlive_the_lease(idem_backend.advance)
        busy = await c.post("/orders", json={}, headers=headers)
        backend.faults.gate.set()
        await asyncio.wait_for(backend.faults.landed.wait(), 30)
        replay = await c.post("/orders", json={}, headers=headers)
        await logged(logs, "idempotency.complete_retried")
    assert first.status_code == 201
    assert busy.status_code == 409
    assert busy.json()["code"] == "idempotency.in_flight"
    assert busy.headers["retry-after"] == "1"
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert runs == {"orders": 1}
    assert backend.faults.attempts == 4
    assert [e["log_level"] for e in events(logs, "idempotency.complete_failed")] == ["warning"]
    assert events(logs, "idempotency.complete_retried")[0]["attempts"] == 4


@STORE_BACKENDS
async def test_completion_given_up_after_complete_retry_for_lets_the_key_run_again(
    idem_backend: IdemBackend, logs: list[dict[str, Any]]
) -> None:
    """Past complete_retry_for the completion is abandoned (error, counted) and the lease lapses."""
    backend = FlakyComplete(idem_backend.backend, failures=10**9)
    runs: Counter[str] = Counter()
    headers = {"idempotency-key": str(uuid.uuid4())}
    before = abandoned_total()
    async with client(shop(runs, backend, complete_retry_for=0.2)) as c:
        first = await asyncio.wait_for(c.post("/orders", json={}, headers=headers), 30)
        busy = await c.post("/orders", json={}, headers=headers)
        backend.faults.gate.set()
        await logged(logs, "idempotency.complete_abandoned")
        await idem_backend.advance(2 * LEASE)  # nothing renews the lease any more
        again = await c.post("/orders", json={}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert busy.status_code == 409
    assert "idempotent-replayed" not in again.headers
    assert runs == {"orders": 2}  # the documented consequence of giving up
    (abandoned,) = events(logs, "idempotency.complete_abandoned")
    assert abandoned["log_level"] == "error"
    assert abandoned["attempts"] >= 2
    assert abandoned_total() == before + 1


def test_complete_retry_for_must_be_a_finite_non_negative_duration() -> None:
    """complete_retry_for below 0, infinite or NaN is refused when the config is built."""
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="complete_retry_for"):
            HttpIdempotencyConfig(complete_retry_for=bad)
        with pytest.raises(ValueError, match="complete_retry_for"):
            IdempotencyConfig(complete_retry_for=bad)
    assert HttpIdempotencyConfig().complete_retry_for == IdempotencyConfig().complete_retry_for


# -- Idempotent.operation() and @idempotent --------------------------------------------------------


@STORE_BACKENDS
async def test_operation_whose_complete_failed_is_in_flight_then_replayed(
    idem_backend: IdemBackend, logs: list[dict[str, Any]]
) -> None:
    """A failed op.complete() returns; a duplicate is in flight, then replays; the body ran once."""
    backend = FlakyComplete(idem_backend.backend, failures=3)
    idem = Idempotent(backend, IdempotencyConfig(lease=LEASE, heartbeat=BEAT))
    runs = 0

    @idempotent(idem, key=lambda order: f"activate:{order}")
    async def activate(order: str) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        return {"order": order, "run": runs}

    first = await asyncio.wait_for(activate("o1"), 30)
    await backend.faults.outlive_the_lease(idem_backend.advance)
    with pytest.raises(IdempotencyInFlight):
        await activate("o1")
    backend.faults.gate.set()
    await asyncio.wait_for(backend.faults.landed.wait(), 30)
    assert await activate("o1") == first == {"order": "o1", "run": 1}
    await logged(logs, "idempotency.complete_retried")
    assert runs == 1


@STORE_BACKENDS
async def test_operation_completion_given_up_lets_the_key_run_again(
    idem_backend: IdemBackend, logs: list[dict[str, Any]]
) -> None:
    """An abandoned operation completion is logged and counted; after the lease the key reruns."""
    backend = FlakyComplete(idem_backend.backend, failures=10**9)
    config = IdempotencyConfig(lease=LEASE, heartbeat=BEAT, complete_retry_for=0.2)
    idem = Idempotent(backend, config)
    before = abandoned_total()
    runs = 0

    async def once() -> bool:
        nonlocal runs
        async with idem.operation("job-1", b"fp") as op:
            if op.replayed:
                return True
            runs += 1
            await op.complete(b"done")
            assert op.result == b"done"
            return False

    assert await asyncio.wait_for(once(), 30) is False
    with pytest.raises(IdempotencyInFlight):
        await once()
    backend.faults.gate.set()
    await logged(logs, "idempotency.complete_abandoned")
    await idem_backend.advance(2 * LEASE)
    assert await once() is False
    assert runs == 2
    assert abandoned_total() == before + 1


# -- run_phases ------------------------------------------------------------------------------------


class FlakySqlBackend(SqlBackend):
    """A real `SqlBackend` whose ``complete`` fails as `Faults` says."""

    def __init__(self, env: SqlEnv, failures: int) -> None:
        super().__init__(env.engine, env.backend.table)
        self.faults = Faults(failures)

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        beat = super().heartbeat
        return await self.faults.heartbeat(lambda: beat(key, token, lease=lease))

    async def complete(self, key: str, token: int, result: bytes, *, retention: float) -> bool:
        store = super().complete
        return await self.faults.complete(lambda: store(key, token, result, retention=retention))


@pytest.fixture(params=DIALECTS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[SqlEnv]:
    """A SqlBackend and a business table, on each dialect."""
    async with sql_env(request, request.param) as value:
        yield value


async def test_run_phases_whose_final_record_failed_does_not_repeat_its_provider_call(
    env: SqlEnv, logs: list[dict[str, Any]]
) -> None:
    """The final record after an external phase fails: in flight, replayed, one provider call."""
    backend = FlakySqlBackend(env, failures=2)
    calls: Counter[str] = Counter()

    async def reserve(session: AsyncSession, state: PhaseState) -> PhaseState:
        calls["reserve"] += 1
        await session.execute(insert(env.effects).values(key="sim", phase="reserve"))
        return {**state, "reserved": True}

    async def activate(state: PhaseState) -> PhaseState:
        calls["activate"] += 1
        return {**state, "activated": calls["activate"]}

    phases = [LocalPhase("reserve", reserve), ExternalPhase("activate", activate)]

    async def run() -> PhaseState:
        return await run_phases(backend, "sim", b"fp", phases, lease=LEASE, retention=60.0)

    first = await asyncio.wait_for(run(), 30)
    await backend.faults.outlive_the_lease(asyncio.sleep)
    with pytest.raises(IdempotencyInFlight):
        await run()
    backend.faults.gate.set()
    await asyncio.wait_for(backend.faults.landed.wait(), 30)
    assert await run() == first == {"reserved": True, "activated": 1}
    await logged(logs, "idempotency.complete_retried")
    assert calls == {"reserve": 1, "activate": 1}
