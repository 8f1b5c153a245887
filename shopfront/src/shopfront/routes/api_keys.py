"""The shop's API keys: create, list, rotate with an overlap, revoke (see `services.api_keys`).

Nobody makes, rotates or revokes a key whose role is above their own, so an
admin can neither mint an owner key nor take one away.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hardened.errors import Forbidden, NotFound
from shopfront.models import ApiKey
from shopfront.pagination import Cursor, Limit, next_cursor, page_query
from shopfront.permissions import allow, grants_up_to
from shopfront.schemas import KeyName, Page
from shopfront.services import api_keys
from shopfront.tenant_auth import Tenancy, TenantRequest

__all__ = ["router"]

router = APIRouter(prefix="/api-keys", tags=["api keys"], dependencies=[allow("api_keys:manage")])

Role = Literal["read_only", "staff", "admin", "owner"]
MAX_LIFETIME = 5 * 365 * 86_400


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName
    role: Role
    expires_in: Annotated[int, Field(ge=60, le=MAX_LIFETIME)] | None = Field(
        default=None, description="Seconds until the key expires (default: never)."
    )


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap: int = Field(
        default=86_400, ge=0, le=30 * 86_400, description="Seconds the old key keeps working."
    )


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    replaced_by: uuid.UUID | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="Shown once; only its hash is kept.")


def _may_handle(tenancy: TenantRequest, role: str) -> None:
    if not grants_up_to(tenancy.identity.role, role):
        raise Forbidden("This key's role is above your own.", code="member.role_too_high")


async def _key(tenancy: TenantRequest, key_id: uuid.UUID) -> ApiKey:
    row = await tenancy.session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("No such API key.", code="api_key.not_found")
    _may_handle(tenancy, row.role)
    return row


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_key(body: ApiKeyIn, tenancy: Tenancy) -> ApiKeyCreated:
    """A new key with a role up to your own (shown once)."""
    _may_handle(tenancy, body.role)
    expires = None
    if body.expires_in is not None:
        expires = datetime.now(UTC) + timedelta(seconds=body.expires_in)
    async with tenancy.session.begin():
        made = await api_keys.create_key(
            tenancy.session,
            tenancy.tenant_id,
            name=body.name,
            role=body.role,
            created_by=str(tenancy.identity.principal),
            expires_at=expires,
        )
    return ApiKeyCreated(**ApiKeyOut.model_validate(made.row).model_dump(), key=made.key)


@router.get("")
async def list_keys(tenancy: Tenancy, limit: Limit = 50, cursor: Cursor = None) -> Page[ApiKeyOut]:
    """The shop's keys, newest first (never the keys themselves)."""
    rows = (await tenancy.session.scalars(page_query(select(ApiKey), ApiKey, limit, cursor))).all()
    items = [ApiKeyOut.model_validate(k) for k in rows[:limit]]
    return Page[ApiKeyOut](items=items, next_cursor=next_cursor(rows, limit))


@router.post("/{key_id}/rotate", status_code=status.HTTP_201_CREATED)
async def rotate_key(key_id: uuid.UUID, body: RotateIn, tenancy: Tenancy) -> ApiKeyCreated:
    """A successor key; the old one keeps working for ``overlap`` seconds, then expires."""
    async with tenancy.session.begin():
        await _key(tenancy, key_id)
        _, made = await api_keys.rotate_key(
            tenancy.session,
            key_id,
            overlap=timedelta(seconds=body.overlap),
            created_by=str(tenancy.identity.principal),
        )
    return ApiKeyCreated(**ApiKeyOut.model_validate(made.row).model_dump(), key=made.key)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_key(key_id: uuid.UUID, tenancy: Tenancy) -> None:
    """Stop a key at once."""
    async with tenancy.session.begin():
        await _key(tenancy, key_id)
        await api_keys.revoke_key(tenancy.session, key_id)
