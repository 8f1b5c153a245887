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

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, inspect, select, text, update
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from hardened.db._constraints import constraint_name, integrity_errors
from hardened.db._counters import conditional_increment, upsert_increment
from hardened.db._numbers import CROCKFORD32, human_number, insert_with_unique_number
from hardened.errors import ConcurrentModification, NotFound
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.ext.asyncio import AsyncSession

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

V = TypeVar("V", bound="Versioned")

_CONFLICT_DETAIL = "The resource was changed by someone else; reload it and try again."

_CONFLICTS = counter(
    "db_concurrent_modifications_total",
    "Optimistic-lock conflicts (409), by table.",
    ["table"],
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
