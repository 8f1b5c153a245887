"""Random human-facing numbers (order numbers), made unique by a constraint, not a lookup.

Checking "is this number free?" first races; inserting and drawing again on a
violation of the named unique constraint does not.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from hardened.db._constraints import _violates
from hardened.db.transaction import require_immediate_transactions
from hardened.errors import Conflict
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["CROCKFORD32", "human_number", "insert_with_unique_number"]

T = TypeVar("T")

#: Crockford's base32: no I, L, O, U, so numbers read aloud or typed survive.
CROCKFORD32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

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
    require_immediate_transactions(
        session.get_bind(),
        "insert_with_unique_number()",
        why="legacy pysqlite savepoints escape the enclosing transaction",
    )
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
