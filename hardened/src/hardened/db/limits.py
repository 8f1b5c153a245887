"""Collection size limits, in request schemas and in the database itself.

Why: an unbounded list (coupon customer ids, zone postal codes, order lines)
grows until a request, a row or a worker's memory breaks. The seeds cap such
collections at 10,000 elements; we cap them twice: in the pydantic schema, so
an oversized request is a 422 before any work, and in the database, so no
code path (a job, a bulk import, a bug) can store more.

Child rows per parent: give the child a ``position`` column and declare

    UniqueConstraint("order_id", "position"),
    position_check("position", MAX_LINES),

Positions are unique per parent and lie in ``1..N``, so the database cannot
hold more than ``N`` children of one parent, whatever the concurrency; an
insert past the cap fails with an integrity error (map it with
`hardened.db.integrity.integrity_errors`). Array and JSON-array columns use
`cardinality_check`, compiled per dialect.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import Field
from sqlalchemy import CheckConstraint, Integer, column
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

if TYPE_CHECKING:
    from sqlalchemy.sql.compiler import SQLCompiler
    from sqlalchemy.sql.visitors import _TraverseInternalsType

__all__ = [
    "MAX_COLLECTION_ITEMS",
    "BoundedList",
    "bounded_list",
    "cardinality_check",
    "position_check",
]

T = TypeVar("T")

#: The default cap on any collection a client can send or the database can hold.
MAX_COLLECTION_ITEMS = 10_000

#: ``BoundedList[int]``: a list of at most `MAX_COLLECTION_ITEMS` items (pydantic).
BoundedList = Annotated[list[T], Field(max_length=MAX_COLLECTION_ITEMS)]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def bounded_list(item_type: Any, max_items: int = MAX_COLLECTION_ITEMS) -> Any:
    """``Annotated[list[item_type], Field(max_length=max_items)]`` for other caps.

    For a static annotation with a custom cap write the ``Annotated`` form out;
    this helper serves dynamic models and ``TypeAdapter``.
    """
    _check_cap(max_items)
    return Annotated[list[item_type], Field(max_length=max_items)]


def _check_cap(max_items: int) -> None:
    if max_items < 1:
        msg = "max_items must be >= 1"
        raise ValueError(msg)


def _check_column(name: str) -> None:
    if not _IDENTIFIER.match(name):
        msg = f"not a plain column name: {name!r}"
        raise ValueError(msg)


def position_check(column_name: str, max_items: int, *, name: str | None = None) -> CheckConstraint:
    """``CHECK (column BETWEEN 1 AND max_items)``; pair it with a unique (parent, column).

    Named ``<column>_max_<n>`` unless ``name`` is given (naming conventions
    apply on top).
    """
    _check_column(column_name)
    _check_cap(max_items)
    return CheckConstraint(
        column(column_name).between(1, max_items),
        name=name or f"{column_name}_max_{max_items}",
    )


class _ArrayLength(ColumnElement[int]):
    """Number of elements of an array or JSON-array column, per dialect."""

    inherit_cache = True
    type = Integer()
    _traverse_internals: _TraverseInternalsType = [  # noqa: RUF012 - SQLAlchemy protocol
        ("column_name", InternalTraversal.dp_string),
        ("kind", InternalTraversal.dp_string),
    ]

    def __init__(self, column_name: str, kind: str) -> None:
        self.column_name = column_name
        self.kind = kind


@compiles(_ArrayLength, "postgresql")
def _pg_length(element: _ArrayLength, compiler: SQLCompiler, **kw: Any) -> str:
    quoted = compiler.preparer.quote(element.column_name)
    if element.kind == "array":
        return f"cardinality({quoted})"
    # jsonb_array_length raises (a DataError, not a constraint violation) on
    # non-arrays, JSON null included; CASE guarantees it is not evaluated there.
    prefix = "jsonb" if element.kind == "jsonb" else "json"
    return (
        f"(CASE WHEN {prefix}_typeof({quoted}) = 'array' "
        f"THEN {prefix}_array_length({quoted}) ELSE 0 END)"
    )


@compiles(_ArrayLength, "sqlite")
def _sqlite_length(element: _ArrayLength, compiler: SQLCompiler, **kw: Any) -> str:
    if element.kind == "array":
        msg = "SQLite has no array type; store the collection as JSON"
        raise CompileError(msg)
    return f"json_array_length({compiler.preparer.quote(element.column_name)})"


@compiles(_ArrayLength)
def _other_length(element: _ArrayLength, compiler: SQLCompiler, **kw: Any) -> str:
    msg = f"cardinality_check() is not implemented for {compiler.dialect.name}"
    raise CompileError(msg)


def cardinality_check(
    column_name: str,
    max_items: int,
    *,
    kind: Literal["array", "jsonb", "json"] = "jsonb",
    name: str | None = None,
) -> CheckConstraint:
    """``CHECK (<length of column> <= max_items)`` for an array or a JSON array column.

    PostgreSQL: ``cardinality`` (``kind="array"``), ``jsonb_array_length`` or
    ``json_array_length``; SQLite: ``json_array_length`` (no arrays there).
    NULL passes, as in any CHECK, and a JSON value that is not an array
    (JSON ``null`` included) counts as 0 items: its shape is the schema's
    business. Named ``<column>_max_<n>_items`` by default.
    """
    _check_column(column_name)
    _check_cap(max_items)
    return CheckConstraint(
        _ArrayLength(column_name, kind) <= max_items,
        name=name or f"{column_name}_max_{max_items}_items",
    )
