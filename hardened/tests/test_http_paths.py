"""`PathPattern`: the one path syntax of rate-limit `Rule` and `IdempotentRoute`."""

from __future__ import annotations

import pytest

from hardened.http import PathPattern
from hardened.idempotency import IdempotentRoute
from hardened.ratelimit import Rule

CASES = [
    ("/orders", "/orders", True),
    ("/orders", "/orders/7", True),
    ("/orders", "/ordersx", False),
    ("/orders/", "/orders/7", True),
    ("/", "/anything/at/all", True),
    ("/login$", "/login", True),
    ("/login$", "/login/x", False),
    ("/orders/{id}/cancel$", "/orders/42/cancel", True),
    ("/orders/{id}/cancel$", "/orders/42/7/cancel", False),
    ("/orders/{id}/cancel$", "/orders//cancel", False),
    ("/orders/{id}", "/orders/42/lines/1", True),
    ("/orders/{id}", "/orders", False),
    ("/a.b$", "/aXb", False),
]


@pytest.mark.parametrize(("spec", "path", "expected"), CASES)
def test_rule_tables_agree_on_every_spec(spec: str, path: str, expected: bool) -> None:
    """A spec matches the same paths as a PathPattern, a rate-limit Rule and an IdempotentRoute."""
    assert PathPattern(spec).matches(path) is expected
    assert Rule(spec, (), methods=frozenset({"POST"})).matches("post", path) is expected
    assert IdempotentRoute(spec, methods=frozenset({"POST"})).matches("POST", path) is expected


def test_template_is_the_spec_only_when_it_names_segments() -> None:
    """Templated specs scope by their template; plain prefixes by the concrete path."""
    assert PathPattern("/orders/{id}/cancel$").template == "/orders/{id}/cancel"
    assert PathPattern("/orders/{id}").template == "/orders/{id}"
    assert PathPattern("/orders").template is None
    route = IdempotentRoute("/orders/{id}/cancel$")
    assert route.template("/orders/9/cancel") == "/orders/{id}/cancel"
    assert IdempotentRoute("/orders").template("/orders/9") == "/orders/9"


def test_a_path_must_start_with_a_slash() -> None:
    """A relative spec is refused when the rule is built, not on the first request."""
    with pytest.raises(ValueError, match="must start with '/'"):
        PathPattern("orders")
    with pytest.raises(ValueError, match="must start with '/'"):
        Rule("orders", ())
    with pytest.raises(ValueError, match="must start with '/'"):
        IdempotentRoute("orders")
