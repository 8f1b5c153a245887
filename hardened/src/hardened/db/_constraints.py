"""Constraint violations turned into library errors by constraint name.

PostgreSQL names the violated constraint; SQLite reports a UNIQUE violation only
as ``table.column`` pairs, so there a unique constraint is matched by resolving
its name to columns in the metadata (or a ``columns=`` hint).
"""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import PrimaryKeyConstraint, UniqueConstraint
from sqlalchemy.exc import IntegrityError

from hardened.errors import HardenedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from sqlalchemy import Index, MetaData, Table

__all__ = ["constraint_name", "integrity_errors"]

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
