import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from sf_support import ShopDatabase, client_for, idem, make_settings, new_shop, order_body
from shopfront.app import create_app


@pytest.mark.anyio
async def test_order_list_query_count_does_not_grow_with_rows(shop_db: ShopDatabase) -> None:
    """Listing 3 or 30 orders with their lines issues the same number of SQL statements (no N+1)."""
    app = create_app(make_settings(shop_db.url, migration_database_url=shop_db.owner_url))
    statements: list[str] = []

    def count(conn: Connection, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    engine = app.state.shopfront.db.engine.sync_engine
    try:
        async with client_for(app) as client:
            shop = await new_shop(client)
            per_page = []
            for total in (3, 30):
                while (
                    len(
                        (await client.get("/orders?limit=100", headers=shop.headers)).json()[
                            "items"
                        ]
                    )
                    < total
                ):
                    await client.post("/orders", json=order_body(shop), headers=idem(shop.headers))
                event.listen(engine, "before_cursor_execute", count)
                statements.clear()
                page = await client.get("/orders?limit=100", headers=shop.headers)
                event.remove(engine, "before_cursor_execute", count)
                assert len(page.json()["items"]) == total
                assert all(o["lines"] for o in page.json()["items"])
                per_page.append(len(statements))
    finally:
        await app.state.shopfront.db.aclose()
    assert per_page[0] == per_page[1], per_page
