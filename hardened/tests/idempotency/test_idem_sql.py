"""SqlBackend's transactional mode and recovery points, on PostgreSQL and SQLite.

The contract suite (``test_idem_contract.py``) covers claim/heartbeat/…; here:
the key row commits and rolls back with the business row, a stale holder's
business write is undone by `LeaseLost`, `run_phases` resumes after a crash
from its last recovery point, and a storm of duplicates runs each phase once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from idem_sql_support import DIALECTS, SqlEnv, sql_env
from sqlalchemy import event, insert

from hardened.idempotency import (
    Claimed,
    Completed,
    ExternalPhase,
    IdempotencyInFlight,
    IdempotencyKeyReused,
    InFlight,
    LeaseLost,
    LocalPhase,
    Phase,
    PhaseState,
    run_phases,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession

pytestmark = pytest.mark.anyio

KEEP = 60.0
FP = b"fingerprint"


class Boom(Exception):
    """A business failure after the record was written."""


class Crash(BaseException):
    """The process dies here: nothing after it runs, not even a release."""


@pytest.fixture(params=DIALECTS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[SqlEnv]:
    """A SqlBackend and a business table, on each dialect."""
    async with sql_env(request, request.param) as value:
        yield value


@pytest.fixture
async def pg_env(request: pytest.FixtureRequest) -> AsyncIterator[SqlEnv]:
    """A SqlBackend and a business table on PostgreSQL (for concurrency)."""
    async with sql_env(request, "postgres") as value:
        yield value


async def claimed(env: SqlEnv, key: str, *, lease: float = 30.0) -> Claimed:
    claim = await env.backend.claim(key, FP, lease=lease, retention=KEEP)
    assert isinstance(claim, Claimed), claim
    return claim


async def test_completion_commits_with_the_business_row(env: SqlEnv) -> None:
    """complete_in inside the business transaction: both rows commit, the key then replays."""
    first = await claimed(env, "k")
    async with env.backend.sessions() as session, session.begin():
        await session.execute(insert(env.effects).values(key="k", phase="order"))
        await env.backend.complete_in(session, "k", first.token, b"order-1", retention=KEEP)
    assert await env.effect_count() == 1
    assert await env.backend.claim("k", FP, lease=30.0, retention=KEEP) == Completed(b"order-1")


async def test_failure_after_complete_in_leaves_neither_row(env: SqlEnv) -> None:
    """An exception after complete_in rolls back the business row and the done record together."""
    first = await claimed(env, "k")

    async def order_then_fail() -> None:
        async with env.engine.begin() as conn:
            await conn.execute(insert(env.effects).values(key="k", phase="order"))
            await env.backend.complete_in(conn, "k", first.token, b"order-1", retention=KEEP)
            raise Boom

    with pytest.raises(Boom):
        await order_then_fail()
    assert await env.effect_count() == 0
    assert isinstance(await env.backend.claim("k", FP, lease=30.0, retention=KEEP), InFlight)
    assert await env.backend.complete("k", first.token, b"retried", retention=KEEP)


async def test_stale_holder_is_refused_and_its_business_write_undone(env: SqlEnv) -> None:
    """After a takeover the old holder's complete_in/checkpoint_in raise LeaseLost and roll back."""
    stale = await claimed(env, "k", lease=0.2)
    await asyncio.sleep(0.3)
    holder = await claimed(env, "k")

    async def stale_write(write: str) -> None:
        async with env.backend.sessions() as session, session.begin():
            await session.execute(insert(env.effects).values(key="k", phase="stale"))
            if write == "complete":
                await env.backend.complete_in(session, "k", stale.token, b"x", retention=KEEP)
            else:
                await env.backend.checkpoint_in(session, "k", stale.token, "p", b"x")

    for write in ("complete", "checkpoint"):
        with pytest.raises(LeaseLost):
            await stale_write(write)
    assert await env.effect_count() == 0
    async with env.backend.sessions() as session, session.begin():
        await session.execute(insert(env.effects).values(key="k", phase="holder"))
        await env.backend.complete_in(session, "k", holder.token, b"holder", retention=KEEP)
    assert await env.effect_count("holder") == 1
    assert await env.backend.claim("k", FP, lease=30.0, retention=KEEP) == Completed(b"holder")


class Scenario:
    """Four phases (SIM activation): reserve, activate (external), record, capture."""

    def __init__(self, env: SqlEnv, key: str) -> None:
        self.env, self.key = env, key
        self.calls: Counter[str] = Counter()
        self.crash_in: str | None = None
        self.fail_in: str | None = None
        self.provider_delay = 0.0
        self.crash_after: str | None = None

    def local(self, name: str) -> LocalPhase:
        async def run(session: AsyncSession, state: PhaseState) -> PhaseState:
            self.calls[name] += 1
            await session.execute(insert(self.env.effects).values(key=self.key, phase=name))
            self._maybe_fail(name)
            return {**state, name: len(state)}

        return LocalPhase(name, run)

    def external(self, name: str) -> ExternalPhase:
        async def run(state: PhaseState) -> PhaseState:
            self.calls[name] += 1  # the provider's own count, keyed by f"{self.key}:{name}"
            await asyncio.sleep(self.provider_delay)
            self._maybe_fail(name)
            return {**state, name: f"provider-{self.key}"}

        return ExternalPhase(name, run)

    def _maybe_fail(self, name: str) -> None:
        if self.crash_in == name:
            self.crash_in = None
            raise Crash
        if self.fail_in == name:
            self.fail_in = None
            raise Boom

    @property
    def phases(self) -> list[Phase]:
        return [
            self.local("reserve"),
            self.external("activate"),
            self.local("record"),
            self.local("capture"),
        ]

    async def run(
        self, *, lease: float = 30.0, fingerprint: bytes = FP, previous: tuple[bytes, ...] = ()
    ) -> PhaseState:
        return await run_phases(
            self.env.backend,
            self.key,
            fingerprint,
            self.phases,
            state={"msisdn": "+100"},
            lease=lease,
            retention=KEEP,
            on_recorded=self._recorded,
            previous_fingerprints=previous,
        )

    def _recorded(self, name: str) -> None:
        if self.crash_after == name:
            self.crash_after = None
            raise Crash


EXPECTED = {
    "msisdn": "+100",
    "reserve": 1,
    "activate": "provider-sim",
    "record": 3,
    "capture": 4,
}


async def test_phases_run_in_order_and_replay_the_final_state(env: SqlEnv) -> None:
    """Each phase runs once with the previous state; a second call returns the stored result."""
    sim = Scenario(env, "sim")
    assert await sim.run() == EXPECTED
    assert await sim.run() == EXPECTED
    assert sim.calls == Counter(reserve=1, activate=1, record=1, capture=1)
    assert await env.effect_count() == 3
    with pytest.raises(IdempotencyKeyReused):
        await sim.run(fingerprint=b"another payload")


async def test_a_record_under_a_previous_fingerprint_resumes_and_replays(env: SqlEnv) -> None:
    """After a secret rotation the old fingerprint, passed as previous, is the same request."""
    sim = Scenario(env, "sim")
    sim.fail_in = "record"
    with pytest.raises(Boom):
        await sim.run()  # under the old secret's fingerprint, stopped after "activate"
    with pytest.raises(IdempotencyKeyReused):
        await sim.run(fingerprint=b"new secret's fingerprint")
    assert await sim.run(fingerprint=b"new secret's fingerprint", previous=(FP,)) == EXPECTED
    assert await sim.run(fingerprint=b"new secret's fingerprint", previous=(FP,)) == EXPECTED
    assert sim.calls == Counter(reserve=1, activate=1, record=2, capture=1)


async def test_crash_resumes_after_the_last_recovery_point(env: SqlEnv) -> None:
    """A crash in phase 2 (no release) is retried after the lease: phase 1 is not run again."""
    sim = Scenario(env, "sim")
    sim.crash_in = "activate"
    with pytest.raises(Crash):
        await sim.run(lease=0.2)
    assert await env.effect_count() == 1
    await asyncio.sleep(0.3)  # the crashed holder's lease lapses
    assert await sim.run(lease=0.2) == EXPECTED
    assert sim.calls == Counter(reserve=1, activate=2, record=1, capture=1)
    assert {p: await env.effect_count(p) for p in ("reserve", "record", "capture")} == {
        "reserve": 1,
        "record": 1,
        "capture": 1,
    }


@pytest.mark.parametrize("phase", ["reserve", "activate", "record", "capture"])
async def test_on_recorded_fires_when_the_phase_is_durable(env: SqlEnv, phase: str) -> None:
    """A crash in on_recorded(X) never runs X again: X's result was durable when it fired."""
    sim = Scenario(env, "sim")
    sim.crash_after = phase
    with pytest.raises(Crash):
        await sim.run(lease=0.2)
    order = ["reserve", "activate", "record", "capture"]
    done = order[: order.index(phase) + 1]
    assert sim.calls == Counter(done)  # nothing after X started
    await asyncio.sleep(0.3)  # the crashed holder's lease lapses
    assert await sim.run(lease=0.2) == EXPECTED
    assert sim.calls == Counter(order)  # each phase ran exactly once in all
    assert await env.effect_count() == 3


async def test_crash_in_a_local_phase_rolls_it_back_and_reruns_it(env: SqlEnv) -> None:
    """A crash inside a local phase leaves nothing of it; the retry runs it once more, fully."""
    sim = Scenario(env, "sim")
    sim.crash_in = "capture"
    with pytest.raises(Crash):
        await sim.run(lease=0.2)
    assert await env.effect_count("capture") == 0
    await asyncio.sleep(0.3)
    assert await sim.run(lease=0.2) == EXPECTED
    assert sim.calls == Counter(reserve=1, activate=1, record=1, capture=2)
    assert await env.effect_count() == 3


async def test_error_releases_and_the_retry_resumes_at_once(env: SqlEnv) -> None:
    """An exception releases the key keeping the checkpoint: an immediate retry resumes there."""
    sim = Scenario(env, "sim")
    sim.fail_in = "record"
    with pytest.raises(Boom):
        await sim.run()
    assert await env.effect_count("record") == 0
    assert await sim.run() == EXPECTED
    assert sim.calls == Counter(reserve=1, activate=1, record=2, capture=1)


async def test_cancelled_run_releases_and_the_retry_resumes_at_once(env: SqlEnv) -> None:
    """A cancelled run (a timeout, a client gone) releases: the retry resumes at its phase now."""
    sim = Scenario(env, "sim")
    sim.provider_delay = 30.0
    first = asyncio.create_task(sim.run())
    while sim.calls["activate"] == 0:
        await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    sim.provider_delay = 0.0
    assert await sim.run() == EXPECTED
    assert sim.calls == Counter(reserve=1, activate=2, record=1, capture=1)


async def test_heartbeat_keeps_a_phase_slower_than_the_lease(pg_env: SqlEnv) -> None:
    """A provider call longer than the lease keeps the key (heartbeat): duplicates stay out."""
    sim = Scenario(pg_env, "sim")
    sim.provider_delay = 1.0
    first = asyncio.create_task(sim.run(lease=0.6))
    while sim.calls["activate"] == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.8)  # past the first lease: only heartbeats keep it
    with pytest.raises(IdempotencyInFlight):
        await Scenario(pg_env, "sim").run(lease=0.6)
    assert await first == EXPECTED
    assert sim.calls == Counter(reserve=1, activate=1, record=1, capture=1)


async def test_in_flight_run_refuses_a_duplicate(env: SqlEnv) -> None:
    """While a run holds the key, a duplicate gets IdempotencyInFlight with a Retry-After."""
    sim = Scenario(env, "sim")
    sim.provider_delay = 0.5
    first = asyncio.create_task(sim.run())
    while sim.calls["activate"] == 0:
        await asyncio.sleep(0.01)
    with pytest.raises(IdempotencyInFlight) as refused:
        await Scenario(env, "sim").run()
    assert refused.value.retry_after >= 1
    assert await first == EXPECTED


async def test_storm_of_duplicates_runs_each_phase_once(pg_env: SqlEnv) -> None:
    """20 concurrent run_phases with one key on PostgreSQL: every phase's effect happens once."""
    sim = Scenario(pg_env, "sim")
    sim.provider_delay = 0.05
    outcomes = await asyncio.gather(*(sim.run() for _ in range(20)), return_exceptions=True)
    for outcome in outcomes:
        assert outcome == EXPECTED or isinstance(outcome, IdempotencyInFlight), outcome
    assert sim.calls == Counter(reserve=1, activate=1, record=1, capture=1)
    assert await pg_env.effect_count() == 3
    assert await sim.run() == EXPECTED


async def test_claim_and_replay_are_one_statement_on_postgres(pg_env: SqlEnv) -> None:
    """On PostgreSQL a first claim, an in-flight claim and a replay each send one statement."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(pg_env.engine.sync_engine, "before_cursor_execute", record)
    backend = pg_env.backend
    first = await claimed(pg_env, "k")
    assert isinstance(await backend.claim("k", FP, lease=30.0, retention=KEEP), InFlight)
    assert await backend.complete("k", first.token, b"r", retention=KEEP)
    assert await backend.claim("k", FP, lease=30.0, retention=KEEP) == Completed(b"r")
    assert len(statements) == 4, statements


async def test_purge_removes_only_records_past_retention(env: SqlEnv) -> None:
    """purge_expired deletes done records past retention and keeps live ones."""
    for key, retention in (("old", 0.1), ("kept", KEEP)):
        claim = await claimed(env, key)
        assert await env.backend.complete(key, claim.token, key.encode(), retention=retention)
    await asyncio.sleep(0.2)
    assert await env.backend.purge_expired() == 1
    assert await env.backend.purge_expired() == 0
    kept = await env.backend.claim("kept", FP, lease=30.0, retention=KEEP)
    assert kept == Completed(b"kept")


async def test_database_down_is_store_unavailable_and_a_503() -> None:
    """An unreachable database is StoreUnavailable (as on Redis): the middleware fails closed."""
    import httpx
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import create_async_engine

    from hardened.errors import StoreUnavailable
    from hardened.idempotency import (
        IdempotencyMiddleware,
        IdempotentRoute,
        SqlBackend,
        idempotency_table,
    )

    engine = create_async_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    backend = SqlBackend(engine, idempotency_table(MetaData()))
    ran = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guarded = IdempotencyMiddleware(
        app, backend=backend, secret=b"s" * 32, rules=[IdempotentRoute("/pay")]
    )
    try:
        with pytest.raises(StoreUnavailable):
            await backend.claim("k", b"fp", lease=1.0, retention=60.0)
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            resp = await client.post("/pay", content=b"{}", headers={"idempotency-key": "k1"})
    finally:
        await engine.dispose()
    assert resp.status_code == 503
    assert resp.json()["code"] == "store.unavailable"
    assert ran == []


async def test_backend_on_its_own_engine_works_while_the_business_pool_is_exhausted(
    pg_env: SqlEnv,
) -> None:
    """On its own small engine the backend claims and releases with the business pool exhausted."""
    from sqlalchemy import exc, select
    from sqlalchemy.ext.asyncio import create_async_engine

    from hardened.idempotency import SqlBackend

    url = pg_env.engine.url
    business = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    records = create_async_engine(url, pool_size=1, max_overflow=1)
    backend = SqlBackend(records, pg_env.backend.table)
    try:
        async with business.connect() as held:  # the business pool's only connection
            with pytest.raises(exc.TimeoutError):
                async with business.connect():
                    pass
            first = await backend.claim("own-pool", FP, lease=30.0, retention=KEEP)
            assert isinstance(first, Claimed)
            assert await backend.release("own-pool", first.token)
            again = await backend.claim("own-pool", FP, lease=30.0, retention=KEEP)
            assert isinstance(again, Claimed)
            async with held.begin():
                await held.execute(insert(pg_env.effects).values(key="own-pool", phase="order"))
                await backend.complete_in(held, "own-pool", again.token, b"r", retention=KEEP)
            count = await held.execute(select(pg_env.effects.c.id))
            assert len(count.all()) == 1
        replay = await backend.claim("own-pool", FP, lease=30.0, retention=KEEP)
        assert replay == Completed(b"r")
    finally:
        await business.dispose()
        await records.dispose()
