"""Key validation, scoping, fingerprints and the package's error codes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from hardened.errors import (
    BadRequest,
    Conflict,
    IdempotencyConflict,
    MissingHeader,
    ValidationFailed,
    problem_for,
)
from hardened.idempotency import (
    IdempotencyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    LeaseLost,
    fingerprint,
    key_hash_for_logs,
    scoped_key,
    validate_key,
)

SECRET = b"s" * 32


def scope(**overrides: str | None) -> str:
    parts: dict[str, str | None] = {
        "tenant": "t1",
        "principal": "u1",
        "method": "POST",
        "route": "/orders",
        "key": "k-1",
    }
    parts.update(overrides)
    return scoped_key(**parts)  # type: ignore[arg-type]


def test_fingerprint_is_hmac_over_length_prefixed_parts() -> None:
    """The fingerprint is HMAC-SHA256 over 8-byte big-endian lengths, each followed by its part."""
    framed = b"\x00" * 7 + b"\x04POST" + b"\x00" * 7 + b"\x07/orders"
    assert fingerprint(SECRET, b"POST", b"/orders") == hmac.digest(SECRET, framed, "sha256")


def test_fingerprint_cannot_be_forged_by_moving_bytes_between_parts() -> None:
    """Moving a boundary, splitting or merging parts, or a new secret changes the fingerprint."""
    variants = {
        fingerprint(SECRET, b"ab", b"c"),
        fingerprint(SECRET, b"a", b"bc"),
        fingerprint(SECRET, b"abc"),
        fingerprint(SECRET, b"abc", b""),
        fingerprint(b"t" * 32, b"ab", b"c"),
    }
    assert len(variants) == 5


def test_scoped_key_separates_every_scope_part() -> None:
    """Tenant, principal, method, route and key each change the scoped key; None differs from ''."""
    keys = {
        scope(),
        scope(tenant="t2"),
        scope(principal="u2"),
        scope(method="PUT"),
        scope(route="/refunds"),
        scope(key="k-2"),
        scope(tenant=None),
        scope(tenant=""),
        scope(tenant="t1u", principal="1"),
    }
    assert len(keys) == 9
    assert scope(method="post") == scope()


def test_scoped_key_is_a_hash_that_hides_the_raw_key() -> None:
    """The scoped key is 64 hex characters and contains neither the key nor the tenant."""
    key = scope(key="order-4711-secret")
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert "4711" not in key


def test_validate_key_accepts_1_to_255_printable_ascii() -> None:
    """Keys of 1..255 printable ASCII characters (space included) are returned unchanged."""
    for raw in ("a", "8e03978e-40d5-43e8-bc93-6894a57f9324", "x" * 255, "a b~!"):
        assert validate_key(raw) == raw


@pytest.mark.parametrize("raw", ["", "x" * 256, "tab\there", "new\nline", "clé", "\x7f"])
def test_validate_key_refuses_anything_else(raw: str) -> None:
    """Empty, too long, control or non-ASCII keys raise IdempotencyKeyInvalid (400)."""
    with pytest.raises(IdempotencyKeyInvalid) as refused:
        validate_key(raw)
    assert (refused.value.status, refused.value.code) == (400, "idempotency.key_invalid")


def test_key_hash_for_logs_is_short_stable_and_hides_the_key() -> None:
    """The log hash is 16 hex chars of SHA-256, the same every time, never the key itself."""
    raw = "order-4711"
    assert key_hash_for_logs(raw) == hashlib.sha256(raw.encode()).hexdigest()[:16]
    assert key_hash_for_logs(raw) == key_hash_for_logs(raw)
    assert "4711" not in key_hash_for_logs(raw)


def test_errors_have_stable_codes_statuses_and_parents() -> None:
    """Each refusal maps to its HTTP status, stable code and place in the error tree."""
    expected = [
        (IdempotencyKeyMissing(), MissingHeader, 400, "idempotency.key_missing"),
        (IdempotencyKeyInvalid(), BadRequest, 400, "idempotency.key_invalid"),
        (IdempotencyKeyReused(), ValidationFailed, 422, "idempotency.key_reused"),
        (IdempotencyInFlight(retry_after=1), IdempotencyConflict, 409, "idempotency.in_flight"),
        (LeaseLost(), Conflict, 409, "idempotency.lease_lost"),
    ]
    for error, parent, status, code in expected:
        assert isinstance(error, parent)
        assert (error.status, error.code) == (status, code)
    assert problem_for(IdempotencyKeyReused()).status == 422


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.001, "1"), (1.0, "1"), (1.2, "2"), (29.9, "30")]
)
def test_in_flight_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    """IdempotencyInFlight's Retry-After is the remaining lease rounded up, at least 1 s."""
    error = IdempotencyInFlight(retry_after=seconds)
    assert error.headers["retry-after"] == header
    assert error.retry_after == int(header)
