"""Prepaid credits (hardened.ledger), idempotency records and SIM activations.

The ledger and idempotency tables are built by the library's own table
functions (`ledger_tables`, `idempotency_table`) on a fresh MetaData with the
service's naming convention, so their constraints match what the library maps
to errors. SIM activations are a tenant table behind row-level security.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hardened.idempotency import idempotency_table
from hardened.ledger import ledger_tables
from shopfront.migrations._rls import protect_tenant_tables, unprotect_tenant_tables
from shopfront.models import NAMING

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _library_tables() -> list[sa.Table]:
    metadata = sa.MetaData(naming_convention=NAMING)
    ledger_tables(metadata)
    idempotency_table(metadata)
    return list(metadata.sorted_tables)


def upgrade() -> None:
    bind = op.get_bind()
    for table in _library_tables():
        table.create(bind)
    op.create_table(
        "sim_activations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("iccid", sa.String(22), nullable=False),
        sa.Column("plan", sa.String(50), nullable=False),
        sa.Column("provider_ref", sa.String(100), nullable=False),
        sa.Column("reservation_id", sa.Uuid(), nullable=False),
        sa.Column("price", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant_id", "iccid", name="uq_sim_activations_tenant_id_iccid"),
    )
    protect_tenant_tables(("sim_activations",))


def downgrade() -> None:
    bind = op.get_bind()
    unprotect_tenant_tables(("sim_activations",))
    op.drop_table("sim_activations")
    for table in reversed(_library_tables()):
        table.drop(bind)
