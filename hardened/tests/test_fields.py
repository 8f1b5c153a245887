"""hardened.fields: what the types accept, the database stores; what they refuse is a 422."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import pydantic
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, TypeDecorator, select
from sqlalchemy.ext.asyncio import create_async_engine

from hardened.fastapi import install_problem_handlers
from hardened.fields import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    AwareDatetime,
    Int32,
    Int64,
    MultilineText,
    UtcDatetime,
    int_between,
    text,
)
from hardened.fields import Text as TextField
from hardened.testing import temporary_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncEngine

Name = Annotated[str, text(max_length=8)]
Note = Annotated[str, text(max_length=200, multiline=True)]


class Person(BaseModel):
    name: Name


def _types(exc: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    return [(tuple(e["loc"]), e["type"]) for e in exc.errors(include_input=False)]


def _refusal(adapter: TypeAdapter[Any], value: Any, *, as_json: bool = False) -> str:
    validate = adapter.validate_json if as_json else adapter.validate_python
    with pytest.raises(ValidationError) as caught:
        validate(value)
    (error,) = caught.value.errors(include_input=False)
    return str(error["type"])


# --- Text -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["\x00", "a\x00b", "ab\x00", "  \x00  "])
def test_text_refuses_nul_from_python_input(value: str) -> None:
    """A NUL anywhere, even among stripped whitespace, is string_nul at the field."""
    with pytest.raises(ValidationError) as caught:
        Person.model_validate({"name": value})
    assert _types(caught.value) == [(("name",), "string_nul")]


def test_text_refuses_nul_from_a_json_escape() -> None:
    """JSON's NUL escape is refused as string_nul on pydantic's own JSON path."""
    with pytest.raises(ValidationError) as caught:
        Person.model_validate_json(b'{"name": "a\\u0000"}')
    assert _types(caught.value) == [(("name",), "string_nul")]
    assert caught.value.errors()[0]["ctx"] == {"position": 1}


@pytest.mark.parametrize(
    "value", [chr(0xD800), chr(0xDFFF), "a" + chr(0xDC00), chr(0xD83D) + chr(0xDE00)]
)
def test_text_refuses_surrogate_code_points_from_python_input(value: str) -> None:
    """Any code point in U+D800-U+DFFF, paired or not, is string_surrogate."""
    with pytest.raises(ValidationError) as caught:
        Person.model_validate({"name": value})
    assert _types(caught.value) == [(("name",), "string_surrogate")]


def test_a_surrogate_escape_is_a_validation_error_on_both_json_paths() -> None:
    """A surrogate escape: pydantic's parser refuses the document, Python's json the field."""
    raw = b'{"name": "\\ud800"}'
    with pytest.raises(ValidationError) as parsed_by_pydantic:
        Person.model_validate_json(raw)
    assert _types(parsed_by_pydantic.value) == [((), "json_invalid")]

    decoded = json.loads(raw)  # what FastAPI does with a request body
    assert decoded == {"name": "\ud800"}
    with pytest.raises(ValidationError) as parsed_by_python:
        Person.model_validate(decoded)
    assert _types(parsed_by_python.value) == [(("name",), "string_surrogate")]

    with pytest.raises(ValidationError):
        Person.model_validate_json('{"name": "\ud800"}')  # a str holding the surrogate itself


@pytest.mark.parametrize("char", ["\x01", "\x08", "\x1b", "\x1f", "\x7f", "\x85", "\x9b"])
def test_text_refuses_control_characters(char: str) -> None:
    """C0 controls, DEL and C1 controls are string_control in single- and multi-line text."""
    assert _refusal(TypeAdapter(Name), f"a{char}b") == "string_control"
    assert _refusal(TypeAdapter(Note), f"a{char}b") == "string_control"


@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
def test_line_breaks_and_tabs_only_in_multiline_text(char: str) -> None:
    """TAB, LF and CR are refused in single-line text and kept in multi-line text."""
    assert _refusal(TypeAdapter(Name), f"a{char}b") == "string_control"
    assert _refusal(TypeAdapter(TextField), f"a{char}b") == "string_control"
    assert TypeAdapter(Note).validate_python(f"a{char}b") == f"a{char}b"
    assert TypeAdapter(MultilineText).validate_python(f"a{char}b") == f"a{char}b"


@pytest.mark.parametrize(
    "value", ["é", "Zoë", "שלום", "a\u200db", "\U0001f600", "\ufffd", "\uffff", "日本語"]
)
def test_text_keeps_ordinary_unicode(value: str) -> None:
    """Accents, right-to-left scripts, joiners, astral characters and U+FFFF pass unchanged."""
    assert TypeAdapter(Name).validate_python(value) == value


def test_text_bounds_strip_and_lower_at_the_edges() -> None:
    """Length counts after stripping; lower-casing happens after the pattern matched."""
    ta = TypeAdapter(Annotated[str, text(min_length=2, max_length=4, lower=True)])
    assert ta.validate_python("  AB  ") == "ab"
    assert ta.validate_python("ABCD") == "abcd"
    assert _refusal(ta, "ABCDE") == "string_too_long"
    assert _refusal(ta, " a ") == "string_too_short"
    unstripped = TypeAdapter(Annotated[str, text(max_length=3, strip=False)])
    assert unstripped.validate_python(" a ") == " a "
    assert _refusal(unstripped, " ab ") == "string_too_long"
    coded = TypeAdapter(Annotated[str, text(max_length=10, pattern=r"^[A-Z0-9-]+$", lower=True)])
    assert coded.validate_python(" AB-1 ") == "ab-1"
    assert _refusal(coded, "AB 1") == "string_pattern_mismatch"


def test_the_character_rule_is_reported_before_pattern_and_length() -> None:
    """A NUL is string_nul even where the pattern or the length would also refuse the value."""
    coded = TypeAdapter(Annotated[str, text(max_length=3, pattern=r"^[a-z]+$")])
    assert _refusal(coded, "a\x00") == "string_nul"
    assert _refusal(coded, "\x00" * 100) == "string_nul"
    assert _refusal(coded, "a\ud800") == "string_surrogate"


def test_text_checks_bytes_after_pydantic_decodes_them() -> None:
    """Bytes (python mode) are decoded by pydantic first and then checked."""
    assert TypeAdapter(Name).validate_python(b"abc") == "abc"
    assert _refusal(TypeAdapter(Name), b"a\x00") == "string_nul"


def test_text_constraints_reach_the_json_schema() -> None:
    """OpenAPI still shows the lengths and the pattern."""
    schema = TypeAdapter(Annotated[str, text(min_length=1, max_length=9, pattern="^a+$")])
    assert schema.json_schema() == {
        "type": "string",
        "minLength": 1,
        "maxLength": 9,
        "pattern": "^a+$",
    }


def test_factories_refuse_impossible_bounds() -> None:
    """Bounds no column can have are a ValueError where the schema is defined."""
    with pytest.raises(ValueError, match="max_length"):
        text(max_length=0)
    with pytest.raises(ValueError, match="min_length"):
        text(min_length=5, max_length=4)
    with pytest.raises(ValueError, match="bounds"):
        int_between(0, INT32_MAX + 1)
    with pytest.raises(ValueError, match="bounds"):
        int_between(INT64_MIN - 1, bits=64)
    with pytest.raises(ValueError, match="bounds"):
        int_between(5, 1)


def test_metadata_used_as_a_type_says_how_to_annotate() -> None:
    """Writing ``name: text(...)`` instead of ``Annotated[str, text(...)]`` fails loudly."""
    with pytest.raises(TypeError, match=r"Annotated\[str, text"):
        TypeAdapter(text(max_length=3))
    with pytest.raises(TypeError, match=r"Annotated\[str, text"):
        _ = text(max_length=3) | None
    with pytest.raises(TypeError, match=r"Annotated\[int, int_between"):
        TypeAdapter(int_between(1, 3))
    with pytest.raises(TypeError, match=r"Annotated\[int, int_between"):
        _ = None | int_between(1, 3)
    optional = TypeAdapter(Annotated[str, text(max_length=3)] | None)
    assert optional.validate_python(None) is None
    assert _refusal(optional, "\x00") == "string_nul"


# --- integers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "lo", "hi"),
    [
        (Int32, INT32_MIN, INT32_MAX),
        (Int64, INT64_MIN, INT64_MAX),
        (Annotated[int, int_between(1, 100)], 1, 100),
        (Annotated[int, int_between(1)], 1, INT32_MAX),
        (Annotated[int, int_between(bits=16)], -(2**15), 2**15 - 1),
        (Annotated[int, int_between(hi=0, bits=64)], INT64_MIN, 0),
    ],
)
def test_integers_hold_their_column_range_exactly(annotation: Any, lo: int, hi: int) -> None:
    """Both edges are accepted and one past each is refused, from python and from JSON."""
    ta: TypeAdapter[int] = TypeAdapter(annotation)
    for value in (lo, hi):
        assert ta.validate_python(value) == value
        assert ta.validate_json(str(value)) == value
        assert ta.validate_python(str(value)) == value  # a query parameter
    assert _refusal(ta, lo - 1) == "greater_than_equal"
    assert _refusal(ta, hi + 1) == "less_than_equal"
    assert _refusal(ta, str(hi + 1), as_json=True) == "less_than_equal"
    assert _refusal(ta, str(hi + 1)) == "less_than_equal"


def test_int32_refuses_the_value_that_crashed_an_integer_column() -> None:
    """per_customer_limit = 2**31 is a 422-shaped error at the field, not a driver error."""

    class Coupon(BaseModel):
        per_customer_limit: Int32 | None = None

    with pytest.raises(ValidationError) as caught:
        Coupon.model_validate_json(b'{"per_customer_limit": 2147483648}')
    assert _types(caught.value) == [(("per_customer_limit",), "less_than_equal")]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, "int_type"),
        (False, "int_type"),
        (1.0, "int_type"),
        (float(2**53), "int_type"),
        (Decimal(1), "int_type"),
        (b"1", "int_type"),
        (None, "int_type"),
        ("1.0", "int_parsing"),
        ("1_000", "int_parsing"),
        (" 1", "int_parsing"),
        ("1\n", "int_parsing"),
        ("0x10", "int_parsing"),
        ("", "int_parsing"),
    ],
)
def test_integers_refuse_what_lax_mode_would_coerce(value: Any, error: str) -> None:
    """Bools, floats (even integral) and non-decimal strings are refused, not coerced."""
    assert _refusal(TypeAdapter(Int32), value) == error


@pytest.mark.parametrize("raw", ["true", "false", "1.0", "1e3", "null"])
def test_integers_refuse_json_booleans_and_floats(raw: str) -> None:
    """JSON true and 1.0 are not integers."""
    assert _refusal(TypeAdapter(Int32), raw, as_json=True) == "int_type"


@pytest.mark.parametrize("value", ["7", "+7", "-7", "007"])
def test_integers_accept_decimal_digit_strings(value: str) -> None:
    """Query, path and header parameters arrive as strings of digits."""
    assert TypeAdapter(Int32).validate_python(value) == int(value)


def test_integer_bounds_reach_the_json_schema() -> None:
    """OpenAPI shows the column's range."""
    assert TypeAdapter(Int32).json_schema() == {
        "type": "integer",
        "minimum": INT32_MIN,
        "maximum": INT32_MAX,
    }


# --- datetimes --------------------------------------------------------------


def test_aware_datetime_is_pydantics_own() -> None:
    """The re-export is pydantic's AwareDatetime, so its documented behaviour applies."""
    assert AwareDatetime is pydantic.AwareDatetime


@pytest.mark.parametrize("annotation", [AwareDatetime, UtcDatetime])
@pytest.mark.parametrize("value", ["2024-05-01T10:00:00", "2024-05-01", datetime(2024, 5, 1)])
def test_naive_datetimes_are_refused(annotation: Any, value: Any) -> None:
    """A datetime without a timezone is timezone_aware, from a string or an object."""
    assert _refusal(TypeAdapter(annotation), value) == "timezone_aware"


def test_naive_datetime_from_json_is_refused() -> None:
    """The JSON path refuses a naive timestamp as well."""
    assert _refusal(TypeAdapter(UtcDatetime), '"2024-05-01T10:00:00"', as_json=True) == (
        "timezone_aware"
    )


def test_utc_datetime_converts_every_offset_to_utc() -> None:
    """One instant has one spelling: +02:00 and Z inputs come out equal and in UTC."""
    ta = TypeAdapter(UtcDatetime)
    a = ta.validate_python("2024-05-01T10:00:00+02:00")
    b = ta.validate_json('"2024-05-01T08:00:00Z"')
    c = ta.validate_python(datetime(2024, 5, 1, 3, 0, tzinfo=timezone(timedelta(hours=-5))))
    assert a == b == c
    assert a.utcoffset() == timedelta(0)
    assert a.isoformat() == b.isoformat() == c.isoformat() == "2024-05-01T08:00:00+00:00"


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_utc_datetime_refuses_instants_outside_pythons_range(value: str) -> None:
    """Converting to UTC past year 1 or 9999 is a validation error, not an OverflowError."""
    assert _refusal(TypeAdapter(UtcDatetime), value) == "datetime_object_invalid"


def test_utc_datetime_accepts_the_edges_that_fit() -> None:
    """Year 1 and year 9999 in UTC itself are accepted."""
    ta = TypeAdapter(UtcDatetime)
    assert ta.validate_python("0001-01-01T00:00:00Z") == datetime(1, 1, 1, tzinfo=UTC)
    assert ta.validate_python("9999-12-31T23:59:59Z").year == 9999


# --- over FastAPI and a real database ---------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamptz column that refuses naive datetimes, as a service's models would."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            msg = "naive datetime"
            raise ValueError(msg)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


METADATA = MetaData()
ITEMS = Table(
    "items",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("per_customer_limit", Integer),
    Column("valid_from", UTCDateTime),
)


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, text(min_length=1, max_length=20)]
    note: Annotated[str, text(max_length=200, multiline=True)] = ""
    per_customer_limit: Int32 | None = None
    valid_from: UtcDatetime | None = None


def _app(engine: AsyncEngine) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/items", status_code=201)
    async def create(item: ItemIn) -> dict[str, int]:
        async with engine.begin() as conn:
            result = await conn.execute(ITEMS.insert().values(**item.model_dump()))
        return {"id": result.inserted_primary_key[0]}

    @app.get("/search")
    async def search(q: Annotated[str, text(max_length=20), Query()]) -> dict[str, str]:
        async with engine.connect() as conn:
            await conn.execute(select(ITEMS.c.id).where(ITEMS.c.name == q))
        return {"q": q}

    return app


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test over a SQLite file and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fields.db'}"
        return
    database_url = request.getfixturevalue("database_url")
    with temporary_database(database_url, prefix="hardened_fields") as url:
        yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine with the items table created."""
    eng = create_async_engine(db_url)
    async with eng.begin() as conn:
        await conn.run_sync(METADATA.create_all)
    yield eng
    await eng.dispose()


def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


HOSTILE_BODIES = [
    (b'{"name": "a\\u0000b"}', ["body", "name"], "string_nul"),
    (b'{"name": "ok", "note": "x\\u0000"}', ["body", "note"], "string_nul"),
    (b'{"name": "\\ud800"}', ["body", "name"], "string_surrogate"),
    (b'{"name": "ok", "note": "\\udfffx"}', ["body", "note"], "string_surrogate"),
    (b'{"name": "a\\u001bb"}', ["body", "name"], "string_control"),
    (b'{"name": "ok", "per_customer_limit": 2147483648}', ["body", "per_customer_limit"], None),
    (b'{"name": "ok", "per_customer_limit": true}', ["body", "per_customer_limit"], "int_type"),
    (
        b'{"name": "ok", "valid_from": "2024-05-01T10:00:00"}',
        ["body", "valid_from"],
        "timezone_aware",
    ),
    (
        b'{"name": "ok", "valid_from": "0001-01-01T00:00:00+01:00"}',
        ["body", "valid_from"],
        "datetime_object_invalid",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("body", "loc", "error"), HOSTILE_BODIES)
async def test_hostile_values_are_422_naming_the_field_and_store_nothing(
    engine: AsyncEngine, body: bytes, loc: list[str], error: str | None
) -> None:
    """Each value the database would refuse is a 422 problem at its field; no row is written."""
    async with _client(_app(engine)) as client:
        resp = await client.post(
            "/items", content=body, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert problem["code"] == "request.validation_failed"
    (field_error,) = problem["errors"]
    assert field_error["loc"] == loc
    assert field_error["type"] == (error or "less_than_equal")
    async with engine.connect() as conn:
        assert (await conn.execute(select(ITEMS.c.id))).all() == []


@pytest.mark.anyio
async def test_a_nul_in_a_query_parameter_is_422_naming_it(engine: AsyncEngine) -> None:
    """``?q=%00`` is refused at query.q before the query runs."""
    async with _client(_app(engine)) as client:
        bad = await client.get("/search", params={"q": "a\x00"})
        good = await client.get("/search", params={"q": "a b"})
    assert bad.status_code == 422
    assert [(e["loc"], e["type"]) for e in bad.json()["errors"]] == [(["query", "q"], "string_nul")]
    assert good.status_code == 200
    assert good.json() == {"q": "a b"}


EDGE_ITEMS = [
    {"name": "x" * 20, "note": "line 1\r\n\tline 2\n" + "é" * 180},
    {"name": "\U0001f600 \u05e9\u05dc\u05d5\u05dd", "note": "\ufffd\uffff\u200d"},
    {"name": "min", "per_customer_limit": INT32_MIN, "valid_from": "0001-01-01T00:00:00Z"},
    {"name": "max", "per_customer_limit": INT32_MAX, "valid_from": "9999-12-31T23:59:59Z"},
    {"name": "offset", "valid_from": "2024-05-01T10:00:00+02:00"},
]


@pytest.mark.anyio
async def test_everything_accepted_is_stored_and_read_back_unchanged(engine: AsyncEngine) -> None:
    """Values at the edge of every type go into the real columns and come back as validated."""
    async with _client(_app(engine)) as client:
        for body in EDGE_ITEMS:
            resp = await client.post("/items", json=body)
            assert resp.status_code == 201, (body, resp.text)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ITEMS).order_by(ITEMS.c.id))).mappings().all()
    assert len(rows) == len(EDGE_ITEMS)
    for body, row in zip(EDGE_ITEMS, rows, strict=True):
        expected = ItemIn.model_validate(body).model_dump()
        assert {k: row[k] for k in expected} == expected
