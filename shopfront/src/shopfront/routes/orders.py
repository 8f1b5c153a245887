"""Orders and shipments over HTTP; the rules live in `shopfront.services.orders`."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from sqlalchemy import select

from hardened.errors import NotFound
from hardened.idempotency import IdempotencyKey, idempotency_key
from shopfront.exactly_once import prior_effect, record_effect
from shopfront.models import Order, OrderStatusChange, Shipment
from shopfront.pagination import Cursor, Limit, next_cursor, page_query
from shopfront.permissions import allow
from shopfront.schemas import (
    ImportSummary,
    OrderIn,
    OrderOut,
    OrderStatus,
    Page,
    ShipmentIn,
    ShipmentOut,
    ShipmentUpdate,
    StatusChangeOut,
    TransitionIn,
)
from shopfront.services import imports
from shopfront.services import orders as service
from shopfront.tenant_auth import Tenancy

__all__ = ["router", "shipments"]

router = APIRouter(prefix="/orders", tags=["orders"])
shipments = APIRouter(prefix="/shipments", tags=["shipments"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[allow("orders:write")])
async def create_order(
    body: OrderIn,
    tenancy: Tenancy,
    key: Annotated[IdempotencyKey, Depends(idempotency_key(guarded=True))],
) -> OrderOut:
    """Place an order once per Idempotency-Key; a coupon is redeemed with it or not at all."""
    async with tenancy.session.begin():
        earlier = prior_effect(key, "order")
        if earlier is not None:  # a crashed attempt committed it: answer, don't redo
            order = await tenancy.session.get(Order, uuid.UUID(earlier))
            if order is None:
                raise NotFound("No such order.", code="order.not_found")
        else:
            order = await service.create_order(tenancy.session, tenancy.tenant_id, body)
            await record_effect(
                tenancy.state.idempotency, tenancy.session, key, "order", str(order.id)
            )
    return OrderOut.model_validate(order)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    dependencies=[allow("orders:import")],
    openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def import_orders(request: Request, tenancy: Tenancy) -> ImportSummary:
    """Import orders from CSV (streamed); any bad row imports nothing and is reported by row."""
    async with tenancy.session.begin():
        report = await imports.import_orders(tenancy.session, tenancy.tenant_id, request.stream())
        if not report.ok:
            raise report.to_problem()
    return ImportSummary(imported=report.rows_valid, rows_read=report.rows_read)


@router.get("", dependencies=[allow("orders:read")])
async def list_orders(
    tenancy: Tenancy,
    limit: Limit = 50,
    cursor: Cursor = None,
    status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
) -> Page[OrderOut]:
    """Orders, newest first, optionally by status."""
    stmt = select(Order)
    if status_:
        stmt = stmt.where(Order.status == status_)
    rows = (await tenancy.session.scalars(page_query(stmt, Order, limit, cursor))).all()
    items = [OrderOut.model_validate(o) for o in rows[:limit]]
    return Page[OrderOut](items=items, next_cursor=next_cursor(rows, limit))


@router.get("/{order_id}", dependencies=[allow("orders:read")])
async def get_order(order_id: uuid.UUID, tenancy: Tenancy) -> OrderOut:
    """One order of this shop with its lines."""
    order = await tenancy.session.get(Order, order_id)
    if order is None:
        raise NotFound("No such order.", code="order.not_found")
    return OrderOut.model_validate(order)


@router.get("/{order_id}/history", dependencies=[allow("orders:read")])
async def order_history(order_id: uuid.UUID, tenancy: Tenancy) -> list[StatusChangeOut]:
    """The order's status changes, one per version, oldest first."""
    if await tenancy.session.get(Order, order_id) is None:
        raise NotFound("No such order.", code="order.not_found")
    changes = await tenancy.session.scalars(
        select(OrderStatusChange)
        .where(OrderStatusChange.order_id == order_id)
        .order_by(OrderStatusChange.version)
    )
    return [StatusChangeOut.model_validate(c) for c in changes]


@router.post("/{order_id}/transitions", dependencies=[allow("orders:write")])
async def transition(order_id: uuid.UUID, body: TransitionIn, tenancy: Tenancy) -> OrderOut:
    """Change an order's status from the version the client saw (409 if it moved since)."""
    async with tenancy.session.begin():
        order = await service.transition_order(
            tenancy.session, tenancy.tenant_id, order_id, body.to, body.version
        )
    return OrderOut.model_validate(order)


@router.post(
    "/{order_id}/shipments",
    status_code=status.HTTP_201_CREATED,
    dependencies=[allow("orders:write")],
)
async def ship(order_id: uuid.UUID, body: ShipmentIn, tenancy: Tenancy) -> ShipmentOut:
    """Ship a paid order: status change and shipment are written together or not at all."""
    async with tenancy.session.begin():
        shipment = await service.ship_order(tenancy.session, tenancy.tenant_id, order_id, body)
    return ShipmentOut.model_validate(shipment)


@shipments.get("/{shipment_id}", dependencies=[allow("orders:read")])
async def get_shipment(shipment_id: uuid.UUID, tenancy: Tenancy) -> ShipmentOut:
    """One shipment of this shop."""
    shipment = await tenancy.session.get(Shipment, shipment_id)
    if shipment is None:
        raise NotFound("No such shipment.", code="shipment.not_found")
    return ShipmentOut.model_validate(shipment)


@shipments.patch("/{shipment_id}", dependencies=[allow("orders:write")])
async def update_shipment(
    shipment_id: uuid.UUID, body: ShipmentUpdate, tenancy: Tenancy
) -> ShipmentOut:
    """Change a shipment's status from the version the client saw."""
    async with tenancy.session.begin():
        shipment = await service.update_shipment(
            tenancy.session, tenancy.tenant_id, shipment_id, body.status, body.version
        )
    return ShipmentOut.model_validate(shipment)
