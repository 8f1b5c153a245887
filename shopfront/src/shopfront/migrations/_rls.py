"""Row-level security for tenant tables, as every migration that adds some applies it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import context, op

from hardened.db.rls import app_role_statements, drop_rls_statements, rls_statements

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["APPEND_ONLY", "protect_tenant_tables", "unprotect_tenant_tables"]

# Rotating and destroying data keys is the operator's command, never the app's.
APPEND_ONLY = ("data_keys",)


def protect_tenant_tables(tables: Sequence[str]) -> None:
    """On PostgreSQL: RLS on ``tables``, and the app role's grants (re)applied."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in tables:
        for statement in rls_statements(table):
            op.execute(statement)
    role = context.config.attributes.get("app_role", "shopfront_app")
    for statement in app_role_statements(role):
        op.execute(statement)
    # The grants above cover every table; these the app may only read and add to.
    for table in APPEND_ONLY:
        op.execute(
            f"DO $$ BEGIN IF to_regclass('{table}') IS NOT NULL THEN"
            f' REVOKE UPDATE, DELETE ON {table} FROM "{role}"; END IF; END $$'
        )


def unprotect_tenant_tables(tables: Sequence[str]) -> None:
    """On PostgreSQL: drop the RLS policies of ``tables`` (before dropping them)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in tables:
        for statement in drop_rls_statements(table):
            op.execute(statement)
