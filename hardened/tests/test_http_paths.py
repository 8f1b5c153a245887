"""`PathPattern`: one path syntax for every per-route setting; `PathMap` picks the most specific."""

from __future__ import annotations

import pytest

from hardened.http import (
    BodyLimits,
    ContentTypePolicy,
    CSRFPolicy,
    PathMap,
    PathPattern,
    SecurityHeaders,
)
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


@pytest.mark.parametrize(("spec", "path", "expected"), CASES)
def test_path_keyed_settings_agree_on_every_spec(spec: str, path: str, expected: bool) -> None:
    """Body limits, media types, CSP overrides and CSRF exemptions cover just what the spec does."""
    assert (PathMap({spec: 1}).lookup(path, 0) == 1) is expected
    assert (BodyLimits(max_bytes=5, path_overrides={spec: 9}).limit_for(path) == 9) is expected
    policy = ContentTypePolicy(path_overrides={spec: {"text/csv"}})
    assert (policy.allowed_for(path) == {"text/csv"}) is expected
    assert (SecurityHeaders(csp_overrides={spec: None}).csp_for(path) is None) is expected
    if spec != "/":  # exempting every path from CSRF is refused
        csrf = CSRFPolicy(secret=b"s" * 32, exempt_paths=(spec,))
        assert csrf.is_exempt(path) is expected


def test_the_most_specific_spec_wins_and_ties_keep_their_order() -> None:
    """The longest covering spec gives the value; of equal length the first declared does."""
    paths = PathMap({"/": "root", "/docs": "docs", "/docs/raw": "raw", "/docs$": "exact"})
    assert paths.lookup("/docs/raw/x", None) == "raw"
    assert paths.lookup("/docs/other", None) == "docs"
    assert paths.lookup("/docs", None) == "exact"
    assert paths.lookup("/elsewhere", None) == "root"
    assert PathMap({"/a/{id}": 1, "/a/bcd": 2}).lookup("/a/bcd", None) == 1
    assert PathMap({}).lookup("/x", "default") == "default"


def test_a_path_map_is_read_only_and_names_its_setting_when_a_spec_is_bad() -> None:
    """PathMap copies its entries, refuses item assignment and reports which setting was wrong."""
    entries = {"/docs": "a"}
    paths = PathMap(entries)
    entries["/docs"] = "b"
    assert paths["/docs"] == "a"
    assert dict(paths) == {"/docs": "a"}
    with pytest.raises(TypeError):
        paths["/x"] = "c"  # type: ignore[index]
    with pytest.raises(ValueError, match=r"csp_overrides: .*must start with '/'"):
        SecurityHeaders(csp_overrides={"docs": None})


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
