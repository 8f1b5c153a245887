"""Members of the shop and invitations to join it (owners and admins; see `services.members`)."""

import uuid
from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from shopfront.auth import revoke_sessions
from shopfront.models import Invitation, User
from shopfront.pagination import Cursor, Limit, next_cursor, page_query
from shopfront.permissions import allow
from shopfront.schemas import EmailStr, Page
from shopfront.services import members
from shopfront.tenant_auth import Tenancy

__all__ = ["invitations", "router"]

router = APIRouter(prefix="/members", tags=["members"])
invitations = APIRouter(prefix="/invitations", tags=["members"])

Role = Literal["read_only", "staff", "admin", "owner"]


class MemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    created_at: datetime


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


class InvitationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    role: Role


class InvitationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None


class InvitationCreated(InvitationOut):
    token: str
    """Shown once (and sent to the invitee): it is the only way to accept the invitation."""


@router.get("", dependencies=[allow("members:read")])
async def list_members(
    tenancy: Tenancy, limit: Limit = 50, cursor: Cursor = None
) -> Page[MemberOut]:
    """The shop's members and their roles, newest first."""
    rows = (await tenancy.session.scalars(page_query(select(User), User, limit, cursor))).all()
    items = [MemberOut.model_validate(u) for u in rows[:limit]]
    return Page[MemberOut](items=items, next_cursor=next_cursor(rows, limit))


@router.patch("/{user_id}", dependencies=[allow("members:manage")])
async def change_role(user_id: uuid.UUID, body: RoleIn, tenancy: Tenancy) -> MemberOut:
    """Give a member another role (up to your own; owners only by owners); signs them out."""
    async with tenancy.session.begin():
        user, changed = await members.change_role(
            tenancy.session, user_id, role=body.role, caller_role=tenancy.identity.role
        )
    if changed:
        await revoke_sessions(tenancy.state.auth, str(user.id))
    return MemberOut.model_validate(user)


@router.delete(
    "/{user_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[allow("members:manage")]
)
async def remove_member(user_id: uuid.UUID, tenancy: Tenancy) -> None:
    """Remove a member (never the last owner); their sessions end at once."""
    async with tenancy.session.begin():
        await members.remove_member(tenancy.session, user_id, caller_role=tenancy.identity.role)
    await revoke_sessions(tenancy.state.auth, str(user_id))


@invitations.post("", status_code=status.HTTP_201_CREATED, dependencies=[allow("members:manage")])
async def invite(body: InvitationIn, tenancy: Tenancy) -> InvitationCreated:
    """Invite someone to join with a role; the token goes to their email and is shown once."""
    state = tenancy.state
    async with tenancy.session.begin():
        row, token = await members.invite(
            state.auth,
            tenancy.session,
            tenancy.tenant_id,
            email=body.email,
            role=body.role,
            caller_role=tenancy.identity.role,
            created_by=str(tenancy.identity.principal),
            ttl=timedelta(seconds=state.settings.invitation_ttl),
        )
        domain = await members.shop_domain(tenancy.session, tenancy.tenant_id)
    await state.mailer.invitation(shop=domain, email=row.email, token=token)
    return InvitationCreated(**InvitationOut.model_validate(row).model_dump(), token=token)


@invitations.get("", dependencies=[allow("members:read")])
async def list_invitations(
    tenancy: Tenancy, limit: Limit = 50, cursor: Cursor = None
) -> Page[InvitationOut]:
    """Invitations, newest first (accepted ones show when)."""
    stmt = page_query(select(Invitation), Invitation, limit, cursor)
    rows = (await tenancy.session.scalars(stmt)).all()
    items = [InvitationOut.model_validate(i) for i in rows[:limit]]
    return Page[InvitationOut](items=items, next_cursor=next_cursor(rows, limit))


@invitations.delete(
    "/{invitation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[allow("members:manage")],
)
async def revoke_invitation(invitation_id: uuid.UUID, tenancy: Tenancy) -> None:
    """Withdraw a pending invitation."""
    async with tenancy.session.begin():
        await members.revoke_invitation(tenancy.session, invitation_id)
