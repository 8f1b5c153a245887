"""The one batch loop behind re-encryption and plaintext migration.

Each batch is its own transaction: select up to ``batch`` rows that still
need the change (keyset pagination by id; ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so two runners share the work and a runner never waits on a row
the application holds), transform them in Python, update them, commit. A run
killed at any point loses at most its open batch, which rolls back; the next
run selects by the same condition, so it picks up exactly the rows not yet
done: nothing skipped, nothing done twice. Rows skipped because they were
locked are retried by further passes until a pass from the start finds none.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select, update

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from sqlalchemy import ColumnElement, Row
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.expression import TableClause

__all__ = ["BatchConfig", "Progress", "run_batches"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a batch command is: ``done`` of ``total`` rows of ``table`` (``task``)."""

    task: str
    table: str
    done: int
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """Rows per transaction and an optional throttle (rows per second, None: unthrottled)."""

    batch: int = 500
    rows_per_second: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= 10_000:
            raise ValueError("batch must be in [1, 10000]")
        if self.rows_per_second is not None and self.rows_per_second <= 0:
            raise ValueError("rows_per_second must be positive")


async def run_batches(
    engine: AsyncEngine,
    *,
    task: str,
    table: TableClause,
    columns: Sequence[ColumnElement[Any]],
    where: Sequence[ColumnElement[bool]],
    sets: Sequence[str],
    transform: Callable[[AsyncConnection, Sequence[Row[Any]]], Awaitable[list[dict[str, Any]]]],
    config: BatchConfig,
    progress: Callable[[Progress], None] | None = None,
) -> int:
    """Apply ``transform`` to every row matching ``where``; returns how many rows changed.

    ``transform`` returns one dict per row with ``_id`` and a value for each
    column named in ``sets``; the update is guarded by ``where`` again, so a
    row changed meanwhile by someone else is left alone.
    """
    ident = table.c.id
    async with engine.connect() as conn:
        total = int(
            (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()
        )
    statement = (
        update(table)
        .where(ident == bindparam("_id"), *where)
        .values({name: bindparam(name) for name in sets})
    )
    done, after = 0, None
    started = time.monotonic()
    if progress is not None:
        progress(Progress(task, table.name, 0, total))
    while True:
        async with engine.begin() as conn:
            query = select(ident, *columns).where(*where).order_by(ident).limit(config.batch)
            if after is not None:
                query = query.where(ident > after)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await conn.execute(query)).all()
            if rows:
                params = await transform(conn, rows)
                if params:
                    await conn.execute(
                        statement.execution_options(synchronize_session=False), params
                    )
        if not rows:
            if after is None:
                return done
            after = None  # another pass for rows that were locked
            continue
        after = rows[-1][0]
        done += len(rows)
        if progress is not None:
            progress(Progress(task, table.name, done, max(total, done)))
        if config.rows_per_second is not None:
            ahead = done / config.rows_per_second - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
