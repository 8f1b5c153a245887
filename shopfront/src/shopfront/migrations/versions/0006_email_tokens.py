"""Email verification and email change: ``email_tokens``, ``users.email_verified_at``.

Token lookups read live tokens only, so the hash indexes of ``email_tokens``,
``password_resets`` and ``invitations`` become partial (``used_at`` /
``accepted_at IS NULL``) and lead with ``tenant_id`` like every index of the
service; they replace the platform-wide unique constraints on ``token_hash``,
which indexed every used token forever and which no code relied on (a hash
is of 256 random bits: uniqueness among the live tokens of a shop is all a
lookup needs to match at most one row). Existing members start unverified.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shopfront.migrations._rls import protect_tenant_tables, unprotect_tenant_tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("email_tokens",)
# (table, live-token index, the predicate that says a token is still usable, old constraint)
LIVE_INDEXES = (
    ("email_tokens", "ix_email_tokens_live", "used_at IS NULL", None),
    (
        "password_resets",
        "ix_password_resets_live",
        "used_at IS NULL",
        "uq_password_resets_token_hash",
    ),
    ("invitations", "ix_invitations_live", "accepted_at IS NULL", "uq_invitations_token_hash"),
)


def _create_live_index(table: str, name: str, live: str) -> None:
    op.create_index(
        name,
        table,
        ["tenant_id", "token_hash"],
        unique=True,
        postgresql_where=sa.text(live),
        sqlite_where=sa.text(live),
    )


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "email_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", name="fk_email_tokens_user_id_users", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("purpose", sa.String(10), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("purpose IN ('verify', 'change')", name="ck_email_tokens_purpose"),
    )
    op.create_index("ix_email_tokens_user_id", "email_tokens", ["user_id"])
    for table, name, live, old in LIVE_INDEXES:
        if old is not None:
            with op.batch_alter_table(table) as batch:
                batch.drop_constraint(old, type_="unique")
        _create_live_index(table, name, live)
    protect_tenant_tables(TABLES)


def downgrade() -> None:
    unprotect_tenant_tables(TABLES)
    for table, name, _, old in LIVE_INDEXES:
        op.drop_index(name, table_name=table)
        if old is not None:
            with op.batch_alter_table(table) as batch:
                batch.create_unique_constraint(old, ["token_hash"])
    op.drop_table("email_tokens")
    with op.batch_alter_table("users") as users:
        users.drop_column("email_verified_at")
