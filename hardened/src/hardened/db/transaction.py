"""Transactions that survive contention: retries, timeouts, advisory locks.

Why: under concurrency PostgreSQL aborts a SERIALIZABLE transaction that
would break serializability (SQLSTATE ``40001``) and one side of a deadlock
(``40P01``); SQLite refuses a writer with "database is locked". Those are
normal outcomes, not bugs, and the fix is always the same: roll back and run
the whole transaction again. `run_transaction` does that with exponential
backoff and full jitter, a fresh session per attempt, and a per-transaction
``statement_timeout`` so one slow query cannot hold a connection forever.

Outcomes a client sees (decided here, once):

* retries exhausted → `Conflict` ``409 conflict.retry_exhausted`` with
  ``Retry-After: 1``: the request was valid and lost a race several times;
  retrying it later is correct, and it is not the database being down;
* the connection lost before COMMIT (a backend killed, a network cut) is
  retried the same way on a fresh session: nothing committed, so running
  ``fn`` again is exactly as safe as after a deadlock. Lost on every attempt,
  or lost *during* COMMIT (it may have committed, so it is never re-run), it
  is `ConnectionLost` ``503 db.connection_lost``;
* statement timeout (``57014``), pool exhausted, database refusing or
  unreachable → the `hardened.db.unavailable_error` 503 (``db.statement_timeout``,
  ``db.pool_exhausted``, ``db.unavailable``), raised at once: waiting longer
  inside the request would only hold its connection slot;
* anything else propagates unchanged (and is not retried).

``fn`` runs once per attempt, so everything it does outside the database must
be safe to repeat. It should return plain values (or use a sessionmaker with
``expire_on_commit=False``): the session is closed when it returns.

`advisory_lock` serialises work keyed by ``(namespace, key)`` ("enqueue this
campaign once") with a PostgreSQL transaction-scoped advisory lock, released
by commit or rollback, never leaked by a crashed process. SQLite has a single
writer: `sqlite_immediate_transactions` installs SQLAlchemy's documented
pysqlite/aiosqlite recipe so that every transaction starts with ``BEGIN
IMMEDIATE`` and holds the database write lock from its first statement; on
such an engine `advisory_lock` is a checked no-op (all transactions are
already serialised, which is stricter than one lock per key). Configure the
engine before its first connection, and give it a busy timeout long enough
for the queue of writers (``connect_args={"timeout": 30}``; the default is
5 s). The recipe also makes SQLite savepoints real (legacy pysqlite emits
``SAVEPOINT`` outside any transaction, and its ``RELEASE`` then commits).

Savepoints need no wrapper: ``async with session.begin_nested():`` rolls back
just the block when it raises and keeps the outer transaction usable.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import BigInteger, Connection, Engine, bindparam, event, select, true
from sqlalchemy import func as sa_func
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from hardened.db._errors import sqlite_locked, sqlstate, unavailable_error, unavailable_reason
from hardened.errors import Conflict
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

__all__ = [
    "advisory_key",
    "advisory_lock",
    "conflict_error",
    "has_immediate_transactions",
    "require_immediate_transactions",
    "run_transaction",
    "sqlite_immediate_transactions",
    "transient_reason",
]

T = TypeVar("T")

_SQLSTATE_REASONS = {"40001": "serialization", "40P01": "deadlock"}

_RETRIES = counter(
    "db_transaction_retries_total",
    "Transactions rolled back and run again, by reason.",
    ["reason"],
)
_FAILURES = counter(
    "db_transaction_failures_total",
    "Transactions given up on: retry_exhausted, statement_timeout, connection_lost, or deadlock"
    " and serialization refused outside run_transaction (conflict_error).",
    ["reason"],
)
_LOCK_BUSY = counter(
    "db_advisory_lock_busy_total",
    "Advisory locks refused without waiting (lock.busy), by namespace.",
    ["namespace"],
)


def transient_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is worth retrying the whole transaction for, or None.

    ``"serialization"`` (40001), ``"deadlock"`` (40P01) or ``"locked"``
    (SQLite's busy database).
    """
    if not isinstance(exc, DBAPIError):
        return None
    reason = _SQLSTATE_REASONS.get(sqlstate(exc) or "")
    if reason is not None:
        return reason
    return "locked" if sqlite_locked(exc) else None


def conflict_error(exc: BaseException) -> Conflict | None:
    """A translator: a serialization failure or deadlock outside `run_transaction` is a 409.

    Nothing was committed and the client may retry at once, so it gets ``db.conflict``
    with ``Retry-After: 1`` instead of a 500. Plug it in beside `unavailable_error`
    (e.g. ``ErrorBoundaryMiddleware(translate=...)``); SQLite's busy database stays
    `unavailable_error`'s 503. Work that can simply run again belongs in
    `run_transaction`, which retries these itself.
    """
    reason = transient_reason(exc)
    if reason not in _SQLSTATE_REASONS.values():
        return None
    _FAILURES.labels(reason=reason).inc()
    return Conflict(
        "The operation conflicted with concurrent changes; retry the request.",
        code="db.conflict",
        context={"reason": reason},
        headers={"retry-after": "1"},
    )


def _backoff(attempt: int, base_delay: float, max_delay: float) -> float:
    # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^n)].
    return random.uniform(0.0, min(max_delay, base_delay * 2**attempt))  # noqa: S311 - jitter, not secrecy


async def _attempt(
    sessions: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    statement_timeout: float | None,
    isolation_level: str | None,
) -> T:
    async with sessions() as session:
        dialect = session.get_bind().dialect.name
        committing = False
        try:
            async with session.begin():
                if isolation_level is not None and dialect != "sqlite":
                    # SQLite is serializable already; changing its level would
                    # also undo the BEGIN IMMEDIATE recipe on that connection.
                    await session.connection(execution_options={"isolation_level": isolation_level})
                if statement_timeout is not None and dialect == "postgresql":
                    ms = str(max(1, round(statement_timeout * 1000)))
                    await session.execute(
                        select(sa_func.set_config("statement_timeout", ms, true()))
                    )
                result = await fn(session)
                await session.flush()  # so that only COMMIT itself runs past this point
                committing = True
        except SQLAlchemyError as exc:
            if committing and unavailable_reason(exc) == "connection_lost":
                # The server may have committed before the connection went: never re-run.
                _FAILURES.labels(reason="connection_lost").inc()
                raise _unavailable(exc, {"commit": "unknown"}) from exc
            raise
        return result


def _unavailable(exc: SQLAlchemyError, context: dict[str, Any]) -> Exception:
    """The 503 for ``exc``, which the caller already knows to be unavailability."""
    return unavailable_error(exc, context=context) or exc


async def run_transaction(
    sessions: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    *,
    retries: int = 5,
    base_delay: float = 0.02,
    max_delay: float = 1.0,
    statement_timeout: float | None = None,
    isolation_level: str | None = None,
) -> T:
    """Run ``fn`` in a fresh transaction, retrying transient conflicts.

    ``sessions`` is an `async_sessionmaker` (or any factory of sessions).
    Each attempt opens a session, begins, sets ``statement_timeout`` (seconds,
    PostgreSQL only, scoped to the transaction) and ``isolation_level`` (not on
    SQLite), awaits ``fn(session)`` and commits. Serialization failures,
    deadlocks, SQLite "database is locked" and a connection lost before COMMIT
    roll back and retry after a jittered exponential delay, up to ``retries``
    more attempts; then `Conflict` ``conflict.retry_exhausted`` (a lost
    connection: `ConnectionLost` ``db.connection_lost``). A connection lost in
    COMMIT is not retried (``db.connection_lost``); other database
    unavailability (statement timeout, pool exhausted, refused) raises its
    `hardened.db.unavailable_error` 503 at once. Other errors propagate.
    """
    if retries < 0:
        msg = "retries must be >= 0"
        raise ValueError(msg)
    attempt = 0
    while True:
        try:
            return await _attempt(sessions, fn, statement_timeout, isolation_level)
        except SQLAlchemyError as exc:
            unavailable = unavailable_reason(exc)
            reason = transient_reason(exc)
            if reason is None and unavailable == "connection_lost":
                reason = "disconnect"  # before COMMIT (_attempt raised otherwise)
            if reason is None:
                if unavailable is None:
                    raise
                context: dict[str, Any] = {}
                if unavailable == "statement_timeout":
                    _FAILURES.labels(reason="statement_timeout").inc()
                    context["statement_timeout"] = statement_timeout
                raise _unavailable(exc, context) from exc
            if attempt >= retries and reason == "disconnect":
                _FAILURES.labels(reason="connection_lost").inc()
                raise _unavailable(exc, {"attempts": attempt + 1}) from exc
            if attempt >= retries:
                _FAILURES.labels(reason="retry_exhausted").inc()
                raise Conflict(
                    "The operation conflicted with concurrent changes; retry the request.",
                    code="conflict.retry_exhausted",
                    context={"reason": reason, "attempts": attempt + 1},
                    headers={"retry-after": "1"},
                ) from exc
            _RETRIES.labels(reason=reason).inc()
            attempt += 1
            await asyncio.sleep(_backoff(attempt, base_delay, max_delay))


# --- advisory locks -------------------------------------------------------------------


def advisory_key(namespace: str, key: str | int | uuid.UUID) -> int:
    """The signed 64-bit lock id for ``(namespace, key)``, stable across processes.

    BLAKE2b over length-prefixed, type-tagged parts: ``("a", 1)`` and
    ``("a", "1")`` are different locks, and no namespace can forge another's.
    """
    if isinstance(key, uuid.UUID):
        tag, raw = b"u", key.bytes
    elif isinstance(key, int):
        tag, raw = b"i", str(key).encode()
    else:
        tag, raw = b"s", key.encode()
    ns = namespace.encode()
    digest = hashlib.blake2b(digest_size=8, person=b"hardened.lock")
    for part in (ns, tag + raw):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return int.from_bytes(digest.digest(), "big", signed=True)


@asynccontextmanager
async def advisory_lock(
    session: AsyncSession,
    namespace: str,
    key: str | int | uuid.UUID,
    *,
    wait: bool = True,
) -> AsyncIterator[int]:
    """Hold the lock on ``(namespace, key)`` until the session's transaction ends.

    PostgreSQL: ``pg_advisory_xact_lock`` (or ``pg_try_advisory_xact_lock``
    with ``wait=False``, raising `Conflict` ``lock.busy`` when another
    transaction holds it). The lock is released by commit or rollback, not by
    leaving the block. SQLite: requires `sqlite_immediate_transactions` on the
    engine (checked), where the transaction already holds the only write lock.
    Yields the numeric lock id. Must be called inside ``session.begin()``.
    """
    if not session.in_transaction():
        msg = "advisory_lock() must be used inside a transaction (session.begin())"
        raise RuntimeError(msg)
    conn = await session.connection()  # forces BEGIN, so the lock exists from here on
    lock_id = advisory_key(namespace, key)
    dialect = conn.dialect.name
    if dialect == "postgresql":
        param = bindparam("lock_id", lock_id, type_=BigInteger)
        if wait:
            await conn.execute(select(sa_func.pg_advisory_xact_lock(param)))
        elif not (await conn.execute(select(sa_func.pg_try_advisory_xact_lock(param)))).scalar():
            _LOCK_BUSY.labels(namespace=namespace).inc()
            raise Conflict(
                "This operation is already in progress; try again shortly.",
                code="lock.busy",
                context={"namespace": namespace},
            )
    elif dialect == "sqlite":
        require_immediate_transactions(conn.sync_engine, "advisory_lock()")
    else:
        msg = f"advisory_lock() is not implemented for {dialect}"
        raise NotImplementedError(msg)
    yield lock_id


# --- SQLite: one writer, locked from BEGIN --------------------------------------------


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Stop pysqlite from emitting its own (deferred, DML-only) BEGIN.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    # Take the write lock now; waiting here honours the busy timeout, whereas
    # upgrading a deferred reader to a writer fails with "database is locked".
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_immediate_transactions(engine: AsyncEngine) -> None:
    """Make every transaction on a SQLite ``engine`` start with ``BEGIN IMMEDIATE``.

    SQLAlchemy's documented recipe for aiosqlite (``connect``: driver
    ``isolation_level = None``; ``begin``: emit ``BEGIN IMMEDIATE``). Call it
    right after `create_async_engine`, before the first connection; calling it
    again is harmless. Not compatible with ``isolation_level="AUTOCOMMIT"``
    engines.
    """
    sync = engine.sync_engine
    if sync.dialect.name != "sqlite":
        msg = f"sqlite_immediate_transactions() needs a SQLite engine, not {sync.dialect.name}"
        raise ValueError(msg)
    if has_immediate_transactions(sync):
        return
    pool: Any = sync.pool
    if getattr(pool, "checkedin", lambda: 0)() or getattr(pool, "checkedout", lambda: 0)():
        msg = "configure sqlite_immediate_transactions() before the engine's first connection"
        raise RuntimeError(msg)
    event.listen(sync, "connect", _sqlite_connect)
    event.listen(sync, "begin", _sqlite_begin)


def has_immediate_transactions(engine: AsyncEngine | Engine | Connection) -> bool:
    """Whether `sqlite_immediate_transactions` is installed on ``engine``."""
    if isinstance(engine, Connection):
        engine = engine.engine
    elif not isinstance(engine, Engine):
        engine = engine.sync_engine
    return (
        _sqlite_begin in engine.dispatch.begin and _sqlite_connect in engine.pool.dispatch.connect
    )


def require_immediate_transactions(
    bind: AsyncEngine | Engine | Connection,
    what: str,
    *,
    why: str = "without BEGIN IMMEDIATE a transaction does not hold the write lock",
) -> None:
    """Refuse (`RuntimeError`) a SQLite ``bind`` without `sqlite_immediate_transactions`.

    The one check behind every feature that relies on SQLite's write lock;
    ``what`` names the feature and ``why`` the failure it would otherwise hit.
    """
    if bind.dialect.name == "sqlite" and not has_immediate_transactions(bind):
        msg = f"{what} on SQLite needs sqlite_immediate_transactions(engine): {why}"
        raise RuntimeError(msg)
