import pytest
from httpx import AsyncClient

from sf_support import Shop, new_shop

HEADER = "external_ref,customer_email,sku,quantity,note\r\n"
CSV = {"content-type": "text/csv"}


def _rows(shop: Shop, count: int, *, bad: dict[int, str] | None = None) -> str:
    """A file whose data row n (header = row 1) has quantity ``bad.get(n, 1)``."""
    bad = bad or {}
    lines = [f"ref-{n},c@shop.example,PLAN-1,{bad.get(n, 1)},\r\n" for n in range(2, count + 2)]
    return HEADER + "".join(lines)


async def _count(client: AsyncClient, shop: Shop) -> int:
    page = await client.get("/orders?limit=100", headers=shop.headers)
    return len(page.json()["items"])


@pytest.mark.anyio
async def test_clean_file_imports_every_row(shop_client: AsyncClient) -> None:
    """A valid CSV becomes one order per row."""
    shop = await new_shop(shop_client, "shop")
    resp = await shop_client.post(
        "/orders/import", content=_rows(shop, 30), headers={**shop.headers, **CSV}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"imported": 30, "rows_read": 30}
    assert await _count(shop_client, shop) == 30


@pytest.mark.anyio
async def test_one_bad_row_imports_nothing_and_names_row_and_column(
    shop_client: AsyncClient,
) -> None:
    """Row 57 with a bad quantity: nothing imported, the problem names row 57 and the column."""
    shop = await new_shop(shop_client, "shop")
    data = _rows(shop, 80, bad={57: "lots"})
    resp = await shop_client.post("/orders/import", content=data, headers={**shop.headers, **CSV})
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "import.invalid_rows"
    assert [e["loc"] for e in body["errors"]] == [["row", 57, "quantity"]]
    assert await _count(shop_client, shop) == 0


@pytest.mark.anyio
async def test_unknown_sku_is_reported_by_row_and_nothing_is_imported(
    shop_client: AsyncClient,
) -> None:
    """A reference the shop lacks is a row error too, and rolls back the rows before it."""
    shop = await new_shop(shop_client, "shop")
    data = _rows(shop, 5).replace("ref-4,c@shop.example,PLAN-1", "ref-4,c@shop.example,NOPE")
    resp = await shop_client.post("/orders/import", content=data, headers={**shop.headers, **CSV})
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json()["errors"]] == [["row", 4, "sku"]]
    assert await _count(shop_client, shop) == 0


@pytest.mark.anyio
async def test_formula_cells_are_neutralised(shop_client: AsyncClient) -> None:
    """A note starting with = + - @ is stored with a leading quote, so spreadsheets show text."""
    shop = await new_shop(shop_client, "shop")
    data = HEADER + 'ref-1,c@shop.example,PLAN-1,1,"=HYPERLINK(""http://x"",""y"")"\r\n'
    data += "ref-2,c@shop.example,PLAN-1,1,@SUM(A1)\r\n"
    resp = await shop_client.post("/orders/import", content=data, headers={**shop.headers, **CSV})
    assert resp.status_code == 201, resp.text
    notes = sorted(
        o["note"] for o in (await shop_client.get("/orders", headers=shop.headers)).json()["items"]
    )
    assert notes == ['\'=HYPERLINK("http://x","y")', "'@SUM(A1)"]


@pytest.mark.anyio
async def test_json_to_the_import_route_is_415(shop_client: AsyncClient) -> None:
    """The import route accepts text/csv only."""
    shop = await new_shop(shop_client, "shop")
    resp = await shop_client.post("/orders/import", json={"x": 1}, headers=shop.headers)
    assert resp.status_code == 415


@pytest.mark.anyio
async def test_50mb_upload_is_refused_before_it_is_read(shop_client: AsyncClient) -> None:
    """A 50 MB declared upload gets 413 at once; a 50 MB chunked one is cut at the limit."""
    shop = await new_shop(shop_client, "shop")
    declared = await shop_client.post(
        "/orders/import",
        content=b"",
        headers={**shop.headers, **CSV, "content-length": str(50 * 1024 * 1024)},
    )
    assert (declared.status_code, declared.json()["code"]) == (413, "request.too_large")
    sent = 0

    async def fifty_megabytes() -> object:
        nonlocal sent
        yield HEADER.encode()
        line = b"ref,c@shop.example,PLAN-1,1," + b"x" * 400 + b"\r\n"
        for _ in range(50 * 1024 * 1024 // len(line)):
            sent += len(line)
            yield line

    chunked = await shop_client.post(
        "/orders/import", content=fifty_megabytes(), headers={**shop.headers, **CSV}
    )
    assert chunked.status_code == 413
    assert sent < 11 * 1024 * 1024, "the upload was read far past the limit"
    assert await _count(shop_client, shop) == 0
