"""`SqlBackend`: idempotency records in PostgreSQL or SQLite, in your transaction.

Why a SQL backend: with Redis the business effect (an order row, a debit) and
the idempotency record live in two systems, so a crash between them leaves an
effect without its record or the reverse. Here the key row sits in the
service's own database: `SqlBackend.complete_in` writes the result inside the
caller's transaction, fenced by the lease token, so the effect and the record
commit together or not at all. The fenced ``UPDATE`` locks the key row (as
``SELECT … FOR UPDATE`` would) until that transaction ends, so a takeover
waits for it; a stale holder (its lease taken over) matches no row, gets
`LeaseLost`, and its whole transaction rolls back::

    claim = await backend.claim(key, fp, lease=30, retention=86400)
    assert isinstance(claim, Claimed)  # (or Completed → replay, InFlight → 409…)
    async with sessions() as session, session.begin():
        session.add(Order(...))                       # the business effect
        await backend.complete_in(session, key, claim.token, encoded, retention=86400)
    # committed: the order and its record; raised: neither

The table is the service's: `idempotency_table` adds it to your ``MetaData``
(and so to your migrations); `SqlBackend.purge_expired` is the periodic
cleanup. The contract (see `_contracts`) holds exactly as on Redis: tokens are
``max(last + 1, now in ms)``, a lapsed lease hands its checkpoint to the next
claim, a released checkpoint moves the token on.

Clocks: PostgreSQL judges leases by ``statement_timestamp()`` (one instant per
statement, also inside a long transaction); SQLite has no server, so the
backend uses this process's UTC clock there, which is right for the one host
a SQLite file lives on. Round trips on PostgreSQL: a claim is one statement
(an upsert in a CTE plus a read of the existing row) in autocommit mode; only
a claim that raced a concurrent commit runs it again. Heartbeat, checkpoint
and complete are one fenced ``UPDATE`` each (``WHERE key AND token AND state =
'running'``); release is at most two statements.

Both dialects need ``INSERT … ON CONFLICT … RETURNING`` (PostgreSQL ≥ 9.5,
SQLite ≥ 3.35). On SQLite, configure the engine with
`hardened.db.sqlite_immediate_transactions` when other writers share it.

Recovery points for multi-phase operations (a provider call between
database phases) are built on this in `_phases` (`run_phases`).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from hardened._extras import missing_extra

try:
    from sqlalchemy import (
        BigInteger,
        CheckConstraint,
        Column,
        DateTime,
        Index,
        Interval,
        LargeBinary,
        String,
        Table,
        Text,
        and_,
        case,
        delete,
        extract,
        func,
        literal,
        null,
        or_,
        select,
        true,
        update,
    )
    from sqlalchemy import cast as sql_cast
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import async_sessionmaker
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.idempotency.SqlBackend", "postgres", "sqlite") from exc


from hardened.errors import StoreUnavailable
from hardened.idempotency._contracts import Claim, Claimed, Completed, InFlight, Mismatch
from hardened.idempotency._errors import LeaseLost
from hardened.idempotency._keys import key_hash_for_logs
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from sqlalchemy import ColumnElement, CursorResult, Executable, MetaData, Row
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

__all__ = ["SqlBackend", "idempotency_table"]

_RUNNING, _DONE = "running", "done"
_CLAIM_ATTEMPTS = 5
_ERRORS = counter("store_errors_total", "Store operations that failed", ["backend", "operation"])

P = ParamSpec("P")
R = TypeVar("R")


def _store_errors(
    operation: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Database failures of a contract call become `StoreUnavailable`, as on Redis.

    Callers (the middleware's fail-closed 503, heartbeats, the guard) handle one
    error type whatever the backend. The ``*_in`` methods are left alone: they run
    in the caller's transaction, whose retry logic must see the original error.
    """

    def wrap(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except SQLAlchemyError as exc:
                _ERRORS.labels("sql", operation).inc()
                context = {"backend": "sql", "operation": operation, "error": type(exc).__name__}
                raise StoreUnavailable(context=context) from exc

        return run

    return wrap


def idempotency_table(metadata: MetaData, name: str = "idempotency_keys") -> Table:
    """The idempotency record table, added to ``metadata`` (so to your migrations).

    ``key`` is already scoped and hashed; ``expires_at`` (indexed, for
    `SqlBackend.purge_expired`) is when the record counts as absent: the
    retention after completion, or lease end plus retention while running.
    """
    return Table(
        name,
        metadata,
        Column("key", Text, primary_key=True),
        Column("fingerprint", LargeBinary, nullable=False),
        Column("state", String(8), nullable=False),
        Column("token", BigInteger, nullable=False),
        Column("lease_until", DateTime(timezone=True), nullable=True),
        Column("phase", Text, nullable=True),
        Column("data", LargeBinary, nullable=True),
        Column("result", LargeBinary, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        CheckConstraint("state IN ('running', 'done')", name=f"ck_{name}_state"),
        Index(f"ix_{name}_expires_at", "expires_at"),
    )


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time the backend writes is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Clock:
    """SQL for "now" and "now + seconds": the server's clock, or ours on SQLite."""

    __slots__ = ("_postgres", "_wall", "now")

    def __init__(self, postgres: bool) -> None:
        self._postgres = postgres
        self._wall = datetime.now(UTC)
        self.now: ColumnElement[datetime] = (
            func.statement_timestamp(type_=DateTime(timezone=True))
            if postgres
            else literal(self._wall, DateTime(timezone=True))
        )

    def after(self, seconds: float) -> ColumnElement[datetime]:
        if self._postgres:
            return self.now + literal(timedelta(seconds=seconds), Interval())
        return literal(self._wall + timedelta(seconds=seconds), DateTime(timezone=True))

    def wall_after(self, seconds: float) -> datetime:
        return self._wall + timedelta(seconds=seconds)

    def millis(self) -> ColumnElement[int]:
        if self._postgres:
            return sql_cast(func.floor(extract("epoch", self.now) * 1000), BigInteger)
        return literal(int(self._wall.timestamp() * 1000), BigInteger)

    def greatest(self, a: ColumnElement[int], b: ColumnElement[int]) -> ColumnElement[int]:
        return func.greatest(a, b) if self._postgres else func.max(a, b)


class SqlBackend:
    """`IdempotencyBackend` on a SQL table, plus writes inside the caller's transaction.

    Give it its own small engine on the service's database (e.g. ``pool_size=2,
    max_overflow=2`` and a short ``pool_timeout``) rather than the business
    engine: when the business pool is exhausted, which is when handlers fail
    and time out, claims, heartbeats and releases still get a connection, so a
    5xx frees its key and a slow request keeps its lease. Nothing here needs
    the business engine: ``complete_in``/``checkpoint_in`` write through the
    session or connection they are given, and only `run_phases` defaults to
    ``sessions`` on this engine (pass it the business sessions instead).
    """

    __slots__ = ("_auto", "_engine", "_postgres", "_sessions", "table")

    def __init__(self, engine: AsyncEngine, table: Table) -> None:
        dialect = engine.dialect.name
        if dialect not in {"postgresql", "sqlite"}:
            msg = f"SqlBackend supports PostgreSQL and SQLite, not {dialect}"
            raise ValueError(msg)
        self._engine = engine
        self._postgres = dialect == "postgresql"
        # One statement per operation on PostgreSQL: no BEGIN/COMMIT round trips.
        self._auto = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if self._postgres else engine
        )
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.table = table

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """Sessions on the backend's engine (what `run_phases` uses by default)."""
        return self._sessions

    def _clock(self) -> _Clock:
        return _Clock(self._postgres)

    def _insert(self) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(self.table)

    def _held(self, key: str, token: int) -> ColumnElement[bool]:
        t = self.table.c
        return and_(t.key == key, t.token == token, t.state == _RUNNING)

    async def _rowcount(self, statement: Executable) -> int:
        async with self._auto.begin() as conn:
            return cast("CursorResult[Any]", await conn.execute(statement)).rowcount

    # -- claim -------------------------------------------------------------------------

    @_store_errors("claim")
    async def claim(self, key: str, fingerprint: bytes, *, lease: float, retention: float) -> Claim:
        for _ in range(_CLAIM_ATTEMPTS):
            clock = self._clock()
            upsert = self._claim_upsert(clock, key, fingerprint, lease, retention)
            if self._postgres:
                answer = await self._claim_postgres(clock, upsert, key, fingerprint)
            else:
                answer = await self._claim_sqlite(clock, upsert, key, fingerprint)
            if answer is not None:
                return answer
        # Each attempt lost a race with another commit on this key: it is busy.
        return InFlight(min(lease, 1.0))

    def _claim_upsert(
        self, clock: _Clock, key: str, fingerprint: bytes, lease: float, retention: float
    ) -> Any:
        t = self.table.c
        ins = self._insert().values(
            key=key,
            fingerprint=fingerprint,
            state=_RUNNING,
            token=clock.millis(),
            lease_until=clock.after(lease),
            created_at=clock.now,
            expires_at=clock.after(lease + retention),
        )
        new = ins.excluded
        gone = t.expires_at <= clock.now  # past retention: absent, whatever it holds
        lapsed = and_(
            t.state == _RUNNING, t.lease_until <= clock.now, t.fingerprint == new.fingerprint
        )
        return ins.on_conflict_do_update(
            index_elements=[t.key],
            set_={
                "fingerprint": new.fingerprint,
                "state": _RUNNING,
                "token": clock.greatest(t.token + 1, clock.millis()),
                "lease_until": new.lease_until,
                "expires_at": new.expires_at,
                "phase": case((gone, null()), else_=t.phase),
                "data": case((gone, null()), else_=t.data),
                "result": null(),
                "created_at": case((gone, new.created_at), else_=t.created_at),
            },
            where=or_(gone, lapsed),
        ).returning(t.token, t.phase, t.data)

    def _existing(self, clock: _Clock, fingerprint: bytes) -> list[ColumnElement[Any]]:
        t = self.table.c
        same = (t.fingerprint == fingerprint).label("same")
        return [t.state, same, t.result, t.lease_until, t.expires_at, clock.now.label("now")]

    async def _claim_postgres(
        self, clock: _Clock, upsert: Any, key: str, fingerprint: bytes
    ) -> Claim | None:
        # One statement: the upsert, and (when it claimed nothing) the row as it
        # stands in this statement's snapshot. A row committed after the snapshot
        # is invisible to the read although the upsert saw it: then run again.
        t = self.table
        won = upsert.cte("won")
        one = select(literal(1).label("one")).subquery("one")
        statement = select(
            won.c.token, won.c.phase, won.c.data, *self._existing(clock, fingerprint)
        )
        statement = statement.select_from(
            one.outerjoin(won, true()).outerjoin(t, and_(t.c.key == key, won.c.token.is_(None)))
        )
        async with self._auto.connect() as conn:
            row = (await conn.execute(statement)).one()
        if row.token is not None:
            return _claimed(row.token, row.phase, row.data)
        return _judge(row)

    async def _claim_sqlite(
        self, clock: _Clock, upsert: Any, key: str, fingerprint: bytes
    ) -> Claim | None:
        t = self.table
        async with self._engine.begin() as conn:
            won = (await conn.execute(upsert)).first()
            if won is not None:
                return _claimed(won.token, won.phase, won.data)
            existing = select(*self._existing(clock, fingerprint)).where(t.c.key == key)
            row = (await conn.execute(existing)).first()
        return None if row is None else _judge(row)

    # -- fenced updates ----------------------------------------------------------------

    @_store_errors("heartbeat")
    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        t = self.table.c
        clock = self._clock()
        if self._postgres:
            # The record keeps its retention beyond the lease: expires_at - lease_until.
            extended = update(self.table).where(self._held(key, token))
            extended = extended.values(
                lease_until=clock.after(lease),
                expires_at=clock.after(lease) + (t.expires_at - t.lease_until),
            )
            return await self._rowcount(extended) == 1
        async with self._engine.begin() as conn:
            keep = await self._keep_sqlite(conn, key, token)
            if keep is None:
                return False
            extended = update(self.table).where(self._held(key, token))
            extended = extended.values(
                lease_until=clock.wall_after(lease), expires_at=clock.wall_after(lease) + keep
            )
            return cast("CursorResult[Any]", await conn.execute(extended)).rowcount == 1

    async def _keep_sqlite(self, conn: AsyncConnection, key: str, token: int) -> timedelta | None:
        t = self.table.c
        row = (
            await conn.execute(select(t.lease_until, t.expires_at).where(self._held(key, token)))
        ).first()
        if row is None:
            return None
        return _utc(row.expires_at) - _utc(row.lease_until)

    def _checkpoint_statement(self, key: str, token: int, phase: str, data: bytes) -> Executable:
        if not phase:
            msg = "phase must be a non-empty string"
            raise ValueError(msg)
        return update(self.table).where(self._held(key, token)).values(phase=phase, data=data)

    def _complete_statement(
        self, key: str, token: int, result: bytes, retention: float
    ) -> Executable:
        return (
            update(self.table)
            .where(self._held(key, token))
            .values(
                state=_DONE,
                result=result,
                lease_until=None,
                phase=None,
                data=None,
                expires_at=self._clock().after(retention),
            )
        )

    @_store_errors("checkpoint")
    async def checkpoint(self, key: str, token: int, phase: str, data: bytes) -> bool:
        return await self._rowcount(self._checkpoint_statement(key, token, phase, data)) == 1

    @_store_errors("complete")
    async def complete(self, key: str, token: int, result: bytes, *, retention: float) -> bool:
        return await self._rowcount(self._complete_statement(key, token, result, retention)) == 1

    @_store_errors("release")
    async def release(self, key: str, token: int) -> bool:
        t = self.table.c
        forget = delete(self.table).where(self._held(key, token), t.phase.is_(None))
        clock = self._clock()
        if self._postgres:
            # Each statement is fenced on its own, and only the holder changes phase.
            keep = update(self.table).where(self._held(key, token), t.phase.is_not(None))
            keep = keep.values(
                token=t.token + 1,
                lease_until=clock.now,
                expires_at=clock.now + (t.expires_at - t.lease_until),
            )
            # Most releases (HTTP 5xx, transient statuses) have no phase: try forget first.
            return await self._rowcount(forget) == 1 or await self._rowcount(keep) == 1
        async with self._engine.begin() as conn:
            kept = await self._keep_sqlite(conn, key, token)
            if kept is None:
                return False
            lapse = update(self.table).where(self._held(key, token), t.phase.is_not(None))
            lapse = lapse.values(
                token=t.token + 1, lease_until=clock.now, expires_at=clock.wall_after(0) + kept
            )
            for statement in (lapse, forget):
                if cast("CursorResult[Any]", await conn.execute(statement)).rowcount == 1:
                    return True
        return False

    # -- the transactional mode --------------------------------------------------------

    async def complete_in(
        self,
        db: AsyncSession | AsyncConnection,
        key: str,
        token: int,
        result: bytes,
        *,
        retention: float,
    ) -> None:
        """Store the result inside ``db``'s transaction, or raise `LeaseLost`.

        The fenced ``UPDATE`` locks the key row until that transaction ends (as
        ``SELECT … FOR UPDATE`` would), so a takeover waits for it; raising
        lets the transaction, and the business effect in it, roll back.
        Call it last in the transaction to hold that lock briefly.
        """
        await self._fenced_in(db, key, self._complete_statement(key, token, result, retention))

    async def checkpoint_in(
        self, db: AsyncSession | AsyncConnection, key: str, token: int, phase: str, data: bytes
    ) -> None:
        """Record a recovery point inside ``db``'s transaction, or raise `LeaseLost`."""
        await self._fenced_in(db, key, self._checkpoint_statement(key, token, phase, data))

    async def _fenced_in(
        self, db: AsyncSession | AsyncConnection, key: str, statement: Executable
    ) -> None:
        if cast("CursorResult[Any]", await db.execute(statement)).rowcount != 1:
            raise LeaseLost(
                "Another attempt took over this operation; this transaction must roll back.",
                context={"key_hash": key_hash_for_logs(key)},
            )

    @_store_errors("purge_expired")
    async def purge_expired(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` records past retention; returns how many (for a periodic job)."""
        t = self.table.c
        victims = select(t.key).where(t.expires_at <= self._clock().now).limit(limit)
        if self._postgres:
            victims = victims.with_for_update(skip_locked=True)
        return await self._rowcount(delete(self.table).where(t.key.in_(victims)))


def _claimed(token: int, phase: str | None, data: bytes | None) -> Claimed:
    if phase is None:
        return Claimed(int(token))
    return Claimed(int(token), phase, data or b"")


def _judge(row: Row[Any]) -> Claim | None:
    """What an existing row means to a claim that took nothing; None: look again."""
    now = _utc(row.now)
    if row.state is None or _utc(row.expires_at) <= now:
        return None  # absent now, but it was there when the upsert ran
    if not row.same:
        return Mismatch()
    if row.state == _DONE:
        return Completed(row.result or b"")
    left = (_utc(row.lease_until) - now).total_seconds()
    return InFlight(left) if left > 0 else None
