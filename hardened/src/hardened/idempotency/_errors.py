"""The package's refusals, each a `hardened.errors` subclass with a stable code.

Why subclasses: clients branch on ``code`` (problem+json), and one handler
maps every one of them to HTTP, for the middleware and internal operations
alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hardened.errors import (
    BadRequest,
    Conflict,
    HardenedError,
    IdempotencyConflict,
    MissingHeader,
    ValidationFailed,
    retry_after_seconds,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "IdempotencyInFlight",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMissing",
    "IdempotencyKeyReused",
    "IdempotencyResponseNotKept",
    "IdempotencyUnguarded",
    "LeaseLost",
]


class IdempotencyKeyMissing(MissingHeader):
    """The route requires an ``Idempotency-Key`` and the request has none (400)."""

    code = "idempotency.key_missing"
    title = "Idempotency-Key header required"


class IdempotencyKeyInvalid(BadRequest):
    """The key is empty, longer than 255 characters or not printable ASCII (400)."""

    code = "idempotency.key_invalid"
    title = "Idempotency-Key is invalid"


class IdempotencyKeyReused(ValidationFailed):
    """The key was first used with another payload (422, per the IETF draft)."""

    code = "idempotency.key_reused"
    title = "Idempotency-Key reused with a different payload"


class IdempotencyInFlight(IdempotencyConflict):
    """A request with this key is still running (409 with ``Retry-After``)."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float,
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        seconds = retry_after_seconds(retry_after)
        merged = {**(headers or {}), "retry-after": str(seconds)}
        super().__init__(detail, code=code, context=context, headers=merged)
        self.retry_after = seconds


class LeaseLost(Conflict):
    """This holder's lease was taken over: it must not publish anything (409)."""

    code = "idempotency.lease_lost"
    title = "The idempotency lease was lost"


class IdempotencyResponseNotKept(HardenedError):
    """The request ran, but its response was too large to keep, so it cannot be replayed (410).

    Gone, not a conflict: retrying will never bring the response back, and the
    operation must not run again. ``original_status`` tells the client how it ended.
    """

    status = 410
    code = "idempotency.response_not_kept"
    title = "Idempotent response not kept"

    def __init__(
        self,
        detail: str | None = None,
        *,
        original_status: int,
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail, code=code, context=context, headers=headers)
        self.original_status = original_status

    def extensions(self) -> dict[str, Any]:
        return {"original_status": self.original_status}


class IdempotencyUnguarded(HardenedError):
    """A route declared ``idempotency_key(guarded=True)`` but no middleware rule covered it."""

    code = "idempotency.unguarded"
    title = "Idempotency guard missing"
