"""The error tree and its RFC 9457 rendering.

Every refusal the library makes is one of these exceptions, so a service maps
them to HTTP in exactly one place and clients get a stable machine-readable
``code`` they can branch on, always ``area.snake_case`` (lower case, at least
one dot, no hyphens), so clients can match codes without normalising them::

    HardenedError (500 internal.error)
    ├── BadRequest (400 request.invalid)
    │   └── MissingHeader (400 request.missing_header)
    ├── Unauthorized (401 auth.unauthorized)
    ├── Forbidden (403 auth.forbidden)
    │   └── CsrfFailed (403 csrf.failed)
    ├── NotFound (404 resource.not_found)
    ├── Conflict (409 resource.conflict)
    │   ├── ConcurrentModification (409 conflict.concurrent_modification)
    │   └── IdempotencyConflict (409 idempotency.in_flight)
    ├── PayloadTooLarge (413 request.too_large)
    ├── UnsupportedMediaType (415 request.unsupported_media_type)
    ├── ValidationFailed (422 request.validation_failed)
    ├── RateLimited (429 ratelimit.exceeded)
    └── ServiceUnavailable (503 service.unavailable)
        ├── MaintenanceMode (503 service.maintenance)
        └── DependencyUnavailable (503 dependency.unavailable)
            └── StoreUnavailable (503 store.unavailable)

Components subclass these with codes of their own, keeping the status, e.g.
``idempotency.key_missing`` (400), ``idempotency.key_reused`` (422),
``idempotency.lease_lost`` (409), ``idempotency.response_not_kept`` (410),
``ledger.insufficient_credits`` (409), ``ledger.key_reused`` (422),
``ratelimit.quota_exceeded`` (429), ``ratelimit.cost_exceeds_limit`` (422),
``auth.ambiguous_credentials`` (401), ``db.conflict`` (409), ``db.unavailable``,
``db.pool_exhausted``, ``db.connection_lost``, ``db.statement_timeout``,
``db.locked`` and ``service.overloaded`` (503); each component's package
docstring lists its own.

``context`` is for logs only (it is redacted there) and never rendered:
internals must not leak through an error body. ``detail`` is rendered, so it
must be written for the client. Unknown exceptions render as a bare 500 with
the correlation id, and only development mode adds the exception text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "BadRequest",
    "ConcurrentModification",
    "Conflict",
    "CsrfFailed",
    "DependencyUnavailable",
    "FieldError",
    "Forbidden",
    "HardenedError",
    "IdempotencyConflict",
    "MaintenanceMode",
    "MissingHeader",
    "NotFound",
    "PayloadTooLarge",
    "Problem",
    "RateLimited",
    "ServiceUnavailable",
    "StoreUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
    "problem_for",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:hardened:problem:"


class HardenedError(Exception):
    """Base of every error the library raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal.error"
    title: ClassVar[str] = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.detail = detail
        if code is not None:
            # A per-raise code refines the class code (e.g. "order.version_conflict").
            self.code = code  # type: ignore[misc]
        self.context: dict[str, Any] = dict(context or {})
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(detail or self.title)

    def extensions(self) -> dict[str, Any]:
        """Extra members safe to show the client; subclasses add theirs."""
        return {}


class BadRequest(HardenedError):
    status = 400
    code = "request.invalid"
    title = "Bad Request"


class MissingHeader(BadRequest):
    code = "request.missing_header"
    title = "Required header missing"


class Unauthorized(HardenedError):
    status = 401
    code = "auth.unauthorized"
    title = "Unauthorized"


class Forbidden(HardenedError):
    status = 403
    code = "auth.forbidden"
    title = "Forbidden"


class CsrfFailed(Forbidden):
    code = "csrf.failed"
    title = "CSRF token missing or invalid"


class NotFound(HardenedError):
    status = 404
    code = "resource.not_found"
    title = "Not Found"


class Conflict(HardenedError):
    status = 409
    code = "resource.conflict"
    title = "Conflict"


class ConcurrentModification(Conflict):
    code = "conflict.concurrent_modification"
    title = "The resource was modified concurrently"


class IdempotencyConflict(Conflict):
    code = "idempotency.in_flight"
    title = "A request with this idempotency key is in progress"


class PayloadTooLarge(HardenedError):
    status = 413
    code = "request.too_large"
    title = "Payload Too Large"


class UnsupportedMediaType(HardenedError):
    status = 415
    code = "request.unsupported_media_type"
    title = "Unsupported Media Type"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid input field, in a shape safe to return to the client."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class ValidationFailed(HardenedError):
    status = 422
    code = "request.validation_failed"
    title = "Validation Failed"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[FieldError] = (),
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, code=code, context=context)
        self.errors = tuple(errors)

    def extensions(self) -> dict[str, Any]:
        return {"errors": [e.as_dict() for e in self.errors]} if self.errors else {}


class _RetryAfterMixin(HardenedError):
    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: int | None = None,
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        merged = dict(headers or {})
        if retry_after is not None:
            merged["retry-after"] = str(max(0, int(retry_after)))
        super().__init__(detail, code=code, context=context, headers=merged)
        self.retry_after = retry_after


class RateLimited(_RetryAfterMixin):
    status = 429
    code = "ratelimit.exceeded"
    title = "Too Many Requests"


class ServiceUnavailable(_RetryAfterMixin):
    status = 503
    code = "service.unavailable"
    title = "Service Unavailable"


class MaintenanceMode(ServiceUnavailable):
    code = "service.maintenance"
    title = "Down for maintenance"


class DependencyUnavailable(ServiceUnavailable):
    code = "dependency.unavailable"
    title = "A dependency is unavailable"


class StoreUnavailable(DependencyUnavailable):
    """A store backend (Redis, ...) failed; components apply their fail mode."""

    code = "store.unavailable"
    title = "Store unavailable"


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 9457 problem document plus the headers that go with it."""

    status: int
    code: str
    title: str
    detail: str | None = None
    instance: str | None = None
    correlation_id: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.code

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            body["detail"] = self.detail
        if self.instance:
            body["instance"] = self.instance
        body["correlation_id"] = self.correlation_id
        for key, value in self.extensions.items():
            body.setdefault(key, value)
        return body

    def body(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":"), default=str).encode()

    def header_list(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", PROBLEM_CONTENT_TYPE.encode())]
        if self.correlation_id:
            headers.append((b"x-request-id", self.correlation_id.encode("latin-1")))
        headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        )
        return headers


def problem_for(
    exc: BaseException,
    *,
    instance: str | None = None,
    correlation_id: str | None = None,
    debug: bool = False,
) -> Problem:
    """Map any exception to the problem a client may see.

    A `HardenedError` renders its own status, code and detail; anything else is
    an unexpected 500 whose message is shown only when ``debug`` is on.
    """
    if isinstance(exc, HardenedError):
        return Problem(
            status=exc.status,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            instance=instance,
            correlation_id=correlation_id,
            extensions=exc.extensions(),
            headers=exc.headers,
        )
    detail = f"{type(exc).__name__}: {exc}" if debug else None
    return Problem(
        status=500,
        code=HardenedError.code,
        title=HTTPStatus.INTERNAL_SERVER_ERROR.phrase,
        detail=detail,
        instance=instance,
        correlation_id=correlation_id,
    )
