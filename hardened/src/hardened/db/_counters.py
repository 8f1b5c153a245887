"""Counters whose bound is checked by the ``UPDATE`` or upsert itself (the coupon pattern).

Reading a count and writing it back lets concurrent requests overshoot a limit;
one conditional statement cannot, and "no row returned" means "refused".
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, and_, bindparam, inspect, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import QueryableAttribute

from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy import Column, ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import InstrumentedAttribute
    from sqlalchemy.sql.base import ReadOnlyColumnCollection
    from sqlalchemy.sql.dml import ReturningInsert, Update
    from sqlalchemy.sql.elements import SQLColumnExpression

__all__ = ["conditional_increment", "upsert_increment"]

_REFUSED = counter(
    "db_conditional_refused_total",
    "Conditional increments refused by their ceiling or condition, by table.",
    ["table"],
)

_AMOUNT, _CEILING, _FLOOR = "hardened_amount", "hardened_ceiling", "hardened_floor"
_TEMPLATES: dict[tuple[int, int, int], tuple[tuple[object, ...], Update]] = {}
_TEMPLATES_LOCK = threading.Lock()
_UNCACHEABLE = object()


async def conditional_increment(
    session: AsyncSession,
    column: InstrumentedAttribute[int],
    *,
    where: Sequence[SQLColumnExpression[bool]],
    ceiling: SQLColumnExpression[int] | int | None = None,
    amount: int = 1,
    floor: SQLColumnExpression[int] | int | None = None,
) -> int | None:
    """Add ``amount`` to ``column`` in the row ``where`` selects, if the result fits.

    ``UPDATE t SET col = col + :amount WHERE <where> AND col + :amount <=
    ceiling [AND col + :amount >= floor] RETURNING col``: the new value, or
    None when the condition or the bounds refused it (nothing changed). The
    ceiling may be a column (``Coupon.usage_limit``); a NULL ceiling refuses.
    ``where`` must select at most one row; if it matches several,
    ``MultipleResultsFound`` is raised and the transaction must roll back.
    """
    if not where:
        msg = "conditional_increment() needs a where clause selecting one row"
        raise ValueError(msg)
    params: dict[str, int] = {_AMOUNT: amount}
    if isinstance(ceiling, int):
        params[_CEILING] = ceiling
    if isinstance(floor, int):
        params[_FLOOR] = floor
    stmt = _increment_template(column, ceiling, floor).where(*where)
    result = await session.execute(stmt, params)
    value: int | None = result.scalar_one_or_none()
    if value is None:
        _REFUSED.labels(table=inspect(column.class_).local_table.name).inc()
    return value


def _bound_key(bound: object) -> object:
    # Only class-level attributes are cached: an expression built per call
    # would make the cache grow without bound.
    if bound is None or isinstance(bound, int):
        return type(bound)
    return bound if isinstance(bound, QueryableAttribute) else _UNCACHEABLE


def _increment_template(
    column: InstrumentedAttribute[int],
    ceiling: SQLColumnExpression[int] | int | None,
    floor: SQLColumnExpression[int] | int | None,
) -> Update:
    """``UPDATE … SET col = col + :amount WHERE <bounds> RETURNING col``, built once per shape.

    Building the statement costs about as much as executing it on a hot row;
    the per-call part is only the caller's ``where`` and the bound values.
    Keys are identities (``==`` on attributes builds SQL), kept alive by the
    entry so an id cannot be reused while it is cached.
    """
    parts = (column, _bound_key(ceiling), _bound_key(floor))
    cacheable = all(p is not _UNCACHEABLE for p in parts)
    key = (id(parts[0]), id(parts[1]), id(parts[2]))
    entry = _TEMPLATES.get(key) if cacheable else None
    if entry is not None and all(a is b for a, b in zip(entry[0], parts, strict=True)):
        return entry[1]
    target = inspect(column.class_).columns[column.key]
    if not isinstance(target.table, Table):
        msg = f"{column!r} is not a column of a table"
        raise TypeError(msg)
    new_value = target + bindparam(_AMOUNT, type_=target.type)
    bounds: list[ColumnElement[bool]] = []
    if ceiling is not None:
        limit = bindparam(_CEILING, type_=target.type) if isinstance(ceiling, int) else ceiling
        bounds.append(new_value <= limit)
    if floor is not None:
        low = bindparam(_FLOOR, type_=target.type) if isinstance(floor, int) else floor
        bounds.append(new_value >= low)
    # The target is the Table, so the ORM runs it as a Core statement (no ORM
    # RETURNING loading); the caller's ORM-attribute ``where`` still makes it an
    # ORM-enabled UPDATE of the mapper, so do_orm_execute hooks (the tenancy
    # guard) see and check it.
    stmt = update(target.table).values({target: new_value}).returning(target)
    if bounds:
        stmt = stmt.where(*bounds)
    if cacheable:
        with _TEMPLATES_LOCK:
            _TEMPLATES.setdefault(key, (parts, stmt))
    return stmt


def _columns_of(
    table_or_model: Table | type[Any],
) -> tuple[Table | type[Any], ReadOnlyColumnCollection[str, Column[Any]]]:
    """The insert target and its columns by name (attribute keys for a model)."""
    if isinstance(table_or_model, Table):
        return table_or_model, table_or_model.c
    return table_or_model, inspect(table_or_model).columns


async def upsert_increment(
    session: AsyncSession,
    table_or_model: Table | type[Any],
    *,
    key: Mapping[str, Any],
    column: str,
    ceiling: int,
    amount: int = 1,
    values: Mapping[str, Any] | None = None,
    where: Sequence[SQLColumnExpression[bool]] = (),
) -> int | None:
    """Count per key (e.g. redemptions per coupon and customer) up to ``ceiling``.

    ``INSERT (key…, column) VALUES (…, :amount) ON CONFLICT (key…) DO UPDATE
    SET column = t.column + :amount WHERE t.column + :amount <= :ceiling
    [AND where…] RETURNING column``: the new count, or None when the ceiling
    refused it. ``key`` and ``values`` (other columns of a new row) are
    attribute names of a model (column names of a Table); the key columns must
    carry a unique constraint. A model makes it an ORM-enabled insert, so
    session hooks (tenant stamping) apply; ``where`` adds terms to the
    ``DO UPDATE`` condition, e.g. the tenant pin a tenancy guard asks for.
    PostgreSQL and SQLite.
    """
    if amount < 1:
        msg = "amount must be >= 1"
        raise ValueError(msg)
    target, columns = _columns_of(table_or_model)
    counted = columns[column]
    table_name = counted.table.name
    if amount > ceiling:
        _REFUSED.labels(table=table_name).inc()
        return None
    row = {columns[name]: value for name, value in {**(values or {}), **key}.items()}
    row[counted] = amount
    conflict: dict[str, Any] = {
        "index_elements": [columns[name] for name in key],
        "set_": {counted: counted + amount},
        "where": and_(counted + amount <= ceiling, *where),
    }
    dialect = session.get_bind().dialect.name
    stmt: ReturningInsert[int]
    if dialect == "postgresql":
        stmt = pg_insert(target).values(row).on_conflict_do_update(**conflict).returning(counted)
    elif dialect == "sqlite":
        stmt = (
            sqlite_insert(target).values(row).on_conflict_do_update(**conflict).returning(counted)
        )
    else:
        msg = f"upsert_increment() is not implemented for {dialect}"
        raise NotImplementedError(msg)
    value: int | None = (await session.execute(stmt)).scalar_one_or_none()
    if value is None:
        _REFUSED.labels(table=table_name).inc()
    return value
