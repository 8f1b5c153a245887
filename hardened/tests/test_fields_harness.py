"""The text-input harness finds every string a client sends that could carry NUL to the database."""

import enum
import uuid
from typing import Annotated, Any, Literal

import pytest
from fastapi import APIRouter, Body, Cookie, Depends, FastAPI, Header, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.dataclasses import dataclass

from hardened.fields import Int32, UtcDatetime, text
from hardened.testing import TextInputReport, assert_text_inputs_safe, check_text_inputs

Safe = Annotated[str, text(max_length=50)]


def _failed(report: TextInputReport) -> dict[str, str]:
    return {f"{f.input.where} {f.input.loc}": f.reason for f in report.failures}


def _checked(report: TextInputReport) -> set[str]:
    return {f"{i.where} {i.loc}" for i in report.checked}


def _body_app(model: type[BaseModel]) -> FastAPI:
    app = FastAPI()

    @app.post("/things")
    async def create(thing: model) -> None:
        return None

    return app


class PlainThing(BaseModel):
    name: str
    qty: int


class SafeThing(BaseModel):
    name: Safe
    qty: Int32


def test_a_planted_plain_str_field_fails_the_run_by_name() -> None:
    """A body model with a plain ``str`` field is reported at that field, and the run raises."""
    app = _body_app(PlainThing)
    report = check_text_inputs(app)
    assert _checked(report) == {"POST /things body.name"}
    assert _failed(report) == {"POST /things body.name": "accepted NUL ('\\x00')"}
    with pytest.raises(AssertionError, match=r"POST /things body\.name \(PlainThing\.name\)"):
        assert_text_inputs_safe(app)


def test_the_same_model_built_on_text_passes() -> None:
    """The model with `text` in place of ``str`` passes, and its one text input was checked."""
    report = assert_text_inputs_safe(_body_app(SafeThing))
    assert [str(i) for i in report.checked] == ["POST /things body.name (SafeThing.name)"]
    assert report.failures == report.unverified == ()


class Color(enum.Enum):
    red = "red"


class Line(BaseModel):
    sku: str
    qty: int


class Address(BaseModel):
    street: str


class Order(BaseModel):
    lines: list[Line]
    ship_to: Address | None = None
    either: int | str = 0
    tags: dict[str, Safe] = {}
    codes: tuple[str, int] = ("a", 1)
    nested: list[list[Annotated[str, StringConstraints(max_length=3)]]] = []
    kind: Literal["a", "b"] = "a"
    color: Color = Color.red
    ref: uuid.UUID | None = None
    at: UtcDatetime | None = None
    fine: Safe = "x"


def test_nested_models_lists_unions_and_dicts_are_walked() -> None:
    """Strings in lists of models, optional models, unions, dict keys and tuples are all found."""
    report = check_text_inputs(_body_app(Order))
    failed = {loc.removeprefix("POST /things ") for loc in _failed(report)}
    assert failed == {
        "body.lines[].sku",
        "body.ship_to.street",
        "body.either",
        "body.tags{key}",
        "body.codes[0]",
        "body.nested[][]",
    }
    passed = {loc.removeprefix("POST /things ") for loc in _checked(report)} - failed
    # Literal and enum values are text that cannot hold NUL; UUIDs and datetimes are not text.
    assert passed == {"body.tags{}", "body.kind", "body.color", "body.fine"}


class Tree(BaseModel):
    name: str
    children: list["Tree"] = []


def test_recursive_models_are_walked_once() -> None:
    """A self-referencing model terminates and reports its field."""
    report = check_text_inputs(_body_app(Tree))
    assert set(_failed(report)) == {"POST /things body.name"}


def _params_app(*, safe: bool) -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/v1")
    Str = Safe if safe else str  # noqa: N806

    async def tenant(x_tenant: Annotated[Str, Header()]) -> str:
        return str(x_tenant)

    @router.get("/things/{thing_id}")
    async def get(
        thing_id: Str,
        cursor: Annotated[Str | None, Query()] = None,
        limit: Annotated[int, Query()] = 10,
        session: Annotated[Str | None, Cookie()] = None,
        _tenant: str = Depends(tenant),
    ) -> None:
        return None

    @router.put("/things/{thing_id}")
    async def put(
        thing_id: Str,
        a: Annotated[Line if not safe else SafeThing, Body()],
        b: Annotated[Str, Body()],
    ) -> None:
        return None

    app.include_router(router)
    return app


def test_path_query_header_cookie_and_embedded_body_parameters_are_checked() -> None:
    """Every ``str`` parameter, including one a dependency declares, fails; ints are not text."""
    report = check_text_inputs(_params_app(safe=False))
    assert set(_failed(report)) == {
        "GET /v1/things/{thing_id} path.thing_id",
        "GET /v1/things/{thing_id} query.cursor",
        "GET /v1/things/{thing_id} cookie.session",
        "GET /v1/things/{thing_id} header.x-tenant",
        "PUT /v1/things/{thing_id} path.thing_id",
        "PUT /v1/things/{thing_id} body.a.sku",
        "PUT /v1/things/{thing_id} body.b",
    }
    assert len(report.checked) == 7


def test_parameters_built_on_text_pass() -> None:
    """The same routes with `text` parameters pass with the same coverage."""
    report = assert_text_inputs_safe(_params_app(safe=True))
    assert len(report.checked) == 7


@pytest.mark.parametrize(
    ("annotation", "refuses"),
    [
        (Annotated[str, StringConstraints(max_length=3)], False),
        (Annotated[str, StringConstraints(min_length=12)], False),
        (Annotated[str, Field(pattern=r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")], False),
        (Annotated[str, StringConstraints(pattern=r"^.+$")], False),
        (Annotated[str, StringConstraints(pattern=r"^[A-Z0-9-]{3,10}$")], True),
        (Annotated[str, StringConstraints(pattern=r"^[a-z]+$", max_length=2)], True),
        (Annotated[str, text(min_length=12, max_length=20)], True),
    ],
)
def test_constrained_strings_are_checked_with_their_constraints(
    annotation: Any, refuses: bool
) -> None:
    """A sample that meets the constraints carries the NUL, so only a real refusal passes."""

    class Model(BaseModel):
        f: annotation

    report = check_text_inputs(_body_app(Model))
    assert len(report.checked) == 1
    assert report.unverified == ()
    assert (report.failures == ()) is refuses


class NoNulValidator(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def _no_bad_characters(cls, value: str) -> str:
        if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            msg = "bad characters"
            raise ValueError(msg)
        return value


class NulOnlyValidator(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            msg = "no NUL"
            raise ValueError(msg)
        return value


class CrashingValidator(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def _crash(cls, value: str) -> str:
        if "\x00" in value:
            msg = "a C library would say this"
            raise TypeError(msg)
        return value


def test_field_validators_of_the_model_apply() -> None:
    """A field validator refusing both probes passes; one refusing only NUL fails on surrogates."""
    assert check_text_inputs(_body_app(NoNulValidator)).failures == ()
    assert _failed(check_text_inputs(_body_app(NulOnlyValidator))) == {
        "POST /things body.name": "accepted a lone surrogate ('\\ud800')"
    }


def test_a_validator_raising_on_nul_is_a_failure() -> None:
    """A validator raising something other than a validation error (a 500) fails the field."""
    report = check_text_inputs(_body_app(CrashingValidator))
    assert _failed(report) == {
        "POST /things body.name": "raised TypeError on NUL, not a validation error"
    }


def _strict_shape(value: str) -> str:
    if not value.startswith("sku:"):
        msg = "not a sku"
        raise ValueError(msg)
    return value


class Shaped(BaseModel):
    code: Annotated[str, text(max_length=20)]
    shaped: Annotated[str, Field(max_length=20)]

    @field_validator("shaped")
    @classmethod
    def _shape(cls, value: str) -> str:
        return _strict_shape(value)


def test_a_field_no_sample_fits_is_unverified_until_given_one() -> None:
    """A validator the sample pool cannot satisfy is unverified; a sample makes it checked."""
    app = _body_app(Shaped)
    report = check_text_inputs(app)
    assert [str(u.input) for u in report.unverified] == ["POST /things body.shaped (Shaped.shaped)"]
    assert "give one in samples" in report.unverified[0].reason
    with pytest.raises(AssertionError, match=r"Shaped\.shaped"):
        assert_text_inputs_safe(app)

    given = check_text_inputs(app, samples={"Shaped.shaped": "sku:1"})
    assert given.unverified == ()
    assert _failed(given) == {"POST /things body.shaped": "accepted NUL ('sku:1\\x00')"}

    ignored = assert_text_inputs_safe(app, ignore={"POST /things body.shaped"})
    assert [str(i) for i in ignored.ignored] == ["POST /things body.shaped (Shaped.shaped)"]


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")

    meta: dict[str, Any] = {}
    blob: Any = None


def test_any_values_and_allowed_extras_are_text_inputs_that_fail() -> None:
    """``Any`` and extra="allow" accept a NUL string, which PostgreSQL's jsonb refuses too."""
    failed = set(_failed(check_text_inputs(_body_app(Loose))))
    assert failed == {
        "POST /things body.meta{key}",
        "POST /things body.meta{}",
        "POST /things body.blob",
        "POST /things body.<extra>",
    }


class CsvRow(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    sku: str
    note: Safe | None = None


@dataclass
class Point:
    label: str


def test_models_validated_outside_routes_are_checked_too() -> None:
    """A CSV row model and a pydantic dataclass passed in ``models`` are walked like bodies."""
    report = check_text_inputs(FastAPI(), models=[CsvRow, Point])
    assert _failed(report) == {
        "model CsvRow sku": "accepted NUL ('\\x00')",
        "model Point label": "accepted NUL ('\\x00')",
    }
    assert _checked(report) == {"model CsvRow sku", "model CsvRow note", "model Point label"}
