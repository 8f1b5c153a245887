"""The service's real query patterns are served by tenant-first indexes on PostgreSQL."""

import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from sf_support import ShopDatabase
from shopfront.models import CatalogItem, Coupon, Customer, Order, OrderLine
from shopfront.pagination import page_query


def _sql(stmt: Any) -> str:
    return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


QUERIES: dict[str, tuple[Any, str]] = {
    "orders page": (
        lambda t: page_query(select(Order).where(Order.tenant_id == t), Order, 50, None),
        "ix_orders_tenant_created",
    ),
    "orders by status": (
        lambda t: page_query(
            select(Order).where(Order.tenant_id == t, Order.status == "paid"), Order, 50, None
        ),
        "ix_orders_tenant_",
    ),
    "customers page": (
        lambda t: page_query(select(Customer).where(Customer.tenant_id == t), Customer, 50, None),
        "ix_customers_tenant_created",
    ),
    "customer by email": (
        lambda t: select(Customer).where(Customer.tenant_id == t, Customer.email == "a@b.c"),
        "uq_customers_tenant_id_email",
    ),
    "coupon by code": (
        lambda t: select(Coupon).where(Coupon.tenant_id == t, Coupon.code == "X"),
        "uq_coupons_tenant_id_code",
    ),
    "catalog by sku": (
        lambda t: select(CatalogItem).where(CatalogItem.tenant_id == t, CatalogItem.sku == "S"),
        "uq_catalog_items_tenant_id_sku",
    ),
    "lines of an order": (
        lambda t: select(OrderLine).where(
            OrderLine.tenant_id == t, OrderLine.order_id == uuid.uuid4()
        ),
        "ix_order_lines_order_id",
    ),
}


# 20 shops with 500 customers and 100 catalog items each, so the planner has real statistics.
SEED = """
CREATE TEMP TABLE seed_tenants AS SELECT gen_random_uuid() AS id FROM generate_series(1, 20);
INSERT INTO customers (id, tenant_id, email, name, created_at)
SELECT gen_random_uuid(), t.id, 'c' || n || '@x.example', 'c', now() - n * interval '1 minute'
FROM seed_tenants t, generate_series(1, 500) n;
INSERT INTO catalog_items (id, tenant_id, kind, sku, name, price_cents, created_at)
SELECT gen_random_uuid(), t.id, 'plan', 'SKU-' || n, 'p', 100, now()
FROM seed_tenants t, generate_series(1, 100) n;
"""


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_query_uses_a_tenant_first_index(pg_shop_db: ShopDatabase, name: str) -> None:
    """EXPLAIN of each real query pattern shows its index and no sequential scan."""
    build, index = QUERIES[name]
    owner = pg_shop_db.owner_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(owner) as conn:
        conn.execute(SEED)
        conn.execute("ANALYZE")
        conn.execute("SET enable_seqscan = off")
        row = conn.execute("SELECT tenant_id FROM customers LIMIT 1").fetchone()
        assert row is not None
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + _sql(build(row[0]))))
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan
