"""The HTTP guards' refusals that are theirs alone; the rest are `hardened.errors` classes."""

from __future__ import annotations

from hardened.errors import PayloadTooLarge, ServiceUnavailable

__all__ = ["Overloaded", "_BodyLimitExceeded"]


class Overloaded(ServiceUnavailable):
    """The worker already has as many requests in flight as it takes (503, retry later)."""

    code = "service.overloaded"
    title = "Too many requests in progress"


class _BodyLimitExceeded(PayloadTooLarge):
    """Raised from the wrapped ``receive``; only `BodyLimitMiddleware` catches it by type."""
