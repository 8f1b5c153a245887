"""Operator commands that act on a shop: open one with its owner and an API key, add credits.

Both run the service's own components (`create_app` and its lifespan), so a
shop opened here is validated, hashed and scoped exactly as ``POST /tenants``
does it. Granting credits is what the payment webhook will do; until then the
wallet and SIM journeys need credits from somewhere, so ``top-up`` exists in
development only and every use is a ``security.credits_granted`` warning naming
who ran it.
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from hardened.config import ConfigError, SettingProblem
from hardened.db import run_transaction, tenant_session
from hardened.errors import HardenedError, ValidationFailed
from shopfront.app import create_app
from shopfront.schemas import Domain, EmailStr, Name, Password
from shopfront.services import accounts, api_keys

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

    from shopfront.settings import Settings
    from shopfront.state import AppState

__all__ = ["AdminError", "NewShop", "create_shop", "top_up"]

_log = structlog.get_logger("shopfront.admin")
T = TypeVar("T")


class AdminError(Exception):
    """A command the service refused: the message is for the operator's terminal."""


@dataclass(frozen=True, slots=True)
class NewShop:
    tenant_id: uuid.UUID
    domain: str
    owner_id: uuid.UUID
    owner_email: str
    api_key: str
    api_key_role: str


class _ShopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    domain: Domain
    owner_email: EmailStr
    owner_password: Password


async def _with_state(settings: Settings, work: Callable[[AppState], Awaitable[T]]) -> T:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state: AppState = app.state.shopfront
        try:
            return await work(state)
        except HardenedError as exc:
            raise AdminError(f"{exc.code}: {exc}") from None


def create_shop(
    settings: Settings,
    *,
    name: str,
    domain: str,
    owner_email: str,
    owner_password: str,
    key_role: str = "admin",
) -> NewShop:
    """The shop, its owner and one API key with ``key_role`` (shown once, stored hashed)."""
    try:
        body = _ShopIn(
            name=name, domain=domain, owner_email=owner_email, owner_password=owner_password
        )
        clean = accounts.shop_domain(body.domain, settings.tenant_domain_suffixes)
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
        raise AdminError(f"invalid {fields}") from None
    except ValidationFailed as exc:
        raise AdminError("; ".join(e.msg for e in exc.errors)) from None

    async def work(state: AppState) -> NewShop:
        tenant, owner = await accounts.create_shop(
            state.auth,
            state.db.sessions,
            name=body.name,
            domain=clean,
            owner_email=body.owner_email,
            owner_password=body.owner_password,
        )

        async def add_key(session: AsyncSession) -> api_keys.NewKey:
            return await api_keys.create_key(
                session,
                tenant.id,
                name="created by shopfront create-shop",
                role=key_role,
                created_by=str(owner.id),
            )

        new = await run_transaction(lambda: tenant_session(state.db.sessions, tenant.id), add_key)
        return NewShop(tenant.id, tenant.domain, owner.id, owner.email, new.key, key_role)

    return asyncio.run(_with_state(settings, work))


def top_up(settings: Settings, *, domain: str, amount: int) -> int:
    """Grant ``amount`` credits to the shop's wallet (development only); the new balance."""
    if not settings.is_development:
        raise ConfigError(
            [SettingProblem("ENVIRONMENT", "top-up grants free credits: development only")]
        )
    if amount <= 0:
        raise AdminError("amount must be a positive number of credits")

    async def work(state: AppState) -> int:
        tenant_id = await accounts.shop_id(state.db.sessions, domain)
        key = f"cli-top-up:{uuid.uuid4()}"

        async def grant(session: AsyncSession) -> int:
            wallet = await state.ledger.open_account(session, str(tenant_id))
            await state.ledger.top_up(session, wallet, amount, key)
            return (await state.ledger.balance(session, wallet)).available

        balance = await run_transaction(lambda: tenant_session(state.db.sessions, tenant_id), grant)
        _log.warning(
            "security.credits_granted",
            security_event=True,
            tenant_id=str(tenant_id),
            amount=amount,
            balance=balance,
            operation_key=key,
            by=getpass.getuser(),
        )
        return balance

    return asyncio.run(_with_state(settings, work))
