"""Bulk CSV import: streamed, bounded, validated per row, all-or-nothing, formula-safe."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field, StringConstraints

from hardened.db.csv_import import (
    CsvSpec,
    ImportProgress,
    ImportReport,
    RowError,
    import_csv,
    neutralize_formula,
)
from hardened.errors import PayloadTooLarge, ValidationFailed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Sequence

CHUNK = 64 * 1024
HEADER = "sku,quantity,note\r\n"


class OrderRow(BaseModel):
    sku: str
    quantity: int
    note: str | None = None


class Recorder:
    """A sink that records every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[list[OrderRow]] = []
        self.numbers: list[int] = []

    async def __call__(self, batch: Sequence[tuple[int, OrderRow]]) -> None:
        self.batches.append([row for _, row in batch])
        self.numbers.extend(number for number, _ in batch)

    @property
    def rows(self) -> list[OrderRow]:
        return [row for batch in self.batches for row in batch]


async def drop(batch: Sequence[tuple[int, Any]]) -> None:
    """A sink that discards rows (for tests about the report only)."""


async def stream(data: bytes | str, size: int = CHUNK) -> AsyncIterator[bytes]:
    raw = data.encode() if isinstance(data, str) else data
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def orders(count: int, bad: dict[int, str] | None = None) -> str:
    """A CSV whose data row n (spreadsheet numbering, header = 1) is SKU-n, quantity n."""
    bad = bad or {}
    lines = [f"SKU-{n},{bad.get(n, n)},ok\r\n" for n in range(2, count + 2)]
    return HEADER + "".join(lines)


async def run(data: bytes | str, spec: CsvSpec[Any] | None = None, **kw: Any) -> ImportReport:
    return await import_csv(stream(data, kw.pop("size", CHUNK)), spec or CsvSpec(OrderRow), **kw)


@pytest.mark.anyio
async def test_valid_file_is_delivered_in_batches() -> None:
    """Every row of a valid file reaches the sink, in batches of at most batch_size, in order."""
    sink = Recorder()
    report = await run(orders(1200), sink=sink, batch_size=500)
    assert report == ImportReport(
        rows_read=1200, rows_valid=1200, errors=(), errors_truncated=False
    )
    assert report.ok
    assert [len(b) for b in sink.batches] == [500, 500, 200]
    assert [r.sku for r in sink.rows] == [f"SKU-{n}" for n in range(2, 1202)]


@pytest.mark.anyio
async def test_bad_row_names_row_and_column_and_sink_gets_nothing_after_it() -> None:
    """Row 57 with quantity "abc" is reported by row and column; no row from 57 on reaches sink."""
    sink = Recorder()
    report = await run(orders(200, bad={57: "abc"}), sink=sink, batch_size=10)
    assert not report.ok
    assert [(e.row, e.column, e.code) for e in report.errors] == [(57, "quantity", "int_parsing")]
    assert (report.rows_read, report.rows_valid) == (200, 199)
    # Rows 2..51 went out in five full batches; the partial batch 52..56 was dropped.
    assert [len(b) for b in sink.batches] == [10] * 5
    assert max(int(r.sku.split("-")[1]) for r in sink.rows) == 51


@pytest.mark.anyio
async def test_transaction_around_the_sink_commits_nothing_when_a_row_is_bad() -> None:
    """A caller transaction rolled back on a failed report commits nothing; a clean file commits."""
    committed: list[OrderRow] = []

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[list[OrderRow]]:
        pending: list[OrderRow] = []
        yield pending  # an exception in the block skips the commit (rollback)
        committed.extend(pending)

    async def import_in_transaction(data: str) -> None:
        async with transaction() as tx:

            async def sink(batch: Sequence[tuple[int, OrderRow]]) -> None:
                tx.extend(row for _, row in batch)

            report = await run(data, sink=sink, batch_size=10)
            if not report.ok:
                raise report.to_problem()

    with pytest.raises(ValidationFailed) as caught:
        await import_in_transaction(orders(100, bad={57: "abc"}))
    assert committed == []
    assert caught.value.status == 422
    assert caught.value.code == "import.invalid_rows"
    assert caught.value.errors[0].loc == ("row", 57, "quantity")
    await import_in_transaction(orders(100))
    assert len(committed) == 100


@pytest.mark.anyio
async def test_row_numbers_count_records_not_physical_lines() -> None:
    """Quoted cells spanning lines and blank lines keep the spreadsheet row number exact."""
    data = (
        HEADER
        + 'A,1,"two\r\nlines"\r\n'  # row 2
        + 'B,2,"three\nlines, with ""quotes""\rand CR"\r\n'  # row 3
        + "\r\n"  # row 4: blank, skipped
        + "C,x,ok\r\n"  # row 5
    )
    sink = Recorder()
    report = await run(data, sink=sink, size=3)
    assert [(e.row, e.column) for e in report.errors] == [(5, "quantity")]
    assert report.rows_read == 3
    clean = Recorder()
    assert (await run(data.replace("C,x", "C,3"), sink=clean, size=5)).ok
    assert [r.note for r in clean.rows] == [
        "two\r\nlines",
        'three\nlines, with "quotes"\rand CR',
        "ok",
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cell", ['=HYPERLINK("http://x")', "+cmd", "-1+2", "@SUM(A1)", "\tx", "\rx", " =1+1"]
)
async def test_formula_cells_in_text_columns_are_prefixed(cell: str) -> None:
    """A text cell starting with = + - @ tab or CR (even after spaces) is stored with a ' prefix."""
    out = io.StringIO()
    csv.writer(out).writerows([["sku", "quantity", "note"], [cell, "1", cell]])
    sink = Recorder()
    assert (await run(out.getvalue(), sink=sink)).ok
    assert (sink.rows[0].sku, sink.rows[0].note) == ("'" + cell, "'" + cell)


@pytest.mark.anyio
async def test_numeric_column_is_not_neutralised_but_text_column_is() -> None:
    """A "-12" cell parses as -12 in an int column but is prefixed in a str column."""
    sink = Recorder()
    assert (await run(HEADER + "-12,-12,plain\r\n", sink=sink)).ok
    assert sink.rows == [OrderRow(sku="'-12", quantity=-12, note="plain")]
    off = Recorder()
    spec = CsvSpec(OrderRow, text_columns_neutralised=False)
    assert (await run(HEADER + "=1,1,\r\n", spec, sink=off)).ok
    assert off.rows[0].sku == "=1"


def test_neutralize_formula_rule() -> None:
    """Only formula triggers are prefixed, and applying the rule twice changes nothing."""
    assert neutralize_formula("") == ""
    assert neutralize_formula("plain text") == "plain text"
    assert neutralize_formula("a=b") == "a=b"
    assert neutralize_formula("  @x") == "'  @x"
    assert neutralize_formula("\n=1") == "'\n=1"
    assert neutralize_formula(neutralize_formula("=1")) == "'=1"


@pytest.mark.anyio
async def test_bom_is_stripped_and_empty_cells_follow_the_field() -> None:
    """A UTF-8 BOM is not part of the first header; empty cells mean default, None or missing."""

    class Row(BaseModel):
        sku: str
        quantity: int
        size: int | None
        note: str = "none"

    header = "\ufeffsku,quantity,size,note\r\n".encode()
    sink: list[Row] = []

    async def collect(batch: Sequence[tuple[int, Row]]) -> None:
        sink.extend(row for _, row in batch)

    ok = await import_csv(stream(header + b"A,1,,\r\nB,2\r\n", 1), CsvSpec(Row), collect)
    assert ok.ok
    assert sink == [  # empty and left-out trailing cells both mean "no value"
        Row(sku="A", quantity=1, size=None, note="none"),
        Row(sku="B", quantity=2, size=None, note="none"),
    ]
    report = await import_csv(stream(header + b"C,,2,x\r\n", 2), CsvSpec(Row), collect)
    assert [(e.row, e.column, e.code) for e in report.errors] == [(2, "quantity", "missing")]


@pytest.mark.anyio
async def test_bad_utf8_is_reported_with_its_row_and_stops_the_import() -> None:
    """Invalid bytes fail the import with import.bad_encoding on the row that holds them."""
    data = (HEADER + "A,1,ok\r\nB,2,ok\r\n").encode() + b"C,3,\xff\xfe\r\nD,4,ok\r\n"
    sink = Recorder()
    report = await run(data, sink=sink, size=7)
    assert report.errors == (
        RowError(4, None, "bytes that are not valid utf-8", "import.bad_encoding"),
    )
    assert report.rows_read == 2
    truncated = await run((HEADER + "A,1,caf").encode() + "é".encode()[:1], sink=sink)
    assert [(e.row, e.code) for e in truncated.errors] == [(2, "import.bad_encoding")]
    in_header = await run(b"sku,quan\xfftity\r\n", sink=sink, size=4)
    assert [(e.row, e.code) for e in in_header.errors] == [(1, "import.bad_encoding")]
    assert sink.batches == []


@pytest.mark.anyio
async def test_fifty_megabyte_stream_is_refused_after_max_bytes() -> None:
    """A 50 MB upload raises PayloadTooLarge once past max_bytes, reading at most one more chunk."""
    consumed = 0
    total = 50 * 1024 * 1024

    async def fifty_megabytes() -> AsyncIterator[bytes]:
        nonlocal consumed
        buffer, n = bytearray(HEADER.encode()), 0
        while consumed < total:
            while len(buffer) < CHUNK:
                n += 1
                buffer += f"SKU-{n},1,{'x' * 1000}\r\n".encode()
            chunk, buffer = bytes(buffer[:CHUNK]), buffer[CHUNK:]
            consumed += len(chunk)
            yield chunk

    spec = CsvSpec(OrderRow)
    with pytest.raises(PayloadTooLarge) as caught:
        await import_csv(fifty_megabytes(), spec, Recorder())
    assert caught.value.code == "import.too_large"
    assert caught.value.status == 413
    assert spec.max_bytes < consumed <= spec.max_bytes + CHUNK


@pytest.mark.anyio
async def test_too_many_rows_is_refused() -> None:
    """Row max_rows + 1 raises PayloadTooLarge with code import.too_many_rows."""
    with pytest.raises(PayloadTooLarge) as caught:
        await run(orders(101), CsvSpec(OrderRow, max_rows=100), sink=Recorder())
    assert caught.value.code == "import.too_many_rows"
    assert (await run(orders(100), CsvSpec(OrderRow, max_rows=100), sink=Recorder())).ok


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("sku,quantity,colour", [("colour", "import.unknown_column")]),
        ("sku,note", [("quantity", "import.missing_column")]),
        ("sku,quantity,sku", [("sku", "import.duplicate_column")]),
        (",".join(f"c{i}" for i in range(51)), [(None, "import.too_many_columns")]),
        ("", [(None, "import.missing_header")]),
    ],
)
async def test_header_errors_fail_fast_on_row_1(
    header: str, expected: list[tuple[str | None, str]]
) -> None:
    """Unknown, missing, duplicate or too many columns (or no header) fail on row 1, sink unused."""
    sink = Recorder()
    report = await run(f"{header}\r\nA,1,x\r\n" if header else "", sink=sink)
    assert [(e.row, e.column, e.code) for e in report.errors] == [(1, *e) for e in expected]
    assert report.rows_read == 0
    assert sink.batches == []


@pytest.mark.anyio
async def test_header_errors_stop_reading_the_stream() -> None:
    """After a bad header the rest of an endless upload is never read."""
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b"sku,colour\r\n"
        while True:
            pulled += 1
            yield b"A,red\r\n" * 100

    report = await import_csv(endless(), CsvSpec(OrderRow), Recorder())
    assert [e.code for e in report.errors] == ["import.unknown_column", "import.missing_column"]
    assert pulled == 0


@pytest.mark.anyio
async def test_header_accepts_aliases_and_extra_columns_when_allowed() -> None:
    """Aliases name columns (and errors), headers are trimmed; extra columns pass if allowed."""

    class Row(BaseModel):
        sku: str = Field(alias="SKU")
        quantity: int = Field(alias="Qty")

    spec = CsvSpec(Row, allow_extra_columns=True)
    report = await import_csv(stream(" SKU , Qty ,comment\r\nA,2,x\r\nB,z,y\r\n"), spec, drop)
    assert [(e.row, e.column) for e in report.errors] == [(3, "Qty")]


@pytest.mark.anyio
async def test_max_errors_caps_the_report() -> None:
    """Past max_errors the report stops growing, says so, and still counts every row."""
    bad = dict.fromkeys(range(2, 32), "x")
    report = await run(orders(40, bad=bad), CsvSpec(OrderRow, max_errors=5), sink=Recorder())
    assert [e.row for e in report.errors] == [2, 3, 4, 5, 6]
    assert report.errors_truncated
    assert (report.rows_read, report.rows_valid) == (40, 10)


@pytest.mark.anyio
async def test_long_fields_and_bad_records_are_row_errors() -> None:
    """Cells over max_field_chars, extra cells and an unterminated quote each name their row."""
    spec = CsvSpec(OrderRow, max_field_chars=10)
    data = (
        HEADER
        + f"A,1,{'y' * 11}\r\n"  # row 2: too long
        + "B,2,ok,extra\r\n"  # row 3: more cells than the header
        + "C,3,ok,,\r\n"  # row 4: trailing empty cells are fine
        + 'D,4,"a"b\r\n'  # row 5: text after a closing quote
        + 'E,5,ab"c\r\n'  # row 6: a quote inside an unquoted cell is literal
        + 'F,6,"open'  # row 7: the file ends inside quotes
    )
    sink = Recorder()
    report = await run(data, spec, sink=sink)
    assert [(e.row, e.column, e.code) for e in report.errors] == [
        (2, "note", "import.field_too_long"),
        (3, None, "import.extra_cells"),
        (5, None, "import.malformed"),
        (7, None, "import.malformed"),
    ]
    assert report.rows_valid == 2
    assert await run(HEADER + 'E,5,ab"c\r\n', sink=sink) == ImportReport(
        1, 1, (), errors_truncated=False
    )
    assert sink.rows[-1].note == 'ab"c'
    runaway = await run(
        HEADER + 'A,1,"' + "z\n" * 300,
        CsvSpec(OrderRow, max_field_chars=10, max_columns=3),
        sink=Recorder(),
    )
    assert [(e.row, e.code) for e in runaway.errors] == [(2, "import.record_too_long")]


@pytest.mark.anyio
async def test_long_values_are_never_echoed_in_messages() -> None:
    """A row error message is at most 100 characters, whatever the cell held."""

    class Row(BaseModel):
        quantity: int = Field(le=5)
        code: str = Field(pattern="^[A-Z]+$")

    spec = CsvSpec(Row)
    report = await import_csv(stream("quantity,code\r\n9,a" + "b" * 5000 + "\r\n"), spec, drop)
    assert {e.column for e in report.errors} == {"quantity", "code"}
    assert all(len(e.message) <= 100 and "bbbb" not in e.message for e in report.errors)


class Tracked(BaseModel):
    """A row model that counts its live instances."""

    live: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    sku: str
    quantity: int

    def model_post_init(self, context: Any, /) -> None:
        Tracked.live += 1
        Tracked.peak = max(Tracked.peak, Tracked.live)

    def __del__(self) -> None:
        Tracked.live -= 1


@pytest.mark.anyio
async def test_200k_rows_stream_through_with_bounded_memory() -> None:
    """200,000 rows pass in batches of at most 500 and never more than one batch is alive."""
    sizes: list[int] = []

    async def generated() -> AsyncIterator[bytes]:
        buffer = bytearray(b"sku,quantity\n")
        for n in range(200_000):
            buffer += b"S%d,%d\n" % (n, n % 97)
            if len(buffer) >= CHUNK:
                yield bytes(buffer)
                buffer.clear()
        yield bytes(buffer)

    async def sink(batch: Sequence[tuple[int, Tracked]]) -> None:
        sizes.append(len(batch))

    Tracked.live = Tracked.peak = 0
    report = await import_csv(generated(), CsvSpec(Tracked, max_rows=200_000), sink)
    assert report.ok
    assert report.rows_valid == sum(sizes) == 200_000
    assert max(sizes) == 500
    assert Tracked.peak <= 501


@pytest.mark.anyio
async def test_progress_is_reported_with_increasing_counts() -> None:
    """Progress arrives every progress_every rows and once at the end, counts never decreasing."""
    seen: list[ImportProgress] = []

    async def on_progress(p: ImportProgress) -> None:
        seen.append(p)

    data = orders(1050, bad={700: "x"})
    await run(data, sink=Recorder(), progress=on_progress, progress_every=100)
    assert [p.rows_read for p in seen] == [*range(100, 1001, 100), 1050]
    assert all(a.bytes_read <= b.bytes_read for a, b in itertools.pairwise(seen))
    assert seen[-1] == ImportProgress(1050, len(data), 1049, 1)
    sync_seen: list[int] = []
    await run(
        orders(10),
        sink=Recorder(),
        progress=lambda p: sync_seen.append(p.rows_read),
        progress_every=4,
    )
    assert sync_seen == [4, 8, 10]


@pytest.mark.anyio
async def test_rows_are_counted_in_metrics() -> None:
    """hardened_import_rows_total counts valid and invalid rows by outcome."""

    def value(outcome: str) -> float:
        got = REGISTRY.get_sample_value("hardened_import_rows_total", {"outcome": outcome})
        return got or 0.0

    before = value("valid"), value("invalid")
    await run(orders(10, bad={3: "x", 4: "y"}), sink=Recorder())
    assert (value("valid") - before[0], value("invalid") - before[1]) == (8, 2)


def test_spec_rejects_unsafe_settings() -> None:
    """A spec cannot exceed csv's global field limit or use a quote/newline delimiter."""
    with pytest.raises(ValueError, match="field_size_limit"):
        CsvSpec(OrderRow, max_field_chars=csv.field_size_limit())
    with pytest.raises(ValueError, match="delimiter"):
        CsvSpec(OrderRow, delimiter='"')
    with pytest.raises(LookupError):
        CsvSpec(OrderRow, encoding="no-such-codec")


class Cell(BaseModel):
    id: int
    text: str = ""


def _csv_bytes(rows: Iterable[list[str]], delimiter: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue().encode()


@pytest.mark.anyio
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(
        st.text(st.one_of(st.sampled_from('=+-@\t\r\n",; \'"'), st.characters(codec="utf-8"))),
        min_size=1,
        max_size=12,
    ),
    size=st.integers(1, 40),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
async def test_cells_round_trip_except_for_the_formula_prefix(
    texts: list[str], size: int, delimiter: str
) -> None:
    """Any text written by csv.writer imports unchanged, apart from neutralize_formula."""
    data = _csv_bytes([["id", "text"], *([str(i), t] for i, t in enumerate(texts))], delimiter)
    got: list[Cell] = []

    async def sink(batch: Sequence[tuple[int, Cell]]) -> None:
        got.extend(cell for _, cell in batch)

    report = await import_csv(
        stream(data, size), CsvSpec(Cell, delimiter=delimiter), sink, batch_size=3
    )
    assert report.ok, report.errors
    assert [c.text for c in got] == [neutralize_formula(t) for t in texts]


@pytest.mark.anyio
async def test_sink_gets_row_numbers_and_its_errors_end_delivery() -> None:
    """The sink sees spreadsheet row numbers; errors it returns are reported and stop delivery."""
    batches: list[list[int]] = []

    async def refuse_row_30(batch: Sequence[tuple[int, OrderRow]]) -> list[RowError]:
        batches.append([number for number, _ in batch])
        return [RowError(n, "sku", "unknown sku", "import.unknown") for n, _ in batch if n == 30]

    report = await run(orders(100), sink=refuse_row_30, batch_size=10)
    assert not report.ok
    assert report.errors == (RowError(30, "sku", "unknown sku", "import.unknown"),)
    assert batches == [list(range(2, 12)), list(range(12, 22)), list(range(22, 32))]
    assert report.to_problem().errors[0].loc == ("row", 30, "sku")


@pytest.mark.anyio
async def test_constrained_optional_text_fields_are_neutralised() -> None:
    """Optional[Annotated[str, constraints]] fields are text too and get the formula prefix."""

    class Noted(BaseModel):
        ref: Annotated[str, StringConstraints(max_length=10)]
        note: Annotated[str, StringConstraints(max_length=50)] | None = None

    got: list[Noted] = []

    async def sink(batch: Sequence[tuple[int, Noted]]) -> None:
        got.extend(row for _, row in batch)

    data = "ref,note\r\n=A,@SUM(A1)\r\nb,\r\n"
    assert (await import_csv(stream(data), CsvSpec(Noted), sink)).ok
    assert [(r.ref, r.note) for r in got] == [("'=A", "'@SUM(A1)"), ("b", None)]
