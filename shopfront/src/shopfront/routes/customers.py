"""Customers of a shop."""

import uuid

from fastapi import APIRouter, status
from sqlalchemy import select

from hardened.db.integrity import integrity_errors
from hardened.errors import Conflict, NotFound
from shopfront.models import Base, Customer
from shopfront.pagination import Cursor, Limit, next_cursor, page_query
from shopfront.permissions import allow
from shopfront.schemas import CustomerIn, CustomerOut, Page
from shopfront.tenant_auth import Tenancy

__all__ = ["router"]

router = APIRouter(prefix="/customers", tags=["customers"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[allow("customers:write")])
async def create_customer(body: CustomerIn, tenancy: Tenancy) -> CustomerOut:
    """Add a customer; emails are unique per shop (compared lower-cased)."""
    customer = Customer(tenant_id=tenancy.tenant_id, email=body.email.lower(), name=body.name)
    async with tenancy.session.begin():
        tenancy.session.add(customer)
        with integrity_errors(
            {"uq_customers_tenant_id_email": lambda: Conflict(code="customer.email_taken")},
            metadata=Base.metadata,
        ):
            await tenancy.session.flush()
    return CustomerOut.model_validate(customer)


@router.get("", dependencies=[allow("customers:read")])
async def list_customers(
    tenancy: Tenancy, limit: Limit = 50, cursor: Cursor = None
) -> Page[CustomerOut]:
    """Customers, newest first."""
    rows = (
        await tenancy.session.scalars(page_query(select(Customer), Customer, limit, cursor))
    ).all()
    items = [CustomerOut.model_validate(c) for c in rows[:limit]]
    return Page[CustomerOut](items=items, next_cursor=next_cursor(rows, limit))


@router.get("/{customer_id}", dependencies=[allow("customers:read")])
async def get_customer(customer_id: uuid.UUID, tenancy: Tenancy) -> CustomerOut:
    """One customer of this shop."""
    customer = await tenancy.session.get(Customer, customer_id)
    if customer is None:
        raise NotFound("No such customer.", code="customer.not_found")
    return CustomerOut.model_validate(customer)
