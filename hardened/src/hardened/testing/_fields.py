r"""Text-input harness: every string a client can send refuses NUL and lone surrogates.

`hardened.fields.text` keeps NUL (which PostgreSQL text refuses) and lone
surrogates (which no UTF-8 encoder writes) out of a field; this harness finds
the fields that do not use it. It walks every route of a FastAPI app: body
parameters, including nested models, lists and dicts of models and members
of unions, and query, header, cookie and path parameters, plus any extra
``models`` validated outside a route (CSV rows). Every place a string can land
is a text input; each is validated with values holding a probe character and
must refuse them all, with a ValidationError (another exception is a 500).

How a field is checked: by its own pydantic-core schema, the one the model
validates that field with, so its constraints, ``Annotated`` validators,
``@field_validator`` functions and the model's config all apply, and a
refusal is at that field by construction (model-level validators, which see
the whole model, are not run). A refusal only counts if the field accepts
the same value without the probe character, so a sample value is needed:
the harness tries the field's ``Literal``/enum values, strings of its minimum
length and a few common shapes (an email, a hostname, a code, a UUID), then
inserts or substitutes the probe at each of the first 64 positions of up to
two accepted samples, which also finds a pattern whose character class lets
NUL through (``[^@\s]`` in an email pattern does). A text input none of those
samples passes is *unverified*: give it a sample (``samples``) or vouch for
it (``ignore``), both keyed by the field's ``owner`` (``"OrderIn.note"``,
``"query.cursor"``) or by ``"<where> <loc>"``. Fields that cannot hold a
string (integers, UUIDs, datetimes) are not text inputs; ``Any`` is, and
fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

from hardened.testing._routes import route_table

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

    from pydantic_core import CoreConfig, CoreSchema

__all__ = [
    "TextInput",
    "TextInputFailure",
    "TextInputReport",
    "assert_text_inputs_safe",
    "check_text_inputs",
]

_NUL = "\x00"
_SURROGATE = "\ud800"
_PROBE_NAMES = {_NUL: "NUL", _SURROGATE: "a lone surrogate"}

# Shapes common validators accept; a field none of them passes needs a sample.
_POOL = (
    "a",
    "abc",
    "Abc 123",
    "ABC-123",
    "abc_123",
    "123",
    "user@example.com",
    "shop.example.com",
    "https://example.com/",
    "2024-01-01",
    "2024-01-01T00:00:00Z",
    "00000000-0000-4000-8000-000000000000",
    "+15555550123",
)
_MAX_SAMPLES = 2
_MAX_POSITIONS = 64
_PARAM_KINDS = (
    ("path", "path_params"),
    ("query", "query_params"),
    ("header", "header_params"),
    ("cookie", "cookie_params"),
)
_WRAPPERS = frozenset(
    {"nullable", "default", "custom-error", "function-before", "function-after", "function-wrap"}
)
_SEQUENCES = frozenset({"list", "set", "frozenset", "generator"})
_ANY: CoreSchema = {"type": "any"}


@dataclass(frozen=True, slots=True)
class TextInput:
    """One place a client's string lands.

    ``where`` is the route (``"POST /orders"``) or ``"model ImportRow"``;
    ``loc`` is where FastAPI would report an error (``"body.lines[].sku"``);
    ``owner`` is where the field is declared (``"OrderLineIn.sku"``, or
    ``"query.cursor"`` for a parameter), the same for every route using it.
    """

    where: str
    loc: str
    owner: str

    def __str__(self) -> str:
        return f"{self.where} {self.loc} ({self.owner})"


@dataclass(frozen=True, slots=True)
class TextInputFailure:
    input: TextInput
    reason: str


@dataclass(frozen=True, slots=True)
class TextInputReport:
    """What a run found; ``checked`` are the inputs verified, refusing or not."""

    checked: tuple[TextInput, ...]
    failures: tuple[TextInputFailure, ...]
    unverified: tuple[TextInputFailure, ...]
    ignored: tuple[TextInput, ...]


@dataclass(slots=True)
class _Leaf:
    top: CoreSchema
    config: CoreConfig | None
    loc: tuple[str, ...]
    owner: str
    textual: bool = False
    hints: list[str] = field(default_factory=list)


def _format_loc(loc: Sequence[str]) -> str:
    out = ""
    for segment in loc:
        out += segment if segment.startswith(("[", "{")) or not out else "." + segment
    return out


@dataclass(frozen=True, slots=True)
class _At:
    """Where the walk is: the node a leaf is validated with, and how to name the leaf."""

    top: CoreSchema
    config: CoreConfig | None
    loc: tuple[str, ...]
    owner: str
    refs: frozenset[str] = frozenset()

    def boundary(self, child: CoreSchema, segment: str) -> tuple[CoreSchema, _At]:
        # A container is a boundary: its items are validated on their own.
        at = _At(child, self.config, (*self.loc, segment), self.owner + segment, self.refs)
        return child, at

    def field(self, child: CoreSchema, key: str, owner: str, config: CoreConfig | None) -> _At:
        return _At(child, config, (*self.loc, key), owner, self.refs)


class _Walker:
    """Collects the text leaves of a core schema, each with the schema node to validate."""

    def __init__(self) -> None:
        self.definitions: dict[str, CoreSchema] = {}
        self.leaves: dict[tuple[int, tuple[str, ...]], _Leaf] = {}

    def walk(self, schema: CoreSchema, at: _At) -> None:
        s: dict[str, Any] = dict(schema)
        kind = s["type"]
        if kind in _WRAPPERS:
            self.walk(s["schema"], at)
        elif kind in _SEQUENCES:
            self.walk(*at.boundary(s.get("items_schema", _ANY), "[]"))
        else:
            getattr(self, "_" + kind.replace("-", "_"), self._other)(s, at)

    def _other(self, s: dict[str, Any], at: _At) -> None:
        """Not a string: int, float, bool, uuid, datetime, bytes, url, is-instance..."""

    def _definitions(self, s: dict[str, Any], at: _At) -> None:
        for definition in s["definitions"]:
            self.definitions[definition["ref"]] = definition
        self.walk(s["schema"], at)

    def _definition_ref(self, s: dict[str, Any], at: _At) -> None:
        ref = s["schema_ref"]
        if ref not in at.refs and ref in self.definitions:  # recursive models: once per path
            self.walk(self.definitions[ref], replace(at, refs=at.refs | {ref}))

    def _json_or_python(self, s: dict[str, Any], at: _At) -> None:
        self.walk(s["python_schema"], at)  # FastAPI validates python objects

    def _lax_or_strict(self, s: dict[str, Any], at: _At) -> None:
        self.walk(s["lax_schema"], at)
        self.walk(s["strict_schema"], at)

    def _chain(self, s: dict[str, Any], at: _At) -> None:
        for step in s["steps"]:
            self.walk(step, at)

    def _union(self, s: dict[str, Any], at: _At) -> None:
        for choice in s["choices"]:
            self.walk(choice[0] if isinstance(choice, tuple) else choice, at)

    def _tagged_union(self, s: dict[str, Any], at: _At) -> None:
        for choice in s["choices"].values():
            self.walk(choice, at)

    def _tuple(self, s: dict[str, Any], at: _At) -> None:
        variadic = s.get("variadic_item_index")
        for i, item in enumerate(s.get("items_schema", [_ANY])):
            self.walk(*at.boundary(item, "[]" if i == variadic else f"[{i}]"))

    def _dict(self, s: dict[str, Any], at: _At) -> None:
        self.walk(*at.boundary(s.get("keys_schema", _ANY), "{key}"))
        self.walk(*at.boundary(s.get("values_schema", _ANY), "{}"))

    def _model(self, s: dict[str, Any], at: _At) -> None:
        config = s.get("config", at.config)
        name = s["cls"].__name__
        inner = s["schema"]
        if s.get("root_model"):
            self.walk(inner, _At(inner, config, at.loc, f"{name}.root", at.refs))
            return
        self._fields(inner["fields"].items(), name, config, at)
        behaviour = (config or {}).get("extra_fields_behavior")
        self._extras(inner, behaviour, name, config, at)

    def _dataclass(self, s: dict[str, Any], at: _At) -> None:
        config = s.get("config", at.config)
        fields = ((f["name"], f) for f in s["schema"]["fields"])
        self._fields(fields, s["cls"].__name__, config, at)

    def _typed_dict(self, s: dict[str, Any], at: _At) -> None:
        config = s.get("config", at.config)
        name = s["cls"].__name__
        self._fields(s["fields"].items(), name, config, at)
        self._extras(s, s.get("extra_behavior"), name, config, at)

    def _fields(
        self,
        fields: Iterable[tuple[str, dict[str, Any]]],
        model: str,
        config: CoreConfig | None,
        at: _At,
    ) -> None:
        for name, f in fields:
            alias = f.get("validation_alias")
            key = alias if isinstance(alias, str) else name
            child = f["schema"]
            self.walk(child, at.field(child, key, f"{model}.{name}", config))

    def _extras(
        self,
        s: dict[str, Any],
        behaviour: str | None,
        model: str,
        config: CoreConfig | None,
        at: _At,
    ) -> None:
        # extra="allow" keeps unknown keys, their values unvalidated unless typed.
        if behaviour == "allow":
            extras = s.get("extras_schema") or _ANY
            self.walk(extras, at.field(extras, "<extra>", f"{model}.<extra>", config))

    def _str(self, s: dict[str, Any], at: _At) -> None:
        shortest = s.get("min_length", (at.config or {}).get("str_min_length", 0)) or 0
        self._leaf(at, textual=True, hints=[c * shortest for c in "aA1"] if shortest > 1 else [])

    def _literal(self, s: dict[str, Any], at: _At) -> None:
        words = [v for v in s["expected"] if isinstance(v, str)]
        if words:
            self._leaf(at, textual=True, hints=words)

    def _enum(self, s: dict[str, Any], at: _At) -> None:
        words = [m.value for m in s["members"] if isinstance(m.value, str)]
        if words:
            self._leaf(at, textual=True, hints=words)

    def _any(self, s: dict[str, Any], at: _At) -> None:
        self._leaf(at, textual=True)

    def _function_plain(self, s: dict[str, Any], at: _At) -> None:
        self._leaf(at, textual=False)  # opaque: a text input only if it takes a string sample

    def _leaf(self, at: _At, *, textual: bool, hints: Iterable[str] = ()) -> None:
        leaf = self.leaves.setdefault(
            (id(at.top), at.loc), _Leaf(at.top, at.config, at.loc, at.owner)
        )
        leaf.textual = leaf.textual or textual
        leaf.hints.extend(h for h in hints if h not in leaf.hints)


def _holds(value: Any, probe: str) -> bool:
    """Whether a validated value still carries ``probe`` anywhere."""
    if isinstance(value, str):
        return probe in value
    if isinstance(value, BaseModel):
        return _holds(value.model_dump(), probe)
    if isinstance(value, dict):
        return any(_holds(k, probe) or _holds(v, probe) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds(v, probe) for v in value)
    if value is None or isinstance(value, int | float | bytes):
        return False
    return probe in str(value)


def _variants(sample: str, probe: str) -> Iterator[str]:
    yield probe
    yield probe + sample
    yield sample + probe
    for i in range(min(len(sample), _MAX_POSITIONS)):
        yield sample[:i] + probe + sample[i:]
        yield sample[:i] + probe + sample[i + 1 :]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return ", ".join(sorted({str(e["type"]) for e in exc.errors(include_input=False)}))
    return f"{type(exc).__name__}"


class _Checker:
    def __init__(
        self,
        walker: _Walker,
        probes: Sequence[str],
        samples: Mapping[str, str],
    ) -> None:
        self.walker = walker
        self.probes = probes
        self.samples = samples
        self.validators: dict[int, SchemaValidator] = {}

    def _validator(self, leaf: _Leaf) -> SchemaValidator:
        key = id(leaf.top)
        if key not in self.validators:
            schema: CoreSchema = leaf.top
            if self.walker.definitions:
                schema = {
                    "type": "definitions",
                    "schema": leaf.top,
                    "definitions": list(self.walker.definitions.values()),
                }
            self.validators[key] = SchemaValidator(schema, leaf.config)
        return self.validators[key]

    def check(self, leaf: _Leaf, given: str | None) -> tuple[bool, str | None]:
        """(is a text input, failure reason or None); raises _Unverified."""
        try:
            validator = self._validator(leaf)
        except Exception as exc:
            raise _Unverified(f"cannot build its validator ({type(exc).__name__}: {exc})") from exc
        candidates = [given] if given is not None else []
        candidates += [*leaf.hints, *_POOL]
        accepted: list[str] = []
        first_refusal: str | None = None
        for candidate in candidates:
            try:
                validator.validate_python(candidate)
            except Exception as exc:  # noqa: BLE001 - a sample that does not fit is skipped
                first_refusal = first_refusal or _describe(exc)
                continue
            accepted.append(candidate)
            if len(accepted) == _MAX_SAMPLES:
                break
        if not accepted:
            if not leaf.textual:
                return False, None
            hint = f" (first refusal: {first_refusal})" if first_refusal else ""
            raise _Unverified(f"no sample value was accepted{hint}; give one in samples")
        for probe in self.probes:
            name = _PROBE_NAMES.get(probe, repr(probe))
            for sample in accepted:
                for variant in _variants(sample, probe):
                    try:
                        value = validator.validate_python(variant)
                    except ValidationError:
                        continue
                    except Exception as exc:  # noqa: BLE001 - the finding itself
                        return (
                            True,
                            f"raised {type(exc).__name__} on {name}, not a validation error",
                        )
                    if _holds(value, probe):
                        return True, f"accepted {name} ({variant!r})"
        return True, None


class _Unverified(Exception):
    pass


def _annotation_schema(model_field: Any) -> CoreSchema:
    info = model_field.field_info
    metadata = tuple(info.metadata)
    annotation: Any = Annotated[(info.annotation, *metadata)] if metadata else info.annotation
    return TypeAdapter[Any](annotation).core_schema


def _dependants(dependant: Any) -> Iterator[Any]:
    seen: set[int] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(current.dependencies)


def _route_roots(app: Any) -> Iterator[tuple[str, tuple[str, ...], str, CoreSchema]]:
    """(where, loc, owner, core schema) for every parameter of every route."""
    for (method, path), route in sorted(route_table(app).items()):
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            dependant = getattr(getattr(route, "starlette_route", None), "dependant", None)
        if dependant is None:
            continue
        where = f"{method} {path}"
        params: dict[tuple[str, str], Any] = {}
        bodies: dict[str, Any] = {}
        for each in _dependants(dependant):
            for kind, attribute in _PARAM_KINDS:
                for param in getattr(each, attribute):
                    params.setdefault((kind, param.alias), param)
            for param in each.body_params:
                bodies.setdefault(param.alias, param)
        for (kind, alias), param in params.items():
            yield where, (kind, alias), f"{kind}.{alias}", _annotation_schema(param)
        for alias, param in bodies.items():
            embedded = len(bodies) > 1 or bool(getattr(param.field_info, "embed", False))
            loc = ("body", alias) if embedded else ("body",)
            yield where, loc, f"body.{alias}", _annotation_schema(param)


def check_text_inputs(
    app: Any,
    *,
    models: Iterable[Any] = (),
    samples: Mapping[str, str] | None = None,
    ignore: Collection[str] = (),
    probes: Sequence[str] = (_NUL, _SURROGATE),
) -> TextInputReport:
    """Find every text input of ``app`` (and of ``models``) and probe it; report, never raise.

    ``models`` are types validated outside a route's signature (a CSV row);
    each is named by its ``__name__``. ``probes`` are the characters each
    input must refuse: NUL and a lone surrogate by default.
    """
    given = dict(samples or {})
    roots = list(_route_roots(app))
    for model in models:
        name = getattr(model, "__name__", repr(model))
        roots.append((f"model {name}", (), name, TypeAdapter(model).core_schema))
    checked: list[TextInput] = []
    failures: list[TextInputFailure] = []
    unverified: list[TextInputFailure] = []
    ignored: list[TextInput] = []
    results: dict[tuple[int, int, str | None], tuple[bool, str | None] | _Unverified] = {}
    for where, loc, owner, schema in roots:
        walker = _Walker()
        walker.walk(schema, _At(schema, None, loc, owner))
        checker = _Checker(walker, probes, given)
        for leaf in walker.leaves.values():
            found = TextInput(where, _format_loc(leaf.loc), leaf.owner)
            keys = (found.owner, f"{found.where} {found.loc}")
            if any(k in ignore for k in keys):
                ignored.append(found)
                continue
            sample = next((given[k] for k in keys if k in given), None)
            # Models shared by many routes are checked once per schema node and sample.
            memo = (id(leaf.top), id(leaf.config), sample)
            if memo not in results:
                try:
                    results[memo] = checker.check(leaf, sample)
                except _Unverified as exc:
                    results[memo] = exc
            outcome = results[memo]
            if isinstance(outcome, _Unverified):
                unverified.append(TextInputFailure(found, str(outcome)))
                continue
            textual, reason = outcome
            if not textual:
                continue
            checked.append(found)
            if reason:
                failures.append(TextInputFailure(found, reason))
    return TextInputReport(tuple(checked), tuple(failures), tuple(unverified), tuple(ignored))


def assert_text_inputs_safe(
    app: Any,
    *,
    models: Iterable[Any] = (),
    samples: Mapping[str, str] | None = None,
    ignore: Collection[str] = (),
    probes: Sequence[str] = (_NUL, _SURROGATE),
) -> TextInputReport:
    """Raise AssertionError listing every text input that accepted a probe or was unverified.

    Returns the report, so a test can also assert on coverage
    (``len(report.checked)``).
    """
    report = check_text_inputs(app, models=models, samples=samples, ignore=ignore, probes=probes)
    problems = [*report.failures, *report.unverified]
    if problems:
        lines = "\n".join(f"  {p.input}: {p.reason}" for p in problems)
        msg = f"{len(problems)} text input(s) can carry what the database refuses:\n{lines}"
        raise AssertionError(msg)
    return report
