"""Every instant in a response body is an ISO 8601 date-time, never an epoch number."""

import re
from typing import Any

from sf_support import make_settings
from shopfront.app import create_app

# Field names that hold an instant (``created_at``, ``valid_until``, ``at``…).
INSTANT = re.compile(r"(^|_)(at|from|until|since)$")


def _refs(node: object) -> set[str]:
    """Component schema names referenced anywhere under ``node``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        found = {ref.rsplit("/", 1)[-1]} if isinstance(ref, str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _response_schemas(spec: dict[str, Any]) -> set[str]:
    """Names of the component schemas some route answers with, directly or nested."""
    schemas = spec["components"]["schemas"]
    responses = [op.get("responses", {}) for path in spec["paths"].values() for op in path.values()]
    todo, seen = _refs(responses), set()
    while todo:
        name = todo.pop()
        seen.add(name)
        todo |= _refs(schemas[name]) - seen
    return seen


def _is_datetime(prop: dict[str, Any]) -> bool:
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    return bool(options) and all(
        o.get("type") == "string" and o.get("format") == "date-time" for o in options
    )


def test_every_instant_in_a_response_schema_is_an_iso_8601_date_time(sqlite_url: str) -> None:
    """Each response field naming an instant is a date-time string in OpenAPI, not a number."""
    spec = create_app(make_settings(sqlite_url)).openapi()
    schemas = spec["components"]["schemas"]
    names = _response_schemas(spec)
    instants = {
        (name, field): prop
        for name in names
        for field, prop in schemas[name].get("properties", {}).items()
        if INSTANT.search(field)
    }
    assert ("SessionOut", "created_at") in instants  # the walk reaches the session list
    assert [key for key, prop in instants.items() if not _is_datetime(prop)] == []
