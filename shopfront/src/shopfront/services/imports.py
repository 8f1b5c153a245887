"""Bulk order import from CSV: every row becomes an order, or none does.

Rows stream from the request into `hardened.db.csv_import`; each batch is
checked against the shop's customers and catalog (unknown references are
reported by row and column like validation errors) and inserted in the
caller's single transaction, which the route rolls back unless every row was
good. Memory holds one batch, whatever the file size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select

from hardened.db.csv_import import CsvSpec, ImportProgress, ImportReport, RowError, import_csv
from hardened.errors import Conflict
from shopfront.models import CatalogItem, Customer
from shopfront.schemas import ImportRow, OrderIn, OrderLineIn
from shopfront.services.orders import create_order

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterable, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["IMPORT_MAX_BYTES", "IMPORT_SPEC", "import_orders"]

IMPORT_MAX_BYTES = 10 * 1024 * 1024
IMPORT_SPEC = CsvSpec(ImportRow, max_bytes=IMPORT_MAX_BYTES, max_rows=50_000, max_columns=10)

_log = structlog.get_logger("shopfront.imports")


async def import_orders(
    session: AsyncSession, tenant_id: uuid.UUID, chunks: AsyncIterable[bytes]
) -> ImportReport:
    """Stream ``chunks`` into orders inside the caller's transaction; return the report."""

    async def sink(batch: Sequence[tuple[int, ImportRow]]) -> list[RowError]:
        emails = {row.customer_email for _, row in batch}
        skus = {row.sku for _, row in batch}
        customers = {
            c.email: c.id
            for c in await session.scalars(select(Customer).where(Customer.email.in_(emails)))
        }
        items = {
            i.sku: i.id
            for i in await session.scalars(select(CatalogItem).where(CatalogItem.sku.in_(skus)))
        }
        errors = [
            RowError(number, column, f"unknown {column.replace('_', ' ')}", code)
            for number, row in batch
            for column, code, known in (
                ("customer_email", "import.unknown_customer", row.customer_email in customers),
                ("sku", "import.unknown_sku", row.sku in items),
            )
            if not known
        ]
        if errors:
            return errors
        for number, row in batch:
            body = OrderIn(
                customer_id=customers[row.customer_email],
                lines=[OrderLineIn(item_id=items[row.sku], quantity=row.quantity)],
                note=row.note,
            )
            try:
                await create_order(session, tenant_id, body, external_ref=row.external_ref)
            except Conflict as exc:
                if exc.code != "order.duplicate_ref":
                    raise
                return [RowError(number, "external_ref", "already imported", "import.duplicate")]
        return []

    async def progress(report: ImportProgress) -> None:
        _log.info(
            "import.progress", rows=report.rows_read, bytes=report.bytes_read, errors=report.errors
        )

    return await import_csv(chunks, IMPORT_SPEC, sink, batch_size=200, progress=progress)
