"""The error tree's rendering as problem+json, and the one Retry-After rounding."""

import json
import math

import pytest

from hardened.errors import (
    PROBLEM_CONTENT_TYPE,
    ConcurrentModification,
    FieldError,
    HardenedError,
    RateLimited,
    ServiceUnavailable,
    StoreUnavailable,
    ValidationFailed,
    problem_for,
    retry_after_seconds,
)
from hardened.http import Overloaded
from hardened.idempotency import IdempotencyInFlight
from hardened.ratelimit import QuotaExceeded


def test_problem_has_rfc9457_members_and_code() -> None:
    """A library error renders type, title, status, code, detail, instance and correlation id."""
    body = problem_for(
        ConcurrentModification("Order changed.", code="order.version_conflict"),
        instance="/orders/1",
        correlation_id="abc",
    ).as_dict()
    assert body == {
        "type": "urn:hardened:problem:order.version_conflict",
        "title": "The resource was modified concurrently",
        "status": 409,
        "code": "order.version_conflict",
        "detail": "Order changed.",
        "instance": "/orders/1",
        "correlation_id": "abc",
    }


def test_context_is_never_rendered() -> None:
    """The logging context of an error never reaches the client body."""
    problem = problem_for(HardenedError("x", context={"password": "hunter2", "sql": "SELECT"}))
    assert b"hunter2" not in problem.body()
    assert b"SELECT" not in problem.body()


def test_unknown_exception_hides_message_outside_debug() -> None:
    """An unexpected exception is a bare 500 unless debug is on."""
    exc = RuntimeError("db password is hunter2")
    hidden = problem_for(exc, correlation_id="c1")
    assert hidden.status == 500
    assert "hunter2" not in hidden.body().decode()
    assert hidden.as_dict()["correlation_id"] == "c1"
    shown = problem_for(exc, debug=True)
    assert "hunter2" in shown.body().decode()


def test_retry_after_header_and_content_type() -> None:
    """Refusals that can be retried carry Retry-After; every problem is problem+json."""
    problem = problem_for(RateLimited(retry_after=7), correlation_id="r")
    headers = dict(problem.header_list())
    assert headers[b"retry-after"] == b"7"
    assert headers[b"content-type"] == PROBLEM_CONTENT_TYPE.encode()
    assert headers[b"x-request-id"] == b"r"


@pytest.mark.parametrize(
    ("delay", "header"),
    [
        (0, "1"),
        (0.2, "1"),
        (1, "1"),
        (7.2, "8"),
        (-3, "1"),
        (math.nan, "1"),
        (math.inf, "999999999999999"),
    ],
)
def test_every_retryable_refusal_rounds_retry_after_one_way(delay: float, header: str) -> None:
    """Retry-After is the delay rounded up, at least 1, for every refusal that carries one."""
    assert str(retry_after_seconds(delay)) == header
    for refusal in (
        RateLimited(retry_after=delay),
        ServiceUnavailable(retry_after=delay),
        Overloaded(retry_after=delay),
        QuotaExceeded(violated_policy="p", retry_after=delay),
        IdempotencyInFlight(retry_after=delay),
    ):
        assert refusal.headers["retry-after"] == header, type(refusal).__name__


def test_validation_errors_are_listed_without_input() -> None:
    """Field errors render location, message and type only."""
    exc = ValidationFailed(errors=[FieldError(("body", "email"), "bad", "value_error")])
    body = json.loads(problem_for(exc).body())
    assert body["errors"] == [{"loc": ["body", "email"], "msg": "bad", "type": "value_error"}]


def test_store_unavailable_is_a_503() -> None:
    """A store failure that escapes its component renders as 503 store.unavailable."""
    problem = problem_for(StoreUnavailable())
    assert (problem.status, problem.code) == (503, "store.unavailable")
