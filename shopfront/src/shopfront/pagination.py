"""Keyset (cursor) pagination: stable under inserts, O(page) however deep the client goes."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Query
from sqlalchemy import Select, and_, or_

from hardened.errors import FieldError, ValidationFailed
from hardened.fields import text

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Cursor", "Limit", "decode_cursor", "encode_cursor", "next_cursor", "page_query"]

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")]
Cursor = Annotated[
    Annotated[str, text(max_length=200)] | None, Query(description="Opaque; from next_cursor.")
]


def encode_cursor(created_at: datetime, ident: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(ident)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Parse a cursor or raise a 422 naming the query parameter."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, ident = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), uuid.UUID(ident)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(
            "The cursor is not valid.",
            errors=[FieldError(("query", "cursor"), "invalid cursor", "value_error.cursor")],
        ) from exc


def page_query(stmt: Select[Any], model: Any, limit: int, cursor: str | None) -> Select[Any]:
    """Newest first, ties broken by id; fetch one extra row to know whether a next page exists."""
    if cursor:
        created, ident = decode_cursor(cursor)
        stmt = stmt.where(
            or_(model.created_at < created, and_(model.created_at == created, model.id < ident))
        )
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def next_cursor(rows: Sequence[Any], limit: int) -> str | None:
    """The cursor after this page, or None on the last page."""
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return encode_cursor(last.created_at, last.id)
