"""Database failures a client can do nothing about, as 503 problems instead of 500s.

Why: a storm that exhausts SQLAlchemy's pool, a PostgreSQL out of connection slots or a
backend killed under a request all raised driver exceptions nothing mapped, so clients got
500 ("your bug") for what is "busy, retry". `unavailable_error` is the one place that maps
them; it has the shape of an error boundary's ``translate=`` callable and returns None for
everything else (integrity and programming errors keep their meaning):

* pool checkout timed out (QueuePool limit reached): `PoolExhausted`
  ``db.pool_exhausted`` (metric reason ``pool_exhausted``);
* refused, unreachable, DNS, connect timeout: `DatabaseUnavailable` ``db.unavailable``
  (``unreachable``);
* too many connections, reserved slots, role or database connection limit:
  ``db.unavailable`` (``too_many_connections``);
* server starting up, shutting down, in recovery, database not accepting connections:
  ``db.unavailable`` (``not_accepting``);
* connection lost or terminated under a statement: `ConnectionLost`
  ``db.connection_lost`` (``connection_lost``);
* statement timeout (57014): `StatementTimeout` ``db.statement_timeout``
  (``statement_timeout``);
* SQLite "database is locked" past its busy timeout: `DatabaseLocked` ``db.locked``
  (``locked``).

Each is counted in ``hardened_db_unavailable_total{reason}`` and carries ``Retry-After``
(1 s; 5 s when the server is unreachable or restarting). PostgreSQL reports connection-time
refusals (``FATAL: too many connections for role``) without a SQLSTATE through libpq, so
those are recognised by message; everything else by SQLSTATE or by SQLAlchemy's own
disconnect detection (``connection_invalidated``). The client sees only the title and a
generic detail; the driver's message stays out of the problem body.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from hardened.errors import DependencyUnavailable, HardenedError, TenantContextMissing
from hardened.observability import counter

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = [
    "ConnectionLost",
    "CrossTenantWrite",
    "DatabaseLocked",
    "DatabaseUnavailable",
    "PoolExhausted",
    "StatementTimeout",
    "TenantContextMissing",
    "UnscopedBulkWrite",
    "UnscopedRawSQL",
    "sqlite_locked",
    "sqlstate",
    "unavailable_error",
    "unavailable_reason",
]

_UNAVAILABLE = counter(
    "db_unavailable_total",
    "Database failures answered with 503 instead of 500, by reason.",
    ["reason"],
)

_SQLITE_LOCKED = ("database is locked", "database table is locked")
# libpq puts a FATAL received while connecting into the message, without a SQLSTATE.
_TOO_MANY = (
    "too many connections",  # for role / for database
    "remaining connection slots are reserved",
    "too many clients already",
)
_NOT_ACCEPTING = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "is not currently accepting connections",  # ALTER DATABASE ... ALLOW_CONNECTIONS false
)
_STATE_REASONS = {
    "57014": "statement_timeout",  # query_canceled
    "53300": "too_many_connections",
    "57P03": "not_accepting",  # cannot_connect_now
    "08001": "unreachable",  # sqlclient_unable_to_establish_sqlconnection
    "08004": "unreachable",  # sqlserver_rejected_establishment_of_sqlconnection
    "57P01": "connection_lost",  # admin_shutdown (pg_terminate_backend)
    "57P02": "connection_lost",  # crash_shutdown
    "08000": "connection_lost",
    "08003": "connection_lost",
    "08006": "connection_lost",
    "08007": "connection_lost",
}


class DatabaseUnavailable(DependencyUnavailable):
    """The database refused or could not be reached; nothing was done."""

    code = "db.unavailable"
    title = "Database unavailable"
    default_detail: ClassVar[str] = "The database is unavailable; try again later."


class PoolExhausted(DatabaseUnavailable):
    """Every pooled connection stayed busy for the whole ``pool_timeout``."""

    code = "db.pool_exhausted"
    title = "Database connections exhausted"
    default_detail = "The service is busy; try again shortly."


class ConnectionLost(DatabaseUnavailable):
    """The connection died under a statement: no commit (in COMMIT itself: unknown)."""

    code = "db.connection_lost"
    title = "Database connection lost"
    default_detail = "The database connection was lost; try again later."


class StatementTimeout(DatabaseUnavailable):
    """PostgreSQL cancelled a statement at ``statement_timeout``."""

    code = "db.statement_timeout"
    title = "Database statement timed out"
    default_detail = "The operation took too long; try again later."


class DatabaseLocked(DatabaseUnavailable):
    """SQLite's single writer lock stayed held past the busy timeout."""

    code = "db.locked"
    title = "Database busy"
    default_detail = "The database is busy; try again shortly."


_CLASSES: dict[str, type[DatabaseUnavailable]] = {
    "pool_exhausted": PoolExhausted,
    "connection_lost": ConnectionLost,
    "statement_timeout": StatementTimeout,
    "locked": DatabaseLocked,
    "unreachable": DatabaseUnavailable,
    "too_many_connections": DatabaseUnavailable,
    "not_accepting": DatabaseUnavailable,
}
_RETRY_AFTER = {"unreachable": 5, "not_accepting": 5}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, wrapped by SQLAlchemy or not."""
    orig = getattr(exc, "orig", exc)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def sqlite_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" (the busy timeout ran out)."""
    orig = getattr(exc, "orig", exc)
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    return any(text in str(orig) for text in _SQLITE_LOCKED)


def _connect_failure(exc: OperationalError) -> str | None:
    if exc.statement is not None or isinstance(exc.orig, sqlite3.Error):
        return None  # a statement failed, or a local SQLite file: not connectivity
    message = str(exc.orig).lower()
    if any(text in message for text in _TOO_MANY):
        return "too_many_connections"
    if any(text in message for text in _NOT_ACCEPTING):
        return "not_accepting"
    return "unreachable"


def unavailable_reason(exc: BaseException) -> str | None:
    """Which database unavailability ``exc`` is (the metric's ``reason``), or None.

    Pure: nothing is counted, so retry loops can ask before deciding.
    """
    if isinstance(exc, PoolTimeout):
        return "pool_exhausted"
    if isinstance(exc, PendingRollbackError):
        # "Can't reconnect until invalid transaction is rolled back": the connection was
        # lost earlier in this transaction and the caller carried on.
        return "connection_lost" if exc.code == "8s2b" else None
    if isinstance(exc, HardenedError):
        return None
    state = sqlstate(exc)
    reason = _STATE_REASONS.get(state or "")
    if reason is None and isinstance(exc, DBAPIError) and exc.connection_invalidated:
        reason = "connection_lost"  # SQLAlchemy's dialect saw the connection die
    if reason is None and sqlite_locked(exc):
        reason = "locked"
    if reason is None and state is None and isinstance(exc, OperationalError):
        reason = _connect_failure(exc)
    return reason


def unavailable_error(
    exc: BaseException, *, context: Mapping[str, Any] | None = None
) -> DatabaseUnavailable | None:
    """The 503 for a database failure ``exc``, counted; None if ``exc`` is anything else.

    Plug it into an error boundary (``translate=[unavailable_error]``) and raise the
    result ``from exc``. ``context`` adds log-only fields.
    """
    reason = unavailable_reason(exc)
    if reason is None:
        return None
    _UNAVAILABLE.labels(reason=reason).inc()
    cls = _CLASSES[reason]
    fields: dict[str, Any] = {"reason": reason, "error": type(exc).__name__}
    state = sqlstate(exc)
    if state is not None:
        fields["sqlstate"] = state
    return cls(
        cls.default_detail,
        retry_after=_RETRY_AFTER.get(reason, 1),
        context={**fields, **(context or {})},
    )


class CrossTenantWrite(HardenedError):
    code = "tenant.cross_tenant_write"
    title = "Write across tenants refused"


class UnscopedBulkWrite(HardenedError):
    code = "tenant.unscoped_bulk_write"
    title = "Bulk write without tenant predicate refused"


class UnscopedRawSQL(HardenedError):
    code = "tenant.raw_sql"
    title = "Raw SQL in a tenant session refused"
