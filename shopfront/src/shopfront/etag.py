"""Conditional GETs: a strong ``ETag`` (the body's hash) and ``If-None-Match`` → 304.

Why: catalog reads are the storefront's most frequent calls and their bodies
change rarely; a client that sends back the tag it has gets an empty 304 and
keeps its copy. The tag is a hash of the exact bytes sent, so equal bodies
always carry equal tags (across workers and restarts) and any change to the
body changes it. ``Cache-Control: private, no-cache``: a shop's catalog is
for its own callers (no shared cache may keep it) and is revalidated each time.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Header, Response, status

from hardened.errors import PROBLEM_CONTENT_TYPE
from hardened.fields import text

__all__ = [
    "ETAG_RESPONSES",
    "UNAVAILABLE_RESPONSE",
    "IfNoneMatch",
    "etag_of",
    "json_with_etag",
]

IfNoneMatch = Annotated[
    Annotated[str, text(max_length=4096)] | None,
    Header(description="ETags the client holds; the current one among them answers 304, no body."),
]
_CACHE_CONTROL = "private, no-cache"
_ETAG_HEADER = {
    "description": "Strong validator: a hash of this body; send it back in `If-None-Match`.",
    "schema": {"type": "string"},
}
ETAG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": {"ETag": _ETAG_HEADER}},
    304: {
        "description": "Not Modified: the `If-None-Match` tag is the current one (no body).",
        "headers": {"ETag": _ETAG_HEADER},
    },
}
UNAVAILABLE_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": (
            "The CRM is down or not configured (`crm.unavailable`, `crm.not_configured`); "
            "retry after `Retry-After` seconds."
        ),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}


def etag_of(body: bytes) -> str:
    """The strong entity tag of ``body`` (quoted, 128 bits of SHA-256)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str, tag: str) -> bool:
    # RFC 9110 13.1.2: If-None-Match compares weakly, so W/"x" matches "x".
    if if_none_match.strip() == "*":
        return True
    for candidate in if_none_match.split(","):
        value = candidate.strip()
        if value.startswith("W/"):
            value = value[2:]
        if value == tag:
            return True
    return False


def json_with_etag(body: bytes, if_none_match: str | None) -> Response:
    """``body`` as JSON with its ETag, or an empty 304 when the client has it already."""
    tag = etag_of(body)
    headers = {"etag": tag, "cache-control": _CACHE_CONTROL}
    if if_none_match is not None and _matches(if_none_match, tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
