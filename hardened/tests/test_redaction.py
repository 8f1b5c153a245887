"""Redaction: no planted secret survives the full logging pipeline, and only secrets are hit."""

from __future__ import annotations

import io
import json
import logging
import re
import string
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains

from hardened._redact import (
    CARD,
    EMAIL,
    JWT,
    NATIONAL_ID,
    PHONE,
    REDACTED,
    SECRET,
    Redactor,
    luhn_valid,
    redact_event,
    redact_value,
    use_redactor,
)
from hardened.logging import configure_logging, get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# A planted value: what goes into the event, the substrings that must not come
# out, and the ordinary text around them (which may legitimately come out).
Planted = tuple[Any, list[str], list[str]]

SECRET_KEYS = [
    "password", "Password", "db_password", "passwd", "client_secret", "clientSecret",
    "access_token", "refreshToken", "api_key", "apiKey", "X-Api-Key", "authorization",
    "Cookie", "set-cookie", "session_id", "private_key", "jwt", "otp", "pin", "cvv",
    "card_number", "iban", "ssn", "national_id", "credentials",
]  # fmt: skip
KV_KEYS = ["password", "api_key", "client-secret", "accessToken", "X-Api-Key", "db.password"]
B64URL = string.ascii_letters + string.digits + "-_"
BEARER_CHARS = string.ascii_letters + string.digits + "._~+/-"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The full production pipeline writing into a buffer; logging state restored after."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    buf = io.StringIO()
    configure_logging(json=True, level="DEBUG", stream=buf)
    yield buf
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    use_redactor(Redactor())


def _luhn_complete(body: str) -> str:
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError  # pragma: no cover - one check digit always fits


def _group(number: str, sep: str) -> str:
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


def _whole(secret: str) -> tuple[str, list[str]]:
    return secret, [secret]


DIGITS = st.text(string.digits, min_size=10, max_size=10)
card_numbers = st.text(string.digits, min_size=12, max_size=18).map(_luhn_complete)
cards = st.tuples(card_numbers, st.sampled_from(["", " ", "-"])).map(
    lambda t: _whole(_group(t[0], t[1]) if t[1] else t[0])
)
emails = st.tuples(
    st.text(string.ascii_letters + string.digits + "!#$%&'*+-/=^_`{|}~", min_size=1, max_size=30),
    domains(max_length=60),
).map(lambda t: _whole(f"{t[0]}@{t[1]}"))
phones = st.one_of(
    st.text(string.digits, min_size=7, max_size=14).map(lambda d: "+1" + d),  # E.164
    DIGITS.map(lambda d: f"({d[:3]}) {d[3:6]}-{d[6:]}"),
    DIGITS.map(lambda d: f"+81 {d[:2]}-{d[2:6]}-{d[6:]}"),
).map(_whole)
jwts = st.tuples(*(st.text(B64URL, min_size=1, max_size=40) for _ in range(3))).map(
    lambda t: _whole(f"eyJ{t[0]}.{t[1]}.{t[2]}")
)
bearers = st.tuples(st.sampled_from(["Bearer", "Basic"]), st.text(BEARER_CHARS, min_size=12)).map(
    lambda t: (f"{t[0]} {t[1]}", [t[1]])
)
api_keys = st.tuples(
    st.sampled_from(["sk_live_", "sk_test_", "pk_live_", "rk_live_", "whsec_", "ghp_", "xoxb-"]),
    st.text(string.ascii_letters + string.digits, min_size=20, max_size=40),
).map(lambda t: _whole(t[0] + t[1]))
aws_keys = st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16).map(
    lambda s: _whole("AKIA" + s)
)
ssns = st.text(string.digits, min_size=9, max_size=9).map(
    lambda d: _whole(f"{d[:3]}-{d[3:5]}-{d[5:]}")
)
kv_values = st.text(string.ascii_letters + string.digits + "!@#$%^*_+-", min_size=6, max_size=30)
kv_pairs = st.tuples(st.sampled_from(KV_KEYS), kv_values, st.booleans()).map(
    lambda t: (f'"{t[0]}": "pw{t[1]}"' if t[2] else f"{t[0]}=pw{t[1]}", [f"pw{t[1]}"])
)
text_secrets = st.one_of(cards, emails, phones, jwts, bearers, api_keys, aws_keys, ssns, kv_pairs)
fillers = st.text(max_size=20)


@st.composite
def embedded(draw: st.DrawFn) -> Planted:
    """A secret inside random text, a space on each side so it stays one token."""
    secret, must_vanish = draw(text_secrets)
    before, after = draw(fillers), draw(fillers)
    return f"{before} {secret} {after}", must_vanish, [before, after]


def _shown(value: object) -> list[str]:
    """How a renderer may print an ordinary value."""
    return [str(value), repr(value), json.dumps(value)]


markers = st.text(min_size=4).map(lambda s: "pw-" + s)
secret_payloads: st.SearchStrategy[Planted] = st.one_of(
    markers.map(lambda m: (m, [m], [])),
    st.lists(markers, min_size=1, max_size=3).map(lambda ms: (ms, ms, [])),
    markers.map(lambda m: ({"inner": m, "n": 1}, [m], [])),
    card_numbers.map(lambda n: (int("9" + n), ["9" + n], [])),
)
safe_keys = st.text(string.ascii_lowercase, min_size=1, max_size=8).map(lambda k: "k_" + k)
safe_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), fillers
)
plain: st.SearchStrategy[Planted] = safe_scalars.map(lambda v: (v, [], _shown(v)))
leaves = st.one_of(plain, embedded())
keyed_secrets = st.lists(st.tuples(st.sampled_from(SECRET_KEYS), secret_payloads), max_size=1)


def _combine(items: list[Planted], value: object) -> Planted:
    return value, [s for _, ss, _ in items for s in ss], [n for _, _, ns in items for n in ns]


def _mapping(entries: list[tuple[str, Planted]]) -> Planted:
    planted = [p for _, p in entries]
    value, secrets, noise = _combine(planted, {k: v for k, (v, _, _) in entries})
    return value, secrets, noise + [k for k, _ in entries]


def _nodes(depth: int) -> st.SearchStrategy[Planted]:
    if depth == 0:
        return leaves
    child = _nodes(depth - 1)
    lists = st.lists(child, max_size=3)
    entries = st.lists(st.tuples(safe_keys, child), max_size=3)
    texts: st.SearchStrategy[list[Planted]] = st.lists(
        st.one_of(embedded(), fillers.map(lambda f: (f, [], [f]))), max_size=3
    )
    return st.one_of(
        leaves,
        lists.map(lambda xs: _combine(xs, [v for v, _, _ in xs])),
        lists.map(lambda xs: _combine(xs, tuple(v for v, _, _ in xs))),
        texts.map(lambda xs: _combine(xs, {v for v, _, _ in xs})),
        st.tuples(entries, keyed_secrets).map(lambda t: _mapping(t[0] + t[1])),
    )


events: st.SearchStrategy[tuple[Planted, list[tuple[str, Planted]], list[tuple[str, Planted]]]] = (
    st.tuples(
        st.one_of(embedded(), fillers.map(lambda f: (f, [], [f]))),
        st.lists(st.tuples(safe_keys, _nodes(3)), max_size=4),
        keyed_secrets,
    )
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(event=events)
def test_no_planted_secret_survives_the_json_pipeline(
    json_lines: io.StringIO, event: tuple[Planted, list[tuple[str, Planted]], list[Any]]
) -> None:
    """Secrets planted anywhere in a nested event never reach the rendered JSON line."""
    message, safe, secret_keyed = event
    _, secrets, noise = _combine([message, *(p for _, p in safe + secret_keyed)], None)
    # A secret that is also ordinary text elsewhere in the event cannot be told apart.
    noise += [k for k, _ in safe + secret_keyed]
    assume(not any(s in n for s in secrets for n in noise))
    json_lines.seek(0)
    json_lines.truncate()

    get_logger("property").info(message[0], **{k: v for k, (v, _, _) in safe + secret_keyed})

    line = json_lines.getvalue()
    assert line.count("\n") == 1
    assert json.loads(line)["logger"] == "property"
    for secret in secrets:
        assert secret not in line
        assert json.dumps(secret)[1:-1] not in line


def _recursive_anything() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
        st.decimals(), st.datetimes(), st.uuids(), st.complex_numbers(),
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda kids: st.one_of(
            st.lists(kids),
            st.tuples(kids, kids),
            st.dictionaries(st.text(), kids),
            st.frozensets(st.text()),
            st.dictionaries(st.integers(), kids),
        ),
        max_leaves=20,
    )


@settings(max_examples=200, deadline=None)
@given(value=_recursive_anything())
def test_redaction_never_raises_and_leaves_input_untouched(value: Any) -> None:
    """Any nested value is redacted without raising and without mutating the input."""
    before = repr(value)
    redact_value(value)
    assert repr(value) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail bob@example.com now", f"mail {EMAIL} now"),
        ("repr 'o.brien@x.co.uk'", f"repr '{EMAIL}'"),
        ("call +14155552671.", f"call {PHONE}."),
        ("call +81 90-1234-5678", f"call {PHONE}"),
        ("call (415) 555-2671", f"call {PHONE}"),
        ("call 415.555.2671", f"call {PHONE}"),
        ("pay 4111 1111 1111 1111", f"pay {CARD}"),
        ("pay 4111-1111-1111-1111!", f"pay {CARD}!"),
        ("pay 378282246310005", f"pay {CARD}"),
        ("ssn 078-05-1120", f"ssn {NATIONAL_ID}"),
        ("t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_x", f"t {JWT}"),
        ("Authorization: Bearer abc.DEF-123", f"Authorization: Bearer {REDACTED}"),
        ("header Basic dXNlcjpwYXNz", f"header Basic {REDACTED}"),
        ("key sk_live_51HabcdefghijKLMN", f"key {SECRET}"),
        ("aws AKIAIOSFODNN7EXAMPLE", f"aws {SECRET}"),
        ("gh ghp_0123456789abcdefghijABCDEFGHIJ", f"gh {SECRET}"),
        ("slack xoxb-123456789012-abcdef", f"slack {SECRET}"),
        ("hook whsec_MfKQ9r8GKYqrTwjUPD8ILPZI", f"hook {SECRET}"),
        ("login password=hunter2 ok", f"login password={REDACTED} ok"),
        ('{"password": "a\\"b", "user": "x"}', f'{{"password": "{REDACTED}", "user": "x"}}'),
        ("{'api_key': 'zz'}", f"{{'api_key': '{REDACTED}'}}"),
        ("?token=abc&page=2", f"?token={REDACTED}&page=2"),
        ("Cookie: a=b; c=d\nnext", f"Cookie: {REDACTED}\nnext"),
        ("dsn postgresql://app:pa55@db:5432/x", f"dsn postgresql://app:{REDACTED}@db:5432/x"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", SECRET),
    ],
)
def test_each_pattern_is_replaced_by_its_placeholder(text: str, expected: str) -> None:
    """Every family of secret in free text becomes its placeholder, context intact."""
    assert redact_value(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112 shipped",  # Luhn fails
        "order 1234 5678 9012 3456",  # Luhn fails
        "invoice 79927398710",  # too short for a card
        "client 192.168.100.200 port 8443",
        "at 2025-11-22T14:59:00.123456Z",
        "on 2025-11-22 14:59",
        "pi 3.14159265358979",
        "counts 100 200 300",
        "shipping=express pinned=true",
        "Using basic auth, the bearer of this",
        "version 1.2.3 build 42",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    """Luhn-failing numbers, IPs, dates, decimals and prose survive unchanged."""
    assert redact_value(text) == text


@pytest.mark.parametrize("key", SECRET_KEYS)
@pytest.mark.parametrize("value", ["plain", 1234, ["a", {"b": 1}], {"x": "y"}, None])
def test_secret_named_keys_are_redacted_whatever_the_value(key: str, value: object) -> None:
    """A value under a secret-named key becomes [REDACTED] at any depth, whatever its type."""
    assert redact_value({"outer": [{key: value}]}) == {"outer": [{key: REDACTED}]}


@pytest.mark.parametrize("key", ["user", "shipping", "email", "keyword", "pinned", "company"])
def test_ordinary_keys_are_kept(key: str) -> None:
    """Keys that merely contain a short secret word (pin, pan) are not mistaken for secrets."""
    assert redact_value({key: "value"}) == {key: "value"}


def test_luhn_reference_vectors() -> None:
    """The Luhn check accepts known-good numbers and rejects their one-digit typos."""
    assert luhn_valid("79927398713")
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("4111111111111112")


def test_card_numbers_as_integers_are_redacted() -> None:
    """A Luhn-valid 13-19 digit integer is a card even without quotes; small ints are kept."""
    assert redact_value({"n": 4111111111111111, "qty": 3, "ok": True}) == {
        "n": CARD,
        "qty": 3,
        "ok": True,
    }


def test_a_card_next_to_other_digits_is_still_found() -> None:
    """Digit groups glued on by spaces do not hide a card number inside the run."""
    assert "4111 1111 1111 1111" not in str(redact_value("ref 12 4111 1111 1111 1111 99"))


def test_containers_keep_their_type_and_keys_are_scrubbed() -> None:
    """Tuples, sets and frozensets come back as such; PII in mapping keys is scrubbed."""
    out = redact_value({"a@b.co": ("x@y.co",), "s": {"q@w.co"}, "f": frozenset({"z"})})
    assert out == {EMAIL: (EMAIL,), "s": {EMAIL}, "f": frozenset({"z"})}


def test_unrenderable_values_are_replaced_not_raised() -> None:
    """A value whose repr raises becomes [REDACTED] and the rest of the event is kept."""

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError

    event = redact_event(None, "info", {"event": "hi a@b.co", "bad": Hostile(), "n": 1})
    assert event == {"event": f"hi {EMAIL}", "bad": REDACTED, "n": 1}


def test_cycles_and_deep_nesting_fail_closed() -> None:
    """Self-referencing or too-deep structures end in [REDACTED] instead of recursing forever."""
    loop: list[Any] = ["a@b.co"]
    loop.append(loop)
    out = redact_value(loop)
    assert out[0] == EMAIL
    assert REDACTED in repr(out)


def test_objects_are_scrubbed_through_their_repr() -> None:
    """Unknown objects (dataclasses, exceptions) are rendered and scrubbed as text."""
    out = redact_value({"err": ValueError("bad login password=hunter2 for x@y.co")})
    assert "hunter2" not in out["err"]
    assert "x@y.co" not in out["err"]


def test_redactor_is_extensible() -> None:
    """Extra keys, safe keys, national-id patterns and extra patterns all take effect."""
    nino = re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2}[0-9]{6}[A-D]\b")
    redactor = Redactor(
        extra_keys=frozenset({"hmac"}),
        safe_keys=frozenset({"max_tokens"}),
        national_ids=(nino,),
        extra_patterns=((re.compile(r"\bORD-[0-9]+\b"), "[ORDER]"),),
    )
    event = {"X-Shopify-Hmac-Sha256": "abc", "max_tokens": 5, "t": "AB123456C ORD-9"}
    out = redactor.redact(event)
    assert out == {
        "X-Shopify-Hmac-Sha256": REDACTED,
        "max_tokens": 5,
        "t": f"{NATIONAL_ID} [ORDER]",
    }


def test_use_redactor_switches_the_module_level_policy() -> None:
    """redact_value follows the redactor installed with use_redactor."""
    use_redactor(Redactor(extra_keys=frozenset({"tenant"})))
    try:
        assert redact_value({"tenant_name": "acme"}) == {"tenant_name": REDACTED}
    finally:
        use_redactor(Redactor())
    assert redact_value({"tenant_name": "acme"}) == {"tenant_name": "acme"}


# uuid4 values whose digit runs the card and phone patterns used to take for numbers.
UUIDS_THAT_LOOK_LIKE_NUMBERS = [
    "27b80698-6796-4006-ba1d-ecab8554835f",
    "4ebbc81b-a0ec-48ce-8871-695333274542",
    "e6700c33-7328-4803-8591-01470bf6e928",
    "3d1ae264-9824-4128-8763-4b86e817bae1",
]
UUID_PLACES = [
    "{}",
    "/orders/{}",
    "/orders/{}/items?page=2",
    "order {} shipped",
    "GET /customers/{} 404",
    "id={}, tenant={}",
]


@settings(max_examples=300, deadline=None)
@given(
    value=st.uuids(version=4),
    form=st.sampled_from([str, lambda s: s.upper()]),
    place=st.sampled_from(UUID_PLACES),
)
@example(uuid.UUID(UUIDS_THAT_LOOK_LIKE_NUMBERS[0]), str, "{}")
@example(uuid.UUID(UUIDS_THAT_LOOK_LIKE_NUMBERS[1]), str, "/orders/{}")
@example(uuid.UUID(UUIDS_THAT_LOOK_LIKE_NUMBERS[2]), lambda s: s.upper(), "order {} shipped")
@example(uuid.UUID(int=0x12345678_1234_4234_8234_123456789012), str, "order {} shipped")
def test_any_uuid4_survives_alone_in_a_path_or_in_a_sentence(
    value: uuid.UUID, form: Callable[[str], str], place: str
) -> None:
    """A uuid4 in canonical form, any case, anywhere in a line, comes out unchanged."""
    text = place.format(form(str(value)), form(str(value)))
    assert redact_value(text) == text


@pytest.mark.parametrize(
    "text",
    [
        *(f"/orders/{u}" for u in UUIDS_THAT_LOOK_LIKE_NUMBERS),
        "12345678-1234-1234-1234-123456789012",  # all digits, still a UUID
        "correlation 635cb67761204180944f4e39cb0747a3",  # uuid4().hex
        "sha256 4111111111111111ab7927398713aa09f1b2c3d4e5f60718293a4b5c6d7e8f90",
    ],
)
def test_hex_identifiers_are_left_alone(text: str) -> None:
    """UUIDs and hex ids whose digit runs pass Luhn are ids, not card or phone numbers."""
    assert redact_value(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"pay 4111 1111 1111 1111 on /orders/{UUIDS_THAT_LOOK_LIKE_NUMBERS[0]}",
            f"pay {CARD} on /orders/{UUIDS_THAT_LOOK_LIKE_NUMBERS[0]}",
        ),
        (
            f"{UUIDS_THAT_LOOK_LIKE_NUMBERS[1]} paid with 4111-1111-1111-1111",
            f"{UUIDS_THAT_LOOK_LIKE_NUMBERS[1]} paid with {CARD}",
        ),
        ("ref abcd-4111-1111-1111-1111 ok", f"ref abcd-{CARD} ok"),
        (
            "id 635cb67761204180944f4e39cb0747a3 pan 378282246310005",
            f"id 635cb67761204180944f4e39cb0747a3 pan {CARD}",
        ),
        (
            "trace 635cb67761204180944f4e39cb0747a3 call +14155552671",
            f"trace 635cb67761204180944f4e39cb0747a3 call {PHONE}",
        ),
    ],
)
def test_cards_and_phones_next_to_hex_identifiers_are_still_found(text: str, expected: str) -> None:
    """A card or phone number beside a UUID or hex id is redacted; the id is kept."""
    assert redact_value(text) == expected
