"""Request and response bodies. Unknown fields are refused everywhere (seed 002: strict pipes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from hardened.db.limits import bounded_list
from shopfront.models import MAX_ORDER_LINES

__all__ = [
    "CatalogItemIn",
    "CatalogItemOut",
    "CouponIn",
    "CouponOut",
    "CustomerIn",
    "CustomerOut",
    "ImportRow",
    "ImportSummary",
    "OrderIn",
    "OrderLineIn",
    "OrderOut",
    "Page",
    "ShipmentIn",
    "ShipmentOut",
    "ShipmentUpdate",
    "StatusChangeOut",
    "TransitionIn",
]

T = TypeVar("T")

OrderStatus = Literal["pending", "paid", "shipped", "delivered", "cancelled"]
ShipmentStatus = Literal["label_created", "in_transit", "delivered", "returned"]
# A syntactic check only (no DNS), lower-cased so uniqueness is case-insensitive.
EmailStr = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=320, pattern=r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$"
    ),
    AfterValidator(str.lower),
]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class CustomerIn(_In):
    email: EmailStr
    name: Name


class CustomerOut(_Out):
    id: uuid.UUID
    email: str
    name: str
    created_at: datetime


class CatalogItemIn(_In):
    kind: Literal["plan", "addon", "installation"]
    sku: Code
    name: Name
    price_cents: int = Field(ge=0, le=100_000_000)


class CatalogItemOut(_Out):
    id: uuid.UUID
    kind: str
    sku: str
    name: str
    price_cents: int


class CouponIn(_In):
    code: Code
    percent_off: int = Field(ge=1, le=100)
    usage_limit: int = Field(ge=1, le=10_000_000)
    per_customer_limit: int | None = Field(default=None, ge=1)
    valid_from: datetime | None = None
    valid_until: datetime | None = None


class CouponOut(_Out):
    id: uuid.UUID
    code: str
    percent_off: int
    usage_limit: int
    used: int
    per_customer_limit: int | None
    valid_from: datetime | None
    valid_until: datetime | None


class OrderLineIn(_In):
    item_id: uuid.UUID
    quantity: int = Field(ge=1, le=1000)


class OrderIn(_In):
    customer_id: uuid.UUID
    lines: bounded_list(OrderLineIn, MAX_ORDER_LINES)  # type: ignore[valid-type]
    coupon_code: Code | None = None
    note: Annotated[str, StringConstraints(max_length=500)] | None = None


class OrderLineOut(_Out):
    position: int
    item_id: uuid.UUID
    quantity: int
    unit_price_cents: int


class OrderOut(_Out):
    id: uuid.UUID
    number: str
    customer_id: uuid.UUID
    status: str
    version: int
    subtotal_cents: int
    discount_cents: int
    total_cents: int
    coupon_id: uuid.UUID | None
    note: str | None
    created_at: datetime
    lines: list[OrderLineOut]


class StatusChangeOut(_Out):
    version: int
    from_status: str | None
    to_status: str
    at: datetime


class TransitionIn(_In):
    to: OrderStatus
    version: int = Field(ge=1, description="The order version the client last saw.")


class ShipmentIn(_In):
    carrier: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
    tracking_number: Annotated[str, StringConstraints(max_length=100)] | None = None
    version: int = Field(ge=1, description="The order version the client last saw.")


class ShipmentUpdate(_In):
    status: ShipmentStatus
    version: int = Field(ge=1)


class ShipmentOut(_Out):
    id: uuid.UUID
    order_id: uuid.UUID
    carrier: str
    tracking_number: str | None
    status: str
    version: int


class ImportRow(BaseModel):
    """One CSV row of a bulk order import: one order with one line."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_ref: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    customer_email: EmailStr
    sku: Code
    quantity: int = Field(ge=1, le=1000)
    note: Annotated[str, StringConstraints(max_length=500)] | None = None


class ImportSummary(BaseModel):
    imported: int
    rows_read: int
