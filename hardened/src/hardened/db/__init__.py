"""Data integrity and tenancy for SQLAlchemy 2 (async) on PostgreSQL and SQLite.

Needs the ``postgres`` or ``sqlite`` extra. The pieces, each in its module:

* `tenancy` / `rls`: sessions bound to one tenant, scoped reads and checked
  writes, PostgreSQL row-level security underneath;
* `integrity`: optimistic locking, conditional (never read-modify-write)
  counters, unique human-facing numbers, constraint errors as problems;
* `transaction`: retries of serialization failures and deadlocks, statement
  timeouts, advisory locks (and SQLite's one-writer equivalent);
* `limits`: collection caps in schemas and in SQL constraints;
* `csv_import`: streamed, all-or-nothing CSV imports with a per-row report.
"""

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
    run_transaction,
    sqlite_immediate_transactions,
)

__all__ = [
    "MAX_COLLECTION_ITEMS",
    "CrossTenantWrite",
    "CsvSpec",
    "ImportProgress",
    "ImportReport",
    "RowError",
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
    "update_versioned",
    "upsert_increment",
]
