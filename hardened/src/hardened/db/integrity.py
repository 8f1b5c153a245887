"""Write patterns that stay correct under concurrency, enforced by the database.

Why: the seeds' worst bugs were read-modify-write races (a coupon redeemed
past its limit, two orders with the same number, a status change lost to a
concurrent one). Each has the same cure: let one SQL statement decide, with
the condition in its ``WHERE`` (or a unique constraint), and turn "no row" or
"constraint violated" into a typed error the client can act on.

* `update_versioned` — optimistic locking: ``UPDATE … SET …, version =
  version + 1 WHERE pk = :id AND version = :expected RETURNING *``; zero rows
  is `NotFound` or `ConcurrentModification` (409). `optimistic` maps
  SQLAlchemy's ``StaleDataError`` (``version_id_col`` users) the same way.
* `conditional_increment` / `upsert_increment` — the coupon pattern: the
  ceiling is checked by the ``UPDATE`` itself, never read first. Objects
  already loaded in the session are not refreshed: use the returned value.
* `insert_with_unique_number` — random human-facing numbers, retried in a
  savepoint on a unique violation of the named constraint only.
* `integrity_errors` / `constraint_name` — constraint violations → library
  errors by constraint name.

PostgreSQL names the violated constraint; SQLite reports a UNIQUE violation
only as ``table.column`` pairs, so on SQLite a unique constraint is matched
by resolving its name to columns in the model's metadata (or a ``columns=``
hint). On SQLite, savepoints need `sqlite_immediate_transactions`.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Index,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, QueryableAttribute, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from hardened.db.transaction import has_immediate_transactions
from hardened.errors import ConcurrentModification, Conflict, HardenedError, NotFound
from hardened.observability._metrics import counter

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from sqlalchemy import Column, MetaData
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import InstrumentedAttribute
    from sqlalchemy.sql.base import ReadOnlyColumnCollection
    from sqlalchemy.sql.dml import ReturningInsert, Update
    from sqlalchemy.sql.elements import SQLColumnExpression

__all__ = [
    "CROCKFORD32",
    "Versioned",
    "conditional_increment",
    "constraint_name",
    "human_number",
    "insert_with_unique_number",
    "integrity_errors",
    "optimistic",
    "update_versioned",
    "upsert_increment",
]

T = TypeVar("T")
V = TypeVar("V", bound="Versioned")

#: Crockford's base32: no I, L, O, U, so numbers read aloud or typed survive.
CROCKFORD32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_CONFLICT_DETAIL = "The resource was changed by someone else; reload it and try again."

_CONFLICTS = counter(
    "db_concurrent_modifications_total",
    "Optimistic-lock conflicts (409), by table.",
    ["table"],
)
_REFUSED = counter(
    "db_conditional_refused_total",
    "Conditional increments refused by their ceiling or condition, by table.",
    ["table"],
)
_NUMBER_RETRIES = counter(
    "db_unique_number_retries_total",
    "Generated numbers that collided and were drawn again, by constraint.",
    ["constraint"],
)
_NUMBER_EXHAUSTED = counter(
    "db_unique_number_exhausted_total",
    "Inserts that ran out of attempts to draw a unique number, by constraint.",
    ["constraint"],
)


class Versioned:
    """Mixin: a ``version`` column that every guarded update compares and bumps."""

    version: Mapped[int] = mapped_column(nullable=False, default=1, server_default=text("1"))


# --- optimistic locking ---------------------------------------------------------------


def _pk_criteria(model: type[Any], ident: Any) -> list[ColumnElement[bool]]:
    mapper = inspect(model)
    columns = list(mapper.primary_key)
    if isinstance(ident, Mapping):
        values = [ident[mapper.get_property_by_column(c).key] for c in columns]
    elif len(columns) == 1 and not isinstance(ident, tuple):
        values = [ident]
    else:
        values = list(ident)
    return [c == v for c, v in zip(columns, values, strict=True)]


async def update_versioned(
    session: AsyncSession,
    model: type[V],
    ident: Any,
    expected_version: int,
    values: Mapping[str, Any],
    *,
    extra_where: Sequence[ColumnElement[bool]] = (),
    not_found_code: str = NotFound.code,
    conflict_code: str | None = None,
) -> V:
    """Apply ``values`` to the row ``ident`` only if it is still at ``expected_version``.

    One ``UPDATE … RETURNING``; the row comes back as ``model`` (an instance
    already in the session is refreshed). ``extra_where`` scopes the row (a
    tenant, an owner): a row outside it is `NotFound`, never disclosed. State
    preconditions need no extra predicate: the version proves the state read
    is still current. Zero rows → `NotFound` (absent) or
    `ConcurrentModification` (it moved on), decided by a follow-up lookup.
    """
    if "version" in values:
        msg = "values must not set 'version'; update_versioned bumps it"
        raise ValueError(msg)
    where = [*_pk_criteria(model, ident), *extra_where]
    stmt = (
        update(model)
        .where(*where, model.version == expected_version)
        .values({**values, "version": model.version + 1})
        .returning(model)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    row = (await session.execute(stmt)).scalars().one_or_none()
    if row is not None:
        return row
    current = (await session.execute(select(model.version).where(*where))).scalar_one_or_none()
    table = inspect(model).local_table.name
    if current is None:
        raise NotFound(
            "The resource does not exist.", code=not_found_code, context={"table": table}
        )
    _CONFLICTS.labels(table=table).inc()
    raise ConcurrentModification(
        _CONFLICT_DETAIL,
        code=conflict_code,
        context={"expected_version": expected_version, "current_version": current, "table": table},
    )


@contextmanager
def optimistic(*, code: str | None = None) -> Iterator[None]:
    """Turn ``StaleDataError`` (a ``version_id_col`` mismatch at flush) into a 409."""
    try:
        yield
    except StaleDataError as exc:
        _CONFLICTS.labels(table="version_id_col").inc()
        raise ConcurrentModification(
            _CONFLICT_DETAIL, code=code, context={"error": str(exc)}
        ) from exc


# --- the coupon pattern ---------------------------------------------------------------

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


# --- constraint names -----------------------------------------------------------------

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (.+)$")
_SQLITE_CHECK = re.compile(r"CHECK constraint failed: ([A-Za-z_][A-Za-z0-9_$]*)$")


def constraint_name(exc: BaseException) -> str | None:
    """The name of the constraint ``exc`` violated, when the backend reports it.

    PostgreSQL (psycopg) reports every constraint by name; SQLite names only
    CHECK constraints (UNIQUE violations come as columns; see the module doc).
    """
    orig = getattr(exc, "orig", exc)
    name = getattr(getattr(orig, "diag", None), "constraint_name", None)
    if isinstance(name, str) and name:
        return name
    match = _SQLITE_CHECK.search(str(orig))
    return match.group(1) if match else None


def _sqlite_unique_columns(exc: BaseException) -> frozenset[str] | None:
    match = _SQLITE_UNIQUE.search(str(getattr(exc, "orig", exc)))
    if match is None:
        return None
    return frozenset(part.strip() for part in match.group(1).split(","))


def _named_columns(name: str, tables: Iterable[Table]) -> frozenset[str] | None:
    for table in tables:
        candidates: list[UniqueConstraint | PrimaryKeyConstraint | Index] = [
            c for c in table.constraints if isinstance(c, UniqueConstraint | PrimaryKeyConstraint)
        ]
        candidates.extend(i for i in table.indexes if i.unique)
        for candidate in candidates:
            if candidate.name is not None and str(candidate.name) == name:
                return frozenset(f"{table.name}.{c.name}" for c in candidate.columns)
    return None


def _violates(
    exc: BaseException,
    name: str,
    *,
    tables: Iterable[Table] = (),
    columns: Sequence[str] | None = None,
) -> bool:
    reported = constraint_name(exc)
    if reported is not None:
        return reported == name
    failed = _sqlite_unique_columns(exc)
    if failed is None:
        return False
    if columns:
        # A hint names "table.column" or a bare "column"; it must cover the failure exactly.
        qualified = all("." in c for c in columns)
        seen = failed if qualified else frozenset(c.rsplit(".", 1)[-1] for c in failed)
        return seen == frozenset(columns)
    return _named_columns(name, tables) == failed


def _materialise(target: HardenedError | Callable[[], HardenedError]) -> HardenedError:
    # A shared instance is copied so that each raise gets its own traceback.
    return copy.copy(target) if isinstance(target, HardenedError) else target()


@contextmanager
def integrity_errors(
    mapping: Mapping[str, HardenedError | Callable[[], HardenedError]],
    *,
    metadata: MetaData | None = None,
) -> Iterator[None]:
    """Translate ``IntegrityError`` by constraint name into library errors.

    ``{"uq_customers_email": lambda: Conflict(code="customer.email_taken")}``;
    an unmapped violation re-raises unchanged. Pass ``metadata`` to match
    unique constraints on SQLite. Wrap the flush or commit that can fail; the
    transaction is unusable afterwards unless the block ran in a savepoint.
    """
    try:
        yield
    except IntegrityError as exc:
        tables = tuple(metadata.tables.values()) if metadata is not None else ()
        for name, target in mapping.items():
            if _violates(exc, name, tables=tables):
                raise _materialise(target) from exc
        raise


# --- unique human-facing numbers ------------------------------------------------------


def human_number(
    *,
    prefix: str = "",
    length: int = 10,
    alphabet: str = CROCKFORD32,
    group: int = 0,
) -> str:
    """A random number to show humans, e.g. ``ORD-7KQ2-M9XD-4A`` (``group=4``).

    Drawn with `secrets`: with the defaults, 50 bits, so collisions are rare
    and the next order's number cannot be guessed from this one.
    """
    if length < 1 or len(set(alphabet)) < 2:
        msg = "length must be >= 1 and the alphabet must have two distinct symbols"
        raise ValueError(msg)
    body = "".join(secrets.choice(alphabet) for _ in range(length))
    if group > 0:
        body = "-".join(body[i : i + group] for i in range(0, length, group))
    return prefix + body


async def insert_with_unique_number(
    session: AsyncSession,
    build: Callable[[str], T],
    *,
    constraint: str,
    generate: Callable[[], str] = human_number,
    attempts: int = 8,
    columns: Sequence[str] | None = None,
) -> T:
    """Insert ``build(number)``, drawing a new number while ``constraint`` is violated.

    Each attempt adds and flushes the new object in a SAVEPOINT (two extra
    round trips), so a collision rolls back only that attempt and the
    caller's transaction goes on. Other integrity errors propagate. After ``attempts`` collisions:
    `Conflict` ``number.exhausted``. ``build`` must return a new object each
    call. ``columns`` (``"orders.number"``) overrides the metadata lookup that
    matches SQLite's unnamed UNIQUE errors.
    """
    if attempts < 1:
        msg = "attempts must be >= 1"
        raise ValueError(msg)
    bind = session.get_bind()
    if bind.dialect.name == "sqlite" and not has_immediate_transactions(bind):
        msg = (
            "insert_with_unique_number() on SQLite needs sqlite_immediate_transactions(engine): "
            "legacy pysqlite savepoints escape the enclosing transaction"
        )
        raise RuntimeError(msg)
    for attempt in range(1, attempts + 1):
        obj = build(generate())
        try:
            async with session.begin_nested():
                session.add(obj)
        except IntegrityError as exc:
            if not _violates(exc, constraint, tables=inspect(obj).mapper.tables, columns=columns):
                raise
            if attempt < attempts:
                _NUMBER_RETRIES.labels(constraint=constraint).inc()
            continue
        return obj
    _NUMBER_EXHAUSTED.labels(constraint=constraint).inc()
    raise Conflict(
        "Could not allocate a unique number; try again.",
        code="number.exhausted",
        context={"constraint": constraint, "attempts": attempts},
    )
