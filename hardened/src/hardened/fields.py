r"""Input types a database can store as sent: text, column-sized integers, aware datetimes.

Why: a value a schema accepts and the driver then refuses is a 500 with a
traceback instead of a 422 naming the field. Attacks on the reference service
found four such values, each accepted by pydantic's plain types:

* NUL (``\x00``) in any string: PostgreSQL ``text``/``varchar`` cannot hold it
  (nor ``jsonb``, as ``\u0000``), so names, emails, SKUs, coupon codes, notes
  and CSV cells all crashed the insert.
* A lone surrogate (U+D800-U+DFFF): FastAPI decodes bodies with Python's
  ``json``, which turns the escape ``"\ud800"`` into one, and no UTF-8 encoder
  (psycopg's, sqlite3's, the JSON response's) can write it.
* An integer past its column: ``2**31`` into an ``INTEGER``.
* A datetime without a timezone, which the database layer refuses.

The rules live here, once, as ``Annotated`` metadata, so a schema states a
column's shape with a type instead of re-deriving the rule. Every refusal is
an ordinary pydantic validation error, so FastAPI answers 422 naming the field
(``request.validation_failed`` through `hardened.fastapi`); the error
``type`` values are stable:

* ``string_nul``, ``string_surrogate``, ``string_control`` (`Text`, `text`);
* pydantic's own ``int_type``, ``int_parsing``, ``greater_than_equal``,
  ``less_than_equal`` (`Int32`, `Int64`, `int_between`);
* pydantic's own ``timezone_aware`` (`AwareDatetime`, `UtcDatetime`) and
  ``datetime_object_invalid`` (`UtcDatetime`, an instant outside Python's
  range once in UTC).

Factories return metadata: write ``Annotated[str, text(max_length=200)]``
(or alias it: ``Name = Annotated[str, text(...)]``), because mypy does not
read a call, or a variable holding its result, as a type. Used bare
(``name: text(...)``, ``text(...) | None``) the metadata raises a TypeError
saying so.

Lone surrogates and pydantic: a JSON document parsed by pydantic itself
(``model_validate_json``) never reaches these validators with one, because
pydantic-core's parser refuses the escape as ``json_invalid`` (a
ValidationError for the whole document). The python path (``model_validate``,
and FastAPI, which parses with ``json.loads``) hands the string over: a plain
``str`` accepts it, pydantic's constrained strings refuse it as
``string_unicode``, `text` refuses it as ``string_surrogate``. On that path
``ValidationError.json()`` raises ValueError, unable to encode the refused
input: render errors without ``input`` (``json(include_input=False)``, as
`hardened.fastapi` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    StringConstraints,
    WrapValidator,
)
from pydantic_core import PydanticCustomError, PydanticKnownError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pydantic import GetCoreSchemaHandler, ValidatorFunctionWrapHandler

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "AwareDatetime",
    "Int32",
    "Int64",
    "IntRules",
    "MultilineText",
    "Text",
    "TextRules",
    "UtcDatetime",
    "int_between",
    "text",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_INT16_MIN = -(2**15)
_INT16_MAX = 2**15 - 1
_COLUMN_RANGES = {
    16: (_INT16_MIN, _INT16_MAX),
    32: (INT32_MIN, INT32_MAX),
    64: (INT64_MIN, INT64_MAX),
}

# C0 controls, DEL, C1 controls and every surrogate code point. TAB, LF and CR
# are allowed in multi-line text only.
_SINGLE_LINE_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MULTILINE_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _misused(rules: object, spelling: str) -> TypeError:
    return TypeError(f"{rules!r} is metadata, not a type: annotate with {spelling}")


def _refuse_characters(value: str, refused: re.Pattern[str]) -> None:
    found = refused.search(value)
    if found is None:
        return
    # NUL first: it is the one the database itself refuses, so it names the problem.
    nul = value.find("\x00")
    if nul >= 0:
        raise PydanticCustomError(
            "string_nul",
            "String should not contain the NUL character (at position {position})",
            {"position": nul},
        )
    surrogate = _SURROGATE.search(value)
    if surrogate is not None:
        raise PydanticCustomError(
            "string_surrogate",
            "String should not contain a lone surrogate (at position {position})",
            {"position": surrogate.start()},
        )
    raise PydanticCustomError(
        "string_control",
        "String should not contain control characters (at position {position})",
        {"position": found.start()},
    )


@dataclass(frozen=True, slots=True)
class TextRules(annotated_types.GroupedMetadata):
    r"""``Annotated[str, TextRules(...)]``: pydantic's string constraints plus a character rule.

    Refused always: NUL, surrogate code points, the other C0 controls, DEL and the
    C1 controls (U+0080-U+009F). They are never meant in a name, a code, an
    email or a CSV cell: they are invisible when displayed (``"ab\x08c"``
    shows as ``"ac"``), a terminal or spreadsheet acts on some of them
    (``ESC``, ``CSI``), XML 1.0 exports cannot carry them, and C1 controls
    are the trace of bytes decoded with the wrong codec. TAB, LF and CR are
    refused too unless ``multiline``: a line break in a single-line value
    forges log lines and CSV rows. Other invisible characters (zero-width,
    bidirectional marks) stay allowed: right-to-left and joined scripts use
    them legitimately.

    The character check runs on the raw string before the constraints, so a
    NUL is reported as ``string_nul`` even where the pattern would also
    refuse it; input that pydantic first converts to ``str`` (bytes, in
    python mode) is checked after conversion. ``strip``, ``lower``, the
    lengths and ``pattern`` are pydantic's own `StringConstraints`, which
    also puts them in the JSON schema; pydantic matches the pattern after
    stripping and before lower-casing, so write it to accept either case.
    """

    max_length: int | None = None
    min_length: int | None = None
    strip: bool = False
    lower: bool = False
    pattern: str | None = None
    multiline: bool = False

    def __iter__(self) -> Iterator[object]:
        yield StringConstraints(
            strip_whitespace=self.strip or None,
            to_lower=self.lower or None,
            min_length=self.min_length,
            max_length=self.max_length,
            pattern=self.pattern,
        )
        yield WrapValidator(self._validate)

    # Used bare as a type (``name: text(...)``, ``text(...) | None``), which
    # mypy refuses too; inside Annotated pydantic unpacks the group instead.
    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        raise _misused(self, "Annotated[str, text(...)]")

    def __or__(self, other: object) -> Any:
        raise _misused(self, "Annotated[str, text(...)]")

    __ror__ = __or__

    def _validate(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        refused = _MULTILINE_REFUSED if self.multiline else _SINGLE_LINE_REFUSED
        if isinstance(value, str):
            _refuse_characters(value, refused)
            return handler(value)
        result = handler(value)
        if isinstance(result, str):
            _refuse_characters(result, refused)
        return result


def text(
    *,
    max_length: int,
    min_length: int = 0,
    strip: bool = True,
    pattern: str | None = None,
    lower: bool = False,
    multiline: bool = False,
) -> TextRules:
    """Metadata for a bounded text column, to use inside ``Annotated[str, ...]``.

    ``name: Annotated[str, text(max_length=200)]``; see `TextRules` for the
    characters refused.

    ``max_length`` is required because every column has a bound and an
    unbounded field is how a megabyte name reaches the database. ``strip``
    defaults on: surrounding whitespace in a name or a code is a typing
    accident, and leaving it makes ``"a"`` and ``"a "`` two unique values.
    """
    if max_length < 1:
        msg = "max_length must be >= 1"
        raise ValueError(msg)
    if not 0 <= min_length <= max_length:
        msg = "min_length must be between 0 and max_length"
        raise ValueError(msg)
    return TextRules(
        max_length=max_length,
        min_length=min_length or None,
        strip=strip,
        lower=lower,
        pattern=pattern,
        multiline=multiline,
    )


Text = Annotated[str, TextRules()]
"""A single-line string the database can store; no stripping and no length bound.

The character rule alone, for values whose length is bounded elsewhere;
not stripped, so it also suits secrets whose every character counts. For a
column use `text`: constraints added around `Text` (``Field(max_length=...)``)
still validate, but as a wrapper with pydantic's generic ``too_long`` type.
"""

MultilineText = Annotated[str, TextRules(multiline=True)]
"""`Text` that also allows TAB, LF and CR (notes, addresses, descriptions)."""

_DIGITS = re.compile(r"[+-]?[0-9]+")


def _refuse_lax_integers(value: Any) -> Any:
    """Let through an ``int`` or its decimal digits; refuse what lax mode would coerce.

    Digit strings stay accepted because query, path and header parameters
    arrive as strings, and FastAPI validates bodies in python mode too, so a
    type cannot tell ``"5"`` in a body from ``?limit=5``. Refused:

    * ``bool``: JSON ``true`` in an integer field is a client bug, not 1;
    * ``float``, even integral: past 2**53 a float is no longer the integer
      the client meant (``9007199254740993.0`` is ...992), so accepting
      ``1.0`` means silently storing a rounded value for some inputs;
    * strings lax mode parses but no client means as an integer: ``"1.0"``,
      ``"1_000"``, ``" 1 "``;
    * anything else (bytes, Decimal): only python callers send those, and
      they can convert first.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticKnownError("int_type")
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise PydanticKnownError("int_parsing")
    return value


@dataclass(frozen=True, slots=True)
class IntRules(annotated_types.GroupedMetadata):
    """``Annotated[int, IntRules(ge, le)]``: bounds plus the refusal of lax coercions.

    Built by `int_between`, which checks that the bounds fit the column.
    """

    ge: int
    le: int

    def __iter__(self) -> Iterator[object]:
        yield annotated_types.Ge(self.ge)
        yield annotated_types.Le(self.le)
        yield BeforeValidator(_refuse_lax_integers)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        raise _misused(self, "Annotated[int, int_between(...)]")

    def __or__(self, other: object) -> Any:
        raise _misused(self, "Annotated[int, int_between(...)]")

    __ror__ = __or__


def int_between(
    lo: int | None = None, hi: int | None = None, *, bits: Literal[16, 32, 64] = 32
) -> IntRules:
    """Metadata for an integer column, to use inside ``Annotated[int, ...]``.

    ``quantity: Annotated[int, int_between(1, 1000)]``. Narrow with this rather
    than ``Annotated[Int32, Field(ge=...)]``: both validate the same, but
    pydantic cannot fold the outer ``Field`` bounds into the integer schema
    once `IntRules` wraps it, so OpenAPI would show both ranges.

    An omitted bound is the column's own (``bits``: 16 SMALLINT, 32 INTEGER,
    64 BIGINT), so ``int_between(1)`` is "positive and fits an INTEGER" rather
    than "positive" with 2**31 crashing the insert. A bound the column cannot
    hold is a mistake in the schema and raises ValueError at import.
    """
    column_lo, column_hi = _COLUMN_RANGES[bits]
    lo = column_lo if lo is None else lo
    hi = column_hi if hi is None else hi
    if not column_lo <= lo <= hi <= column_hi:
        msg = f"bounds must satisfy {column_lo} <= lo <= hi <= {column_hi} for a {bits}-bit column"
        raise ValueError(msg)
    return IntRules(ge=lo, le=hi)


Int32 = Annotated[int, int_between(bits=32)]
"""An integer that fits PostgreSQL INTEGER (-2**31 .. 2**31-1)."""

Int64 = Annotated[int, int_between(bits=64)]
"""An integer that fits BIGINT and SQLite's INTEGER (-2**63 .. 2**63-1)."""


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+01:00 is a valid input whose UTC instant Python cannot represent.
        raise PydanticKnownError(
            "datetime_object_invalid", {"error": "out of range once converted to UTC"}
        ) from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""An aware datetime, converted to UTC.

Naive input is refused (``timezone_aware``): the same wall-clock time names
different instants on different servers. Converting to UTC gives one spelling
per instant: SQLite stores datetimes as text and compares them as text, so
``10:00+02:00`` and ``08:00+00:00`` would sort apart there. An instant that
leaves Python's range once in UTC (year 1 or 9999 at the edges) is refused
rather than raised as OverflowError.
"""
