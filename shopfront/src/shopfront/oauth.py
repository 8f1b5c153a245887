"""Linked OAuth accounts: the provider's tokens, stored only encrypted.

The sign-in flow with a provider (redirect, code exchange) is not part of the
service yet; what it hands over is stored here, and the members' list of
linked accounts never shows a token.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import select

from shopfront.models import OAuthAccount

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["link_account", "linked_accounts"]


async def link_account(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    provider: str,
    subject: str,
    access_token: str,
    refresh_token: str | None,
    expires_at: datetime | None,
) -> OAuthAccount:
    """Link (or refresh the tokens of) the member's account at ``provider``."""
    async with session.begin():
        account = (
            await session.execute(
                select(OAuthAccount).where(
                    OAuthAccount.provider == provider, OAuthAccount.subject == subject
                )
            )
        ).scalar_one_or_none()
        if account is None:
            account = OAuthAccount(
                id=uuid.uuid4(), user_id=user_id, provider=provider, subject=subject
            )
            session.add(account)
        account.access_token = access_token
        account.refresh_token = refresh_token
        account.expires_at = expires_at
    return account


async def linked_accounts(session: AsyncSession, user_id: uuid.UUID) -> list[OAuthAccount]:
    """The member's linked accounts."""
    async with session.begin():
        rows = await session.scalars(select(OAuthAccount).where(OAuthAccount.user_id == user_id))
        return list(rows.all())
