"""schemathesis hook: every error answer is problem+json with a stable code and correlation id."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """An error answer must be RFC 9457 problem+json carrying ``code`` and ``correlation_id``."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else ""
    if not str(content_type).startswith("application/problem+json"):
        raise AssertionError(f"{response.status_code} is {content_type!r}, not problem+json")
    body = response.json()
    if not isinstance(body, dict) or not body.get("code") or not body.get("correlation_id"):
        raise AssertionError(f"{response.status_code} problem lacks code or correlation_id")
    return None
