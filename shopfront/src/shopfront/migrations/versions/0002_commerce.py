"""Commerce: customers, catalog, coupons, orders, shipments; RLS and the app role.

On PostgreSQL every tenant table gets FORCE ROW LEVEL SECURITY with a policy on
``app.tenant_id``, and the non-owner role the service connects as (created when
missing, no BYPASSRLS) is granted data access only.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shopfront.migrations._rls import protect_tenant_tables, unprotect_tenant_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TENANT_TABLES = (
    "customers",
    "catalog_items",
    "coupons",
    "coupon_usages",
    "orders",
    "order_lines",
    "order_status_changes",
    "shipments",
)


def _tenant_id() -> sa.Column[object]:
    return sa.Column("tenant_id", sa.Uuid(), nullable=False)


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("api_key_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_tenants_api_key_hash", ["api_key_hash"])

    op.create_table(
        "customers",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _tenant_id(),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("tenant_id", "email", name="uq_customers_tenant_id_email"),
    )
    op.create_index("ix_customers_tenant_created", "customers", ["tenant_id", "created_at", "id"])

    op.create_table(
        "catalog_items",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _tenant_id(),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("tenant_id", "sku", name="uq_catalog_items_tenant_id_sku"),
        sa.CheckConstraint("price_cents >= 0", name="ck_catalog_items_price_not_negative"),
        sa.CheckConstraint(
            "kind IN ('plan', 'addon', 'installation')", name="ck_catalog_items_kind"
        ),
    )
    op.create_index("ix_catalog_items_tenant_kind", "catalog_items", ["tenant_id", "kind"])

    op.create_table(
        "coupons",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _tenant_id(),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("percent_off", sa.Integer(), nullable=False),
        sa.Column("usage_limit", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("per_customer_limit", sa.Integer(), nullable=True),
        _ts("valid_from", nullable=True),
        _ts("valid_until", nullable=True),
        _ts("created_at"),
        sa.UniqueConstraint("tenant_id", "code", name="uq_coupons_tenant_id_code"),
        sa.CheckConstraint("usage_limit > 0", name="ck_coupons_limit_positive"),
        sa.CheckConstraint(
            "used >= 0 AND used <= usage_limit", name="ck_coupons_used_within_limit"
        ),
        sa.CheckConstraint("percent_off BETWEEN 1 AND 100", name="ck_coupons_percent_range"),
        sa.CheckConstraint(
            "per_customer_limit IS NULL OR per_customer_limit > 0",
            name="ck_coupons_per_customer_positive",
        ),
    )

    op.create_table(
        "coupon_usages",
        sa.Column("coupon_id", sa.Uuid(), sa.ForeignKey("coupons.id"), primary_key=True),
        sa.Column("customer_id", sa.Uuid(), sa.ForeignKey("customers.id"), primary_key=True),
        _tenant_id(),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.CheckConstraint("used >= 0", name="ck_coupon_usages_used_not_negative"),
    )

    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _tenant_id(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("external_ref", sa.String(100), nullable=True),
        sa.Column("customer_id", sa.Uuid(), sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("coupon_id", sa.Uuid(), sa.ForeignKey("coupons.id"), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("subtotal_cents", sa.Integer(), nullable=False),
        sa.Column("discount_cents", sa.Integer(), nullable=False),
        sa.Column("total_cents", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(500), nullable=True),
        _ts("created_at"),
        sa.UniqueConstraint("tenant_id", "number", name="uq_orders_tenant_id_number"),
        sa.UniqueConstraint("tenant_id", "external_ref", name="uq_orders_tenant_id_external_ref"),
        sa.CheckConstraint(
            "status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')",
            name="ck_orders_status",
        ),
        sa.CheckConstraint("total_cents >= 0 AND discount_cents >= 0", name="ck_orders_amounts"),
    )
    op.create_index("ix_orders_tenant_created", "orders", ["tenant_id", "created_at", "id"])
    op.create_index("ix_orders_tenant_status", "orders", ["tenant_id", "status"])
    op.create_index("ix_orders_tenant_customer", "orders", ["tenant_id", "customer_id"])

    op.create_table(
        "order_lines",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _tenant_id(),
        sa.Column("order_id", sa.Uuid(), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Uuid(), sa.ForeignKey("catalog_items.id"), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_cents", sa.Integer(), nullable=False),
        sa.UniqueConstraint("order_id", "position", name="uq_order_lines_order_id_position"),
        sa.CheckConstraint("position BETWEEN 1 AND 100", name="ck_order_lines_position_max_100"),
        sa.CheckConstraint("quantity BETWEEN 1 AND 1000", name="ck_order_lines_quantity_range"),
    )
    op.create_index("ix_order_lines_order_id", "order_lines", ["order_id"])

    op.create_table(
        "order_status_changes",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _tenant_id(),
        sa.Column("order_id", sa.Uuid(), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("from_status", sa.String(20), nullable=True),
        sa.Column("to_status", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("at"),
        sa.UniqueConstraint("order_id", "version", name="uq_order_status_changes_order_id_version"),
    )
    op.create_index("ix_order_status_changes_order_id", "order_status_changes", ["order_id"])

    op.create_table(
        "shipments",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _tenant_id(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Uuid(), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("carrier", sa.String(50), nullable=False),
        sa.Column("tracking_number", sa.String(100), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("order_id", name="uq_shipments_order_id"),
        sa.CheckConstraint(
            "status IN ('label_created', 'in_transit', 'delivered', 'returned')",
            name="ck_shipments_status",
        ),
    )

    protect_tenant_tables(TENANT_TABLES)


def downgrade() -> None:
    unprotect_tenant_tables(TENANT_TABLES)
    for table in reversed(TENANT_TABLES):
        op.drop_table(table)
    with op.batch_alter_table("tenants") as batch:
        batch.drop_constraint("uq_tenants_api_key_hash", type_="unique")
        batch.drop_column("api_key_hash")
