"""The error tree and its RFC 9457 rendering.

Every refusal the library makes is one of these exceptions, so a service maps
them to HTTP in exactly one place and clients get a stable machine-readable
``code`` they can branch on, always ``area.snake_case`` (lower case, at least
one dot, no hyphens), so clients can match codes without normalising them::

    HardenedError (500 internal.error)
    ├── BadRequest (400 request.invalid)
    │   ├── MissingHeader (400 request.missing_header)
    │   │   └── IdempotencyKeyMissing (400 idempotency.key_missing)      idempotency
    │   └── IdempotencyKeyInvalid (400 idempotency.key_invalid)          idempotency
    ├── Unauthorized (401 auth.unauthorized)
    │   ├── InvalidRefreshToken (401 auth.invalid_refresh)               auth
    │   └── TokenReused (401 auth.token_reused)                          auth
    ├── Forbidden (403 auth.forbidden)
    │   └── CsrfFailed (403 csrf.failed)
    ├── NotFound (404 resource.not_found)
    │   ├── AccountNotFound (404 ledger.account_not_found)               ledger
    │   ├── OperationNotFound (404 ledger.operation_not_found)           ledger
    │   └── ReservationNotFound (404 ledger.reservation_not_found)       ledger
    ├── Conflict (409 resource.conflict)
    │   ├── ConcurrentModification (409 conflict.concurrent_modification)
    │   ├── IdempotencyConflict (409 idempotency.in_flight)
    │   │   └── IdempotencyInFlight (409 idempotency.in_flight)          idempotency
    │   ├── InsufficientCredits (409 ledger.insufficient_credits)        ledger
    │   ├── LeaseLost (409 idempotency.lease_lost)                       idempotency
    │   ├── RefundExceedsCapture (409 ledger.refund_exceeds_capture)     ledger
    │   └── ReservationNotHeld (409 ledger.reservation_not_held)         ledger
    │       └── ReservationExpired (409 ledger.reservation_expired)      ledger
    ├── IdempotencyResponseNotKept (410 idempotency.response_not_kept)   idempotency
    ├── PayloadTooLarge (413 request.too_large)
    ├── UnsupportedMediaType (415 request.unsupported_media_type)
    ├── ValidationFailed (422 request.validation_failed)
    │   ├── CostExceedsLimit (422 ratelimit.cost_exceeds_limit)          ratelimit
    │   ├── IdempotencyKeyReused (422 idempotency.key_reused)            idempotency
    │   ├── KeyReused (422 ledger.key_reused)                            ledger
    │   ├── PasswordTooLong (422 auth.password_too_long)                 auth
    │   └── PasswordTooShort (422 auth.password_too_short)               auth
    ├── RateLimited (429 ratelimit.exceeded)
    │   └── QuotaExceeded (429 ratelimit.quota_exceeded)                 ratelimit
    ├── CrossTenantWrite (500 tenant.cross_tenant_write)                 db
    ├── CryptoError (500 crypto.error)                                   crypto
    │   ├── DecryptionFailed (500 crypto.decryption_failed)              crypto
    │   ├── KeyDestroyed (500 crypto.key_destroyed)                      crypto
    │   ├── MalformedCiphertext (500 crypto.malformed)                   crypto
    │   ├── PlaintextRefused (500 crypto.plaintext_refused)              crypto
    │   └── UnknownKey (500 crypto.unknown_key)                          crypto
    ├── IdempotencyUnguarded (500 idempotency.unguarded)                 idempotency
    ├── TenantContextMissing (500 tenant.context_missing)
    ├── UnscopedBulkWrite (500 tenant.unscoped_bulk_write)               db
    ├── UnscopedRawSQL (500 tenant.raw_sql)                              db
    └── ServiceUnavailable (503 service.unavailable)
        ├── DependencyUnavailable (503 dependency.unavailable)
        │   ├── StoreUnavailable (503 store.unavailable)
        │   ├── DatabaseUnavailable (503 db.unavailable)                 db
        │   │   ├── ConnectionLost (503 db.connection_lost)              db
        │   │   ├── DatabaseLocked (503 db.locked)                       db
        │   │   ├── PoolExhausted (503 db.pool_exhausted)                db
        │   │   └── StatementTimeout (503 db.statement_timeout)          db
        │   └── OutboundRefused (503 outbound.refused)                   outbound
        │       ├── AttemptTimedOut (503 outbound.timeout)               outbound
        │       ├── BreakerOpen (503 outbound.breaker_open)              outbound
        │       ├── BulkheadFull (503 outbound.bulkhead_full)            outbound
        │       ├── CapExceeded (503 outbound.capped)                    outbound
        │       ├── DeadlineExceeded (503 outbound.deadline_exceeded)    outbound
        │       └── UpstreamAuthFailed (503 outbound.auth_failed)        outbound
        ├── MaintenanceMode (503 service.maintenance)
        └── Overloaded (503 service.overloaded)                          http

The classes without a package name are here, in ``hardened.errors``; the
others are each package's own refusals, kept in its ``_errors`` module and
exported by the package (``hardened.idempotency.LeaseLost``). A refusal a
component adds goes into that tree, here too: a convention test checks that
every class is drawn with its status and code. The 500s are programming
errors (a tenant-scoped statement without a tenant), never client input.
``code`` may be refined per raise (``code="order.version_conflict"``), keeping
the class's status.

Retryable refusals (`RateLimited`, `ServiceUnavailable` and below) take
``retry_after`` in seconds and send ``Retry-After`` by `retry_after_seconds`,
the one rounding: up, at least 1.

``context`` is for logs only (it is redacted there) and never rendered:
internals must not leak through an error body. ``detail`` is rendered, so it
must be written for the client. Unknown exceptions render as a bare 500 with
the correlation id, and only development mode adds the exception text.
"""

from __future__ import annotations

import json
import math
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
    "TenantContextMissing",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
    "problem_for",
    "retry_after_seconds",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:hardened:problem:"
# The largest integer an RFC 9651 structured field carries: "never" on the wire.
_NEVER_SECONDS = 999_999_999_999_999


def retry_after_seconds(delay: float) -> int:
    """``Retry-After`` for a wait of ``delay`` seconds: rounded up, at least 1.

    The one rounding every refusal uses. Never 0 (a client told "retry now"
    retries in a loop) and never shorter than the real wait; an infinite delay
    is the largest structured-field integer (it never clears), NaN is 1.
    """
    if math.isnan(delay):
        return 1
    return max(1, math.ceil(min(delay, _NEVER_SECONDS)))


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


class TenantContextMissing(HardenedError):
    """Tenant-scoped work (a query, a cache namespace) ran with no tenant in context."""

    code = "tenant.context_missing"
    title = "Tenant context missing"


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
    """A refusal the client may retry later: ``retry_after`` seconds become ``Retry-After``."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        merged = dict(headers or {})
        seconds = None if retry_after is None else retry_after_seconds(retry_after)
        if seconds is not None:
            merged["retry-after"] = str(seconds)
        super().__init__(detail, code=code, context=context, headers=merged)
        self.retry_after: int | None = seconds


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
