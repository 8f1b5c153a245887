"""Request and response bodies. Unknown fields are refused everywhere (seed 002: strict pipes).

Every string a client sends is a `hardened.fields.text` (no NUL, no lone
surrogates: PostgreSQL refuses the first, JSON encoders the second), every
integer is bounded to its column's type, every datetime must carry a
timezone: a client cannot hand the database a value it refuses, so no input
becomes a 500. ``tests/test_schemas.py`` walks every route to keep it so.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from hardened.fields import AwareDatetime, int_between, text
from shopfront.models import MAX_ORDER_LINES

__all__ = [
    "Carrier",
    "CatalogItemIn",
    "CatalogItemOut",
    "Code",
    "CouponIn",
    "CouponOut",
    "CustomerIn",
    "CustomerOut",
    "Domain",
    "EmailStr",
    "ExternalRef",
    "ImportRow",
    "ImportSummary",
    "KeyName",
    "Name",
    "Note",
    "OrderIn",
    "OrderLineIn",
    "OrderOut",
    "Page",
    "Password",
    "ShipmentIn",
    "ShipmentOut",
    "ShipmentUpdate",
    "ShopDomain",
    "StatusChangeOut",
    "Token",
    "TrackingNumber",
    "TransitionIn",
    "Version",
]

T = TypeVar("T")

OrderStatus = Literal["pending", "paid", "shipped", "delivered", "cancelled"]
ShipmentStatus = Literal["label_created", "in_transit", "delivered", "returned"]
# A syntactic check only (no DNS), lower-cased so uniqueness is case-insensitive.
EmailStr = Annotated[
    str, text(max_length=320, pattern=r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$", lower=True)
]
Code = Annotated[str, text(min_length=1, max_length=64)]
Name = Annotated[str, text(min_length=1, max_length=200)]
Note = Annotated[str, text(max_length=500, strip=False, multiline=True)]
Domain = Annotated[str, text(min_length=1, max_length=300)]
ShopDomain = Annotated[str, text(min_length=1, max_length=253)]
KeyName = Annotated[str, text(min_length=1, max_length=100)]
Password = Annotated[str, text(min_length=1, max_length=1024, strip=False)]
Token = Annotated[str, text(min_length=1, max_length=512)]
Carrier = Annotated[str, text(min_length=1, max_length=50)]
TrackingNumber = Annotated[str, text(max_length=100)]
ExternalRef = Annotated[str, text(min_length=1, max_length=100)]
Version = Annotated[int, int_between(1), Field(description="The version the client last saw.")]


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
    price_cents: Annotated[int, int_between(0, 100_000_000)]


class CatalogItemOut(_Out):
    id: uuid.UUID
    kind: str
    sku: str
    name: str
    price_cents: int


class CouponIn(_In):
    code: Code
    percent_off: Annotated[int, int_between(1, 100)]
    usage_limit: Annotated[int, int_between(1, 10_000_000)]
    per_customer_limit: Annotated[int, int_between(1)] | None = None
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None


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
    quantity: Annotated[int, int_between(1, 1000)]


class OrderIn(_In):
    customer_id: uuid.UUID
    lines: Annotated[list[OrderLineIn], Field(min_length=1, max_length=MAX_ORDER_LINES)]
    coupon_code: Code | None = None
    note: Note | None = None


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
    version: Version


class ShipmentIn(_In):
    carrier: Carrier
    tracking_number: TrackingNumber | None = None
    version: Version


class ShipmentUpdate(_In):
    status: ShipmentStatus
    version: Version


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

    external_ref: ExternalRef
    customer_email: EmailStr
    sku: Code
    quantity: Annotated[int, int_between(1, 1000)]
    note: Note | None = None


class ImportSummary(BaseModel):
    imported: int
    rows_read: int
