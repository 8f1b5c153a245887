"""Encrypted personal data: the shops' data keys, KYC records, OAuth accounts, integrations.

``data_keys`` holds each shop's data keys wrapped by ``ENCRYPTION_KEY``, under
row-level security like every tenant table; the app role may only read and
add to it: rotating and destroying keys is the operator's ``shopfront keys``
command (a role that bypasses RLS). Members get a ``kyc_status``.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shopfront.migrations._rls import protect_tenant_tables, unprotect_tenant_tables

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("kyc_records", "oauth_accounts", "integrations")
KYC_STATUS = "status IN ('pending', 'verified', 'rejected')"
USER_KYC_STATUS = "kyc_status IN ('none', 'pending', 'verified', 'rejected')"


def _sealed(name: str, *, nullable: bool, indexed: bool = False) -> list[sa.Column[object]]:
    columns: list[sa.Column[object]] = [
        sa.Column(f"{name}_ct", sa.LargeBinary(), nullable=nullable)
    ]
    if indexed:
        columns.append(sa.Column(f"{name}_bidx", sa.BigInteger(), nullable=True))
    return columns


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "version", name="pk_data_keys"),
    )
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("kyc_status", sa.String(20), nullable=False, server_default="none")
        )
    with op.batch_alter_table("users") as users:
        users.create_check_constraint("ck_users_kyc_status", USER_KYC_STATUS)
    op.create_table(
        "kyc_records",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", name="fk_kyc_records_user_id_users"),
            nullable=False,
        ),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        *_sealed("national_id", nullable=False, indexed=True),
        *_sealed("tax_id", nullable=False, indexed=True),
        *_sealed("bank_account", nullable=True),
        *_sealed("address", nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=True),
        sa.UniqueConstraint("tenant_id", "user_id", name="uq_kyc_records_tenant_id_user_id"),
        sa.CheckConstraint(KYC_STATUS, name="ck_kyc_records_status"),
    )
    op.create_index(
        "ix_kyc_records_tenant_status", "kyc_records", ["tenant_id", "status", "created_at"]
    )
    op.create_index(
        "ix_kyc_records_national_id_bidx", "kyc_records", ["tenant_id", "national_id_bidx"]
    )
    op.create_index("ix_kyc_records_tax_id_bidx", "kyc_records", ["tenant_id", "tax_id_bidx"])
    op.create_table(
        "oauth_accounts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", name="fk_oauth_accounts_user_id_users"),
            nullable=False,
        ),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_sealed("access_token", nullable=False),
        *_sealed("refresh_token", nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=True),
        sa.UniqueConstraint(
            "tenant_id", "provider", "subject", name="uq_oauth_accounts_tenant_id_provider_subject"
        ),
    )
    op.create_index("ix_oauth_accounts_tenant_user", "oauth_accounts", ["tenant_id", "user_id"])
    op.create_table(
        "integrations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("platform", sa.String(40), nullable=False),
        sa.Column("shop_domain", sa.String(253), nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_sealed("access_token", nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=True),
        sa.UniqueConstraint(
            "tenant_id",
            "platform",
            "shop_domain",
            name="uq_integrations_tenant_id_platform_shop_domain",
        ),
    )
    op.create_index(
        "ix_integrations_tenant_created", "integrations", ["tenant_id", "created_at", "id"]
    )
    protect_tenant_tables(("data_keys", *TABLES))


def downgrade() -> None:
    unprotect_tenant_tables(("data_keys", *TABLES))
    op.drop_table("integrations")
    op.drop_table("oauth_accounts")
    op.drop_table("kyc_records")
    with op.batch_alter_table("users") as users:
        users.drop_constraint("ck_users_kyc_status", type_="check")
        users.drop_column("kyc_status")
    op.drop_table("data_keys")
