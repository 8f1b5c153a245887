import uuid

import psycopg
import pytest
from httpx import AsyncClient

from sf_support import ShopDatabase, idem, new_shop, order_body


def _owner(db: ShopDatabase) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(db.owner_url.replace("postgresql+psycopg://", "postgresql://"))


@pytest.mark.anyio
async def test_failed_shipment_leaves_order_unchanged(
    pg_shop_db: ShopDatabase, shop_client_pg: AsyncClient
) -> None:
    """A shipment insert that fails after the order update persists neither of them."""
    shop = await new_shop(shop_client_pg)
    h = shop.headers
    order = (await shop_client_pg.post("/orders", json=order_body(shop), headers=idem(h))).json()
    await shop_client_pg.post(
        f"/orders/{order['id']}/transitions", json={"to": "paid", "version": 1}, headers=h
    )
    with _owner(pg_shop_db) as conn:  # a shipment that should not exist makes the insert fail
        conn.execute(
            "INSERT INTO shipments (id, tenant_id, version, order_id, carrier, status, created_at)"
            " VALUES (%s, %s, 1, %s, 'X', 'label_created', now())",
            (uuid.uuid4(), shop.tenant_id, order["id"]),
        )
    resp = await shop_client_pg.post(
        f"/orders/{order['id']}/shipments", json={"carrier": "DHL", "version": 2}, headers=h
    )
    assert (resp.status_code, resp.json()["code"]) == (409, "shipment.exists")
    after = (await shop_client_pg.get(f"/orders/{order['id']}", headers=h)).json()
    assert (after["status"], after["version"]) == ("paid", 2)
    with _owner(pg_shop_db) as conn:
        history = conn.execute(
            "SELECT version, to_status FROM order_status_changes WHERE order_id = %s ORDER BY 1",
            (order["id"],),
        ).fetchall()
        carriers = conn.execute(
            "SELECT carrier FROM shipments WHERE order_id = %s", (order["id"],)
        ).fetchall()
    assert history == [(1, "pending"), (2, "paid")]
    assert carriers == [("X",)]


@pytest.mark.anyio
async def test_coupon_counter_never_exceeds_its_limit_in_sql(pg_shop_db: ShopDatabase) -> None:
    """The database itself refuses a coupon whose used count would pass its limit."""
    with _owner(pg_shop_db) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO coupons (id, tenant_id, code, percent_off, usage_limit, used, created_at)"
            " VALUES (%s, %s, 'X', 10, 5, 6, now())",
            (uuid.uuid4(), uuid.uuid4()),
        )


@pytest.mark.anyio
async def test_order_line_cap_is_a_constraint(pg_shop_db: ShopDatabase) -> None:
    """An order line at position 101 is refused by the database, whatever the API allowed."""
    with _owner(pg_shop_db) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO order_lines"
            " (id, tenant_id, order_id, position, item_id, quantity, unit_price_cents)"
            " VALUES (%s, %s, %s, 101, %s, 1, 1)",
            (uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()),
        )
