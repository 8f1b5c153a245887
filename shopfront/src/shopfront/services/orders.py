"""Orders: creation with atomic coupon redemption, optimistic status transitions, shipping.

Every write here is one transaction whose invariants are held by the database:
the coupon counter moves only through a conditional UPDATE (never read-modify-
write), the order number is retried on a unique violation, a transition is an
UPDATE guarded by the version the client saw, and shipping updates the order
and inserts the shipment together, so a failure leaves neither.
"""

from __future__ import annotations

import secrets
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import or_, select

from hardened.db.integrity import (
    conditional_increment,
    human_number,
    insert_with_unique_number,
    integrity_errors,
    update_versioned,
    upsert_increment,
)
from hardened.errors import (
    ConcurrentModification,
    Conflict,
    FieldError,
    NotFound,
    ValidationFailed,
)
from shopfront.models import (
    Base,
    CatalogItem,
    Coupon,
    CouponUsage,
    Customer,
    Order,
    OrderLine,
    OrderStatusChange,
    Shipment,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncSession

    from shopfront.schemas import OrderIn, ShipmentIn

__all__ = [
    "TRANSITIONS",
    "create_order",
    "number_space",
    "ship_order",
    "transition_order",
    "update_shipment",
]

# status → statuses it may move to (shipping has its own route: it creates a shipment).
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"paid", "cancelled"}),
    "paid": frozenset({"cancelled"}),
    "shipped": frozenset({"delivered"}),
    "delivered": frozenset(),
    "cancelled": frozenset(),
}
SHIPMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "label_created": frozenset({"in_transit", "returned"}),
    "in_transit": frozenset({"delivered", "returned"}),
    "delivered": frozenset({"returned"}),
    "returned": frozenset(),
}
NUMBER_CONSTRAINT = "uq_orders_tenant_id_number"
#: Test-only (ORDER_NUMBER_SPACE, set per request by `shopfront.testing_probe`): numbers
#: drawn from this many values, so a storm's numbers collide. Unset: 50-bit random numbers.
number_space: ContextVar[int | None] = ContextVar("order_number_space", default=None)


def _numbers() -> Callable[[], str]:
    space = number_space.get()
    if space is None:
        return human_number
    width = len(str(space - 1))
    return lambda: f"{secrets.randbelow(space):0{width}d}"


async def _redeem(
    session: AsyncSession, tenant_id: uuid.UUID, code: str, customer_id: uuid.UUID
) -> Coupon:
    coupon = await session.scalar(select(Coupon).where(Coupon.code == code))
    if coupon is None:
        raise NotFound("No such coupon.", code="coupon.not_found")
    now = datetime.now(UTC)
    if (coupon.valid_from and now < coupon.valid_from) or (
        coupon.valid_until and now >= coupon.valid_until
    ):
        raise Conflict("The coupon is not valid at this time.", code="coupon.not_active")
    used = await conditional_increment(
        session,
        Coupon.used,
        where=[
            Coupon.tenant_id == tenant_id,
            Coupon.id == coupon.id,
            or_(Coupon.valid_until.is_(None), Coupon.valid_until > now),
        ],
        ceiling=Coupon.usage_limit,
    )
    if used is None:
        raise Conflict("The coupon has been fully redeemed.", code="coupon.exhausted")
    if coupon.per_customer_limit is not None:
        mine = await upsert_increment(
            session,
            CouponUsage,
            key={"coupon_id": coupon.id, "customer_id": customer_id},
            values={"tenant_id": tenant_id},
            column="used",
            ceiling=coupon.per_customer_limit,
            where=[CouponUsage.tenant_id == tenant_id],
        )
        if mine is None:
            raise Conflict(
                "This customer has used the coupon as often as allowed.",
                code="coupon.customer_limit",
            )
    return coupon


async def create_order(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    body: OrderIn,
    *,
    external_ref: str | None = None,
) -> Order:
    """Insert an order, its lines and its first history row; redeem the coupon atomically.

    Must run inside the caller's transaction: any refusal rolls back the coupon too.
    """
    if await session.get(Customer, body.customer_id) is None:
        raise NotFound("No such customer.", code="customer.not_found")
    item_ids = {line.item_id for line in body.lines}
    items = {
        item.id: item
        for item in await session.scalars(select(CatalogItem).where(CatalogItem.id.in_(item_ids)))
    }
    missing = [i for i, line in enumerate(body.lines) if line.item_id not in items]
    if missing:
        raise ValidationFailed(
            "Some order lines reference unknown catalog items.",
            code="order.unknown_item",
            errors=[
                FieldError(("body", "lines", i, "item_id"), "unknown item", "not_found")
                for i in missing
            ],
        )
    subtotal = sum(items[line.item_id].price_cents * line.quantity for line in body.lines)
    coupon = None
    if body.coupon_code:
        coupon = await _redeem(session, tenant_id, body.coupon_code, body.customer_id)
    discount = subtotal * coupon.percent_off // 100 if coupon else 0

    def build(number: str) -> Order:
        return Order(
            tenant_id=tenant_id,
            number=number,
            external_ref=external_ref,
            customer_id=body.customer_id,
            coupon_id=coupon.id if coupon else None,
            subtotal_cents=subtotal,
            discount_cents=discount,
            total_cents=subtotal - discount,
            note=body.note,
            lines=[
                OrderLine(
                    tenant_id=tenant_id,
                    position=n,
                    item_id=line.item_id,
                    quantity=line.quantity,
                    unit_price_cents=items[line.item_id].price_cents,
                )
                for n, line in enumerate(body.lines, start=1)
            ],
        )

    with integrity_errors(
        {"uq_orders_tenant_id_external_ref": lambda: Conflict(code="order.duplicate_ref")},
        metadata=Base.metadata,
    ):
        order = await insert_with_unique_number(
            session,
            build,
            constraint=NUMBER_CONSTRAINT,
            generate=_numbers(),
            columns=("tenant_id", "number"),
        )
    session.add(
        OrderStatusChange(tenant_id=tenant_id, order_id=order.id, to_status="pending", version=1)
    )
    await session.flush()
    return order


async def _load_order(session: AsyncSession, order_id: uuid.UUID) -> Order:
    order = await session.get(Order, order_id)
    if order is None:
        raise NotFound("No such order.", code="order.not_found")
    return order


async def _move(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    order_id: uuid.UUID,
    *,
    version: int,
    to: str,
    allowed_from: frozenset[str],
) -> Order:
    order = await _load_order(session, order_id)
    if order.version != version:
        raise ConcurrentModification(
            "The order changed since you read it.",
            code="order.version_conflict",
            context={"expected": version, "actual": order.version},
        )
    previous = order.status
    if previous not in allowed_from:
        raise Conflict(
            f"An order cannot go from {previous} to {to}.", code="order.invalid_transition"
        )
    updated = await update_versioned(
        session,
        Order,
        order_id,
        version,
        {"status": to},
        extra_where=[Order.tenant_id == tenant_id],  # the version guard pins the status
        not_found_code="order.not_found",
        conflict_code="order.version_conflict",
    )
    session.add(
        OrderStatusChange(
            tenant_id=tenant_id,
            order_id=order_id,
            from_status=previous,
            to_status=to,
            version=updated.version,
        )
    )
    await session.flush()
    return updated


async def transition_order(
    session: AsyncSession, tenant_id: uuid.UUID, order_id: uuid.UUID, to: str, version: int
) -> Order:
    """Move an order along its status machine, guarded by the version the client saw."""
    allowed = frozenset(s for s, targets in TRANSITIONS.items() if to in targets)
    return await _move(session, tenant_id, order_id, version=version, to=to, allowed_from=allowed)


async def ship_order(
    session: AsyncSession, tenant_id: uuid.UUID, order_id: uuid.UUID, body: ShipmentIn
) -> Shipment:
    """Mark a paid order shipped and create its shipment, in the caller's one transaction."""
    paid = frozenset({"paid"})
    await _move(session, tenant_id, order_id, version=body.version, to="shipped", allowed_from=paid)
    shipment = Shipment(
        tenant_id=tenant_id,
        order_id=order_id,
        carrier=body.carrier,
        tracking_number=body.tracking_number,
    )
    session.add(shipment)
    with integrity_errors(
        {"uq_shipments_order_id": lambda: Conflict(code="shipment.exists")},
        metadata=Base.metadata,
    ):
        await session.flush()
    return shipment


async def update_shipment(
    session: AsyncSession, tenant_id: uuid.UUID, shipment_id: uuid.UUID, to: str, version: int
) -> Shipment:
    """Change a shipment's status, guarded by its version."""
    shipment = await session.get(Shipment, shipment_id)
    if shipment is None:
        raise NotFound("No such shipment.", code="shipment.not_found")
    if to not in SHIPMENT_TRANSITIONS[shipment.status]:
        raise Conflict(
            f"A shipment cannot go from {shipment.status} to {to}.",
            code="shipment.invalid_transition",
        )
    return await update_versioned(
        session,
        Shipment,
        shipment_id,
        version,
        {"status": to},
        extra_where=[Shipment.tenant_id == tenant_id],
        not_found_code="shipment.not_found",
        conflict_code="shipment.version_conflict",
    )
