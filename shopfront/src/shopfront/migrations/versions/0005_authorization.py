"""Authorization inside a shop: member roles, API keys with a lifecycle, invitations; BIGINT money.

Existing users become ``read_only`` (least privilege: before this revision a
sign-up needed no invitation, so nobody's rights can be inferred); an owner
promotes them. The shop-wide key (``tenants.api_key_hash``) is retired: keys
now name their shop (``sfk_<shop>_<secret>``), so an old key cannot be
carried over (only its hash is known). Order amounts become BIGINT, since a
large order's price x quantity passes 2^31.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shopfront.migrations._rls import protect_tenant_tables, unprotect_tenant_tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("api_keys", "invitations")
ROLE_CHECK = "role IN ('read_only', 'staff', 'admin', 'owner')"
AMOUNTS = ("subtotal_cents", "discount_cents", "total_cents")


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("role", sa.String(20), nullable=False, server_default="read_only")
        )
    with op.batch_alter_table("users") as users:
        users.alter_column("role", server_default=None)
        users.create_check_constraint("ck_users_role", ROLE_CHECK)
    op.create_index("ix_users_tenant_role", "users", ["tenant_id", "role"])
    with op.batch_alter_table("tenants") as tenants:
        tenants.drop_constraint("uq_tenants_api_key_hash", type_="unique")
        tenants.drop_column("api_key_hash")
    with op.batch_alter_table("orders") as orders:
        for column in AMOUNTS:
            orders.alter_column(column, type_=sa.BigInteger(), existing_type=sa.Integer())
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by", sa.Uuid(), nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.CheckConstraint(ROLE_CHECK, name="ck_api_keys_role"),
    )
    op.create_index("ix_api_keys_tenant_created", "api_keys", ["tenant_id", "created_at", "id"])
    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_invitations_token_hash"),
        sa.CheckConstraint(ROLE_CHECK, name="ck_invitations_role"),
    )
    op.create_index(
        "ix_invitations_tenant_created", "invitations", ["tenant_id", "created_at", "id"]
    )
    protect_tenant_tables(TABLES)


def downgrade() -> None:
    unprotect_tenant_tables(TABLES)
    op.drop_table("invitations")
    op.drop_table("api_keys")
    with op.batch_alter_table("orders") as orders:
        for column in AMOUNTS:
            orders.alter_column(column, type_=sa.Integer(), existing_type=sa.BigInteger())
    with op.batch_alter_table("tenants") as tenants:
        tenants.add_column(sa.Column("api_key_hash", sa.String(64), nullable=True))
        tenants.create_unique_constraint("uq_tenants_api_key_hash", ["api_key_hash"])
    op.drop_index("ix_users_tenant_role", table_name="users")
    with op.batch_alter_table("users") as users:
        users.drop_constraint("ck_users_role", type_="check")
        users.drop_column("role")
