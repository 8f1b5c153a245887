"""Coupons: limits are enforced by the database when an order redeems one."""

import uuid

from fastapi import APIRouter, status

from hardened.db.integrity import integrity_errors
from hardened.errors import Conflict, FieldError, NotFound, ValidationFailed
from shopfront.models import Base, Coupon
from shopfront.permissions import allow
from shopfront.schemas import CouponIn, CouponOut
from shopfront.tenant_auth import Tenancy

__all__ = ["router"]

router = APIRouter(prefix="/coupons", tags=["coupons"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[allow("coupons:write")])
async def create_coupon(body: CouponIn, tenancy: Tenancy) -> CouponOut:
    """Create a coupon; codes are unique per shop."""
    if body.valid_from and body.valid_until and body.valid_until <= body.valid_from:
        raise ValidationFailed(
            errors=[FieldError(("body", "valid_until"), "must be after valid_from", "value_error")]
        )
    coupon = Coupon(tenant_id=tenancy.tenant_id, used=0, **body.model_dump())
    async with tenancy.session.begin():
        tenancy.session.add(coupon)
        with integrity_errors(
            {"uq_coupons_tenant_id_code": lambda: Conflict(code="coupon.code_taken")},
            metadata=Base.metadata,
        ):
            await tenancy.session.flush()
    return CouponOut.model_validate(coupon)


@router.get("/{coupon_id}", dependencies=[allow("coupons:read")])
async def get_coupon(coupon_id: uuid.UUID, tenancy: Tenancy) -> CouponOut:
    """One coupon of this shop, with its current usage."""
    coupon = await tenancy.session.get(Coupon, coupon_id)
    if coupon is None:
        raise NotFound("No such coupon.", code="coupon.not_found")
    return CouponOut.model_validate(coupon)
