"""Streamed, all-or-nothing bulk CSV import with per-row validation.

Seed 004's bulk import had no bounds: a huge file exhausted memory, a bad row
left half a file committed, and ``=HYPERLINK(...)`` cells waited for a
spreadsheet to run them. `import_csv` streams (413 the moment a limit is
crossed), validates each row with a pydantic model and feeds valid rows to the
caller's ``sink`` in bounded batches until the first error. The caller owns the
one transaction::

    async with session.begin():
        report = await import_csv(request.stream(), spec, insert_orders)
        if not report.ok:
            raise report.to_problem()  # 422 naming row and column; rolls back

Decisions. Rows are numbered as a spreadsheet shows them: header = row 1, a
record is one row even when a quoted cell spans lines, blank lines keep their
number but are skipped. An empty cell is "no value": the field's default, else
``None`` if the field allows it, else "missing". `neutralize_formula` runs after
validation on ``str`` fields only, so a numeric ``-12`` still parses. The
process-global ``csv.field_size_limit`` is never changed: ``max_field_chars``
must stay below it and is checked here per cell.
"""

from __future__ import annotations

import codecs
import csv
import inspect
import logging
import re
import types
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError

from hardened.errors import FieldError, PayloadTooLarge, ValidationFailed
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

__all__ = [
    "CsvSpec",
    "ImportProgress",
    "ImportReport",
    "RowError",
    "Sink",
    "import_csv",
    "neutralize_formula",
]

RowT = TypeVar("RowT", bound=BaseModel)

_log = logging.getLogger("hardened.db.csv_import")
_ROWS = counter("import_rows_total", "CSV import rows by validation outcome.", ["outcome"])
_EOL = re.compile(r"\r\n|\r|\n")
_FORMULA_START = frozenset("=+-@\t\r")
_TOO_LONG = "import.record_too_long"
_NONE = frozenset((None, type(None), Any))  # annotations that accept None
_DUPLICATE, _UNKNOWN = "import.duplicate_column", "import.unknown_column"


def neutralize_formula(value: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would run as a formula (OWASP CSV injection).

    Triggers are ``= + - @``, tab and carriage return, as the first character or
    the first after leading whitespace, because spreadsheets trim it on import.
    Number-like text (``-12.5``, ``+81 3…``) is prefixed too, as OWASP advises:
    ``-1+2`` is a formula as well. A value already starting with ``'`` is
    unchanged, so the rule is idempotent.
    """
    risky = value[:1] in _FORMULA_START or value.lstrip()[:1] in _FORMULA_START
    return "'" + value if risky else value


@dataclass(frozen=True, slots=True)
class CsvSpec(Generic[RowT]):
    """What an import accepts: the row model (its field names or aliases are the columns)."""

    row_model: type[RowT]
    max_bytes: int = 10 * 1024 * 1024
    max_rows: int = 100_000
    max_columns: int = 50
    max_field_chars: int = 10_000
    max_errors: int = 100
    delimiter: str = ","
    encoding: str = "utf-8"
    text_columns_neutralised: bool = True
    allow_extra_columns: bool = False

    def __post_init__(self) -> None:
        limits = (self.max_bytes, self.max_rows, self.max_columns, self.max_errors)
        if min(*limits, self.max_field_chars) < 1 or self.max_field_chars >= csv.field_size_limit():
            msg = "limits must be positive; max_field_chars below csv.field_size_limit()"
            raise ValueError(msg)
        if len(self.delimiter) != 1 or self.delimiter in '"\r\n':
            msg = f"delimiter must be one character, not a quote or newline: {self.delimiter!r}"
            raise ValueError(msg)
        codecs.lookup(self.encoding)  # LookupError for an unknown encoding


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem: ``row`` as a spreadsheet numbers it (header = 1), ``column`` its header."""

    row: int
    column: str | None
    message: str
    code: str


Sink = Callable[[Sequence[tuple[int, RowT]]], Awaitable[Iterable[RowError] | None]]
"""Receives ``(row number, row)`` pairs; returns the rows it cannot accept, if any."""


@dataclass(frozen=True, slots=True)
class ImportProgress:
    """A snapshot for long imports; ``errors`` counts every error found so far."""

    rows_read: int
    bytes_read: int
    rows_valid: int
    errors: int


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The outcome; ``errors`` holds at most ``max_errors`` entries (``errors_truncated``)."""

    rows_read: int
    rows_valid: int
    errors: tuple[RowError, ...]
    errors_truncated: bool

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_problem(self) -> ValidationFailed:
        """The 422 problem naming each bad row and column (``loc = ("row", n, column)``)."""
        if self.ok:
            msg = "a successful import has no problem to report"
            raise ValueError(msg)
        more = " (list truncated)" if self.errors_truncated else ""
        errors = [
            FieldError(("row", e.row, *([] if e.column is None else [e.column])), e.message, e.code)
            for e in self.errors
        ]
        detail = f"The file was rejected and nothing was imported: {len(errors)} error(s){more}."
        return ValidationFailed(detail, code="import.invalid_rows", errors=errors)


def _short(text: str) -> str:
    return text if len(text) <= 100 else text[:99] + "…"  # never echo a long cell back


def _bare(hint: Any) -> Any:
    return get_args(hint)[0] if get_origin(hint) is Annotated else hint


def _types(field: FieldInfo) -> set[Any]:
    """The annotation's members, constraints stripped (``Annotated[str, …] | None``: str, None)."""
    hint = _bare(field.annotation)
    members = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    return {_bare(member) for member in members}


def _names(name: str, field: FieldInfo) -> list[str]:
    """Every header a field answers to: its name, alias and string validation aliases."""
    va = field.validation_alias
    choices = va.choices if isinstance(va, AliasChoices) else [va]
    return list(dict.fromkeys(c for c in [name, field.alias, *choices] if isinstance(c, str)))


def _in_quotes(line: str, in_quotes: bool, delimiter: str) -> bool:
    """Whether a record is still inside a quoted cell after ``line`` (csv's own state rules)."""
    if '"' not in line:
        return in_quotes
    at_start, pending = not in_quotes, False  # pending: a quote seen inside a quoted cell
    for ch in line:
        if in_quotes and (not pending or ch == '"'):  # '""' is an escaped quote
            pending = ch == '"' and not pending
            continue
        in_quotes, pending, at_start = ch == '"' and at_start, False, ch == delimiter
    return in_quotes and not pending


class _Import(Generic[RowT]):
    """One import's state: decoder, line splitter, record buffer, header map and batch."""

    def __init__(self, spec: CsvSpec[RowT], sink: Sink[RowT], batch: int) -> None:
        self.spec, self.sink, self.batch_size = spec, sink, batch
        self.progress: Callable[[ImportProgress], Awaitable[None] | None] | None = None
        self.progress_every = 1000
        codec = codecs.lookup(spec.encoding).name
        self.decoder = codecs.getincrementaldecoder("utf-8-sig" if codec == "utf-8" else codec)()
        self.max_record = spec.max_columns * (2 * spec.max_field_chars + 3) + 2  # quotes doubled
        self.tail, self.record, self.quoted = "", list[str](), False
        self.row = self.rows_read = self.rows_valid = self.bytes_read = self.error_count = 0
        self.errors: list[RowError] = []
        self.batch: list[tuple[int, RowT]] = []
        self.fields = dict(spec.row_model.model_fields)
        self.by_header = {h: n for n, f in self.fields.items() for h in _names(n, f)}
        self.types = {n: _types(f) for n, f in self.fields.items()}
        text = {n for n, t in self.types.items() if str in t and t <= {str, type(None)}}
        self.text = text if spec.text_columns_neutralised else set()  # str fields to neutralise
        self.columns: list[str] = []
        self.keys: list[str | None] = []  # per column: the field it fills, None = ignored
        self.loc_column: dict[str | int, str] = {}  # field name or alias -> its header

    async def run(self, chunks: AsyncIterable[bytes]) -> ImportReport:
        iterator = aiter(chunks)
        try:
            async for chunk in iterator:
                self.bytes_read += len(chunk)
                if self.bytes_read > self.spec.max_bytes:
                    detail = f"The file is larger than {self.spec.max_bytes} bytes."
                    raise PayloadTooLarge(detail, code="import.too_large")
                if await self.feed(chunk, final=False):
                    break
            else:
                await self.feed(b"", final=True)
            if self.error_count == 0 and self.batch:
                await self.flush()
        finally:
            if (close := getattr(iterator, "aclose", None)) is not None:
                await close()
            _ROWS.labels(outcome="valid").inc(self.rows_valid)
            _ROWS.labels(outcome="invalid").inc(self.rows_read - self.rows_valid)
        await self.report_progress()
        if self.errors:
            _log.warning("csv import rejected with %d errors", self.error_count)
        truncated = self.error_count > len(self.errors)
        return ImportReport(self.rows_read, self.rows_valid, tuple(self.errors), truncated)

    async def feed(self, chunk: bytes, *, final: bool) -> bool:
        """Decode a chunk, handle the records it completes (up to a bad byte); True = stop."""
        try:
            text = self.decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            valid = exc.object[: exc.start].decode(exc.encoding, errors="replace")
            if not await self.take(valid, final=False):
                msg = f"bytes that are not valid {self.spec.encoding}"
                self.add(RowError(self.row + 1, None, msg, "import.bad_encoding"))
            return True
        return await self.take(text, final=final)

    async def take(self, text: str, *, final: bool) -> bool:
        """Split text into lines, gather them into records and handle each; True = stop."""
        data, start = self.tail + text, 0
        lines = [m.end() for m in _EOL.finditer(data)]
        if not final and lines and lines[-1] == len(data) and data[-1] == "\r":
            lines.pop()  # maybe the first half of "\r\n"
        if final and len(data) > (lines[-1] if lines else 0):
            lines.append(len(data))  # a last line without a newline
        for end in lines:
            line, start = data[start:end], end
            self.record.append(line)
            self.quoted = _in_quotes(line, self.quoted, self.spec.delimiter)
            if not self.quoted and await self.complete():
                return True
        self.tail = data[start:]
        if final and (self.record or self.row == 0):  # ended inside quotes, or empty file
            return await self.complete()
        if len(self.tail) + sum(map(len, self.record)) > self.max_record:
            self.add(RowError(self.row + 1, None, "record too long (open quote?)", _TOO_LONG))
            return True
        return False

    async def complete(self) -> bool:
        """Parse the gathered record with csv and handle it; True = stop (header error)."""
        self.row, lines, self.record, self.quoted = self.row + 1, iter(self.record), [], False
        try:  # strict: a stray quote or a file ending inside quotes is an error, not a guess
            cells = next(csv.reader(lines, delimiter=self.spec.delimiter, strict=True), [])
            problem = None if next(lines, None) is None else "malformed quoting"
        except csv.Error as exc:
            cells, problem = [], str(exc)
        if problem is not None:
            code = "import.field_too_long" if "field limit" in problem else "import.malformed"
            if self.row == 1:
                self.add(RowError(1, None, _short(problem), code))
                return True
            await self.outcome(None, [RowError(self.row, None, _short(problem), code)])
        elif self.row == 1:
            return self.header([c.strip() for c in cells])
        elif any(cells):  # a blank line keeps its row number but is skipped
            await self.outcome(*self.validate(cells))
        return False

    def header(self, names: list[str]) -> bool:
        errors: list[RowError] = []
        if not any(names):
            errors.append(RowError(1, None, "the header row is missing", "import.missing_header"))
        elif len(names) > self.spec.max_columns:
            msg = f"{len(names)} columns; at most {self.spec.max_columns} are allowed"
            errors.append(RowError(1, None, msg, "import.too_many_columns"))
        else:
            seen: dict[str, str] = {}  # field name -> the header naming it
            for i, name in enumerate(names):
                field = self.by_header.get(name)
                if name in names[:i] or (field is not None and field in seen):
                    errors.append(RowError(1, _short(name), "duplicate column", _DUPLICATE))
                elif field is None and not self.spec.allow_extra_columns:
                    errors.append(RowError(1, _short(name), "unknown column", _UNKNOWN))
                self.keys.append(None if field is None or field in seen else field)
                if field is not None:
                    seen.setdefault(field, name)
            errors += [
                RowError(1, (_names(n, f) * 2)[1], "missing column", "import.missing_column")
                for n, f in self.fields.items()
                if f.is_required() and n not in seen  # named by its alias, else its name
            ]
            self.columns = names
            self.loc_column = {h: seen[n] for h, n in self.by_header.items() if n in seen}
        for error in errors:
            self.add(error)
        return bool(errors)

    def validate(self, cells: list[str]) -> tuple[RowT | None, list[RowError]]:
        row, spec, width = self.row, self.spec, len(self.columns)
        too_long = f"longer than {spec.max_field_chars} characters"
        errors = [
            RowError(row, self.columns[i] if i < width else None, too_long, "import.field_too_long")
            for i, cell in enumerate(cells)
            if len(cell) > spec.max_field_chars
        ]
        if any(cells[width:]):
            msg = f"{len(cells)} cells but the header has {width}"
            errors.append(RowError(row, None, msg, "import.extra_cells"))
        if errors:
            return None, errors
        data: dict[str, object] = {}
        for key, cell in zip(self.keys, [*cells, *[""] * (width - len(cells))], strict=False):
            if key is not None and cell:
                data[key] = cell
            elif key is not None and self.fields[key].is_required() and self.types[key] & _NONE:
                data[key] = None  # otherwise left out: the default applies, or "missing"
        try:
            model = spec.row_model.model_validate(data, by_alias=False, by_name=True)
        except ValidationError as exc:
            return None, [
                RowError(row, self.loc_column.get((*e["loc"], "")[0]), _short(e["msg"]), e["type"])
                for e in exc.errors(include_url=False, include_input=False, include_context=False)
            ]
        values = {n: getattr(model, n) for n in self.text}
        safe = {n: neutralize_formula(v) for n, v in values.items() if isinstance(v, str)}
        changed = {n: v for n, v in safe.items() if v != values[n]}
        return (model.model_copy(update=changed) if changed else model), []

    async def outcome(self, model: RowT | None, errors: list[RowError]) -> None:
        self.rows_read += 1
        if self.rows_read > self.spec.max_rows:
            detail = f"The file has more than {self.spec.max_rows} rows."
            raise PayloadTooLarge(detail, code="import.too_many_rows")
        for error in errors:
            self.add(error)
        if model is not None:
            self.rows_valid += 1
            if self.error_count == 0:
                self.batch.append((self.row, model))
                if len(self.batch) >= self.batch_size:
                    await self.flush()
        if self.rows_read % self.progress_every == 0:
            await self.report_progress()

    def add(self, error: RowError) -> None:
        self.error_count += 1
        self.batch = []  # all-or-nothing: this batch, and any later one, is never delivered
        if len(self.errors) < self.spec.max_errors:
            self.errors.append(error)

    async def flush(self) -> None:
        batch, self.batch = self.batch, []
        for error in await self.sink(batch) or ():  # e.g. a reference the database lacks
            self.add(error)

    async def report_progress(self) -> None:
        p = ImportProgress(self.rows_read, self.bytes_read, self.rows_valid, self.error_count)
        if self.progress is not None and inspect.isawaitable(result := self.progress(p)):
            await result


async def import_csv(
    chunks: AsyncIterable[bytes],
    spec: CsvSpec[RowT],
    sink: Sink[RowT],
    *,
    batch_size: int = 500,
    progress: Callable[[ImportProgress], Awaitable[None] | None] | None = None,
    progress_every: int = 1000,
) -> ImportReport:
    """Stream ``chunks`` as CSV, validate each row with ``spec.row_model`` and feed ``sink``.

    ``sink`` gets at most ``batch_size`` ``(row number, row)`` pairs per call, and
    only until the first error; it may return `RowError`s of its own (a
    reference the database does not have), which end delivery the same way.
    The rest is still validated for the report but never delivered, so the
    caller rolls back unless ``report.ok``. Header errors, undecodable bytes
    and a runaway quoted cell stop at once; crossing ``max_bytes`` or
    ``max_rows`` raises `PayloadTooLarge` (413) and reads nothing more.
    ``progress`` (sync or async) runs every ``progress_every`` rows and at the end.
    """
    if batch_size < 1 or progress_every < 1:
        msg = "batch_size and progress_every must be positive"
        raise ValueError(msg)
    job = _Import(spec, sink, batch_size)
    job.progress, job.progress_every = progress, progress_every
    return await job.run(chunks)
