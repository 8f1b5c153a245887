"""Periodic housekeeping: expired credit holds go back to wallets, old idempotency records go.

Runs in every worker's lifespan every ``HOUSEKEEPING_INTERVAL`` seconds (0
turns it off, e.g. when a job runner does it). Several workers running it at
once is safe: both steps lock with ``SKIP LOCKED`` on PostgreSQL, and a hold
is released exactly once (its status changes with the release). A failing
round is logged and retried next round; it never takes the worker down.
Jobs move to procrastinate with the jobs issue.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from hardened.db.transaction import run_transaction

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from shopfront.state import AppState

__all__ = ["Swept", "housekeeping", "sweep"]

_log = structlog.get_logger("shopfront.housekeeping")


@dataclass(frozen=True, slots=True)
class Swept:
    holds_released: int
    keys_purged: int


async def sweep(state: AppState, *, now: datetime | None = None) -> Swept:
    """One round: release expired holds, purge idempotency records past retention."""

    async def release(session: AsyncSession) -> int:
        return await state.ledger.release_expired(session, now=now)

    released = await run_transaction(state.db.sessions, release)
    purged = await state.idempotency.purge_expired()
    if released or purged:
        _log.info("housekeeping.swept", holds_released=released, keys_purged=purged)
    return Swept(released, purged)


@contextlib.asynccontextmanager
async def housekeeping(state: AppState) -> AsyncIterator[None]:
    """Run `sweep` in the background for the lifespan of the app."""
    interval = state.settings.housekeeping_interval
    if interval <= 0:
        yield
        return

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await sweep(state)
            except Exception:  # noqa: BLE001 - logged; the next round retries
                _log.exception("housekeeping.failed")

    task = asyncio.create_task(loop(), name="shopfront-housekeeping")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
