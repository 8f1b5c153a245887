"""Data integrity and tenancy for SQLAlchemy 2 (async) on PostgreSQL and SQLite.

Needs the ``postgres`` or ``sqlite`` extra. The pieces, each in its module:

* `tenancy` / `rls`: sessions bound to one tenant, scoped reads and checked
  writes, PostgreSQL row-level security underneath;
* `integrity`: optimistic locking, conditional (never read-modify-write)
  counters, unique human-facing numbers, constraint errors as problems;
* `transaction`: retries of serialization failures and deadlocks, statement
  timeouts, advisory locks (and SQLite's one-writer equivalent);
* `limits`: collection caps in schemas and in SQL constraints;
* `csv_import`: streamed, all-or-nothing CSV imports with a per-row report;
* `unavailable_error`: the database failing (pool exhausted, refused, too many
  connections, connection lost, statement timeout, SQLite locked) as a 503
  `DatabaseUnavailable` with ``Retry-After``, for an error boundary's
  ``translate=``. Codes: ``db.unavailable``, ``db.pool_exhausted``,
  ``db.connection_lost``, ``db.statement_timeout``, ``db.locked``.

A pooled PostgreSQL connection found dead at a transaction's first statement is
replaced transparently (`hardened.db.rls`); `run_transaction` also re-runs a
transaction whose connection was lost before COMMIT.
"""

from hardened._extras import missing_extra

try:
    import sqlalchemy  # noqa: F401 - the one guard for every module below
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.db", "postgres", "sqlite") from exc

from hardened.db._errors import (
    ConnectionLost,
    DatabaseLocked,
    DatabaseUnavailable,
    PoolExhausted,
    StatementTimeout,
    unavailable_error,
)
from hardened.db.csv_import import (
    CsvSpec,
    ImportProgress,
    ImportReport,
    RowError,
    import_csv,
    neutralize_formula,
)
from hardened.db.integrity import (
    Versioned,
    conditional_increment,
    constraint_name,
    human_number,
    insert_with_unique_number,
    integrity_errors,
    optimistic,
    update_versioned,
    upsert_increment,
)
from hardened.db.limits import (
    MAX_COLLECTION_ITEMS,
    bounded_list,
    cardinality_check,
    position_check,
)
from hardened.db.rls import app_role_statements, drop_rls_statements, rls_statements
from hardened.db.tenancy import (
    CrossTenantWrite,
    TenantContextMissing,
    TenantScoped,
    TenantSession,
    UnscopedBulkWrite,
    UnscopedRawSQL,
    current_tenant_id,
    install_tenancy,
    session_tenant,
    tenant_context,
    tenant_session,
)
from hardened.db.transaction import (
    advisory_lock,
    conflict_error,
    run_transaction,
    sqlite_immediate_transactions,
)

__all__ = [
    "MAX_COLLECTION_ITEMS",
    "ConnectionLost",
    "CrossTenantWrite",
    "CsvSpec",
    "DatabaseLocked",
    "DatabaseUnavailable",
    "ImportProgress",
    "ImportReport",
    "PoolExhausted",
    "RowError",
    "StatementTimeout",
    "TenantContextMissing",
    "TenantScoped",
    "TenantSession",
    "UnscopedBulkWrite",
    "UnscopedRawSQL",
    "Versioned",
    "advisory_lock",
    "app_role_statements",
    "bounded_list",
    "cardinality_check",
    "conditional_increment",
    "conflict_error",
    "constraint_name",
    "current_tenant_id",
    "drop_rls_statements",
    "human_number",
    "import_csv",
    "insert_with_unique_number",
    "install_tenancy",
    "integrity_errors",
    "neutralize_formula",
    "optimistic",
    "position_check",
    "rls_statements",
    "run_transaction",
    "session_tenant",
    "sqlite_immediate_transactions",
    "tenant_context",
    "tenant_session",
    "unavailable_error",
    "update_versioned",
    "upsert_increment",
]
