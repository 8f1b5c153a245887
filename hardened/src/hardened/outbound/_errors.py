"""The governor's refusals: all 503s, each with the dependency in its (logged) context."""

from __future__ import annotations

from hardened.errors import DependencyUnavailable

__all__ = [
    "AttemptTimedOut",
    "BreakerOpen",
    "BulkheadFull",
    "CapExceeded",
    "DeadlineExceeded",
    "OutboundRefused",
    "UpstreamAuthFailed",
]


class OutboundRefused(DependencyUnavailable):
    """A call to a dependency was not made, or not finished, by the governor's rules.

    Always sent with ``Retry-After`` (1 s unless the refusal knows better).
    """

    code = "outbound.refused"
    title = "Dependency call refused"

    def __init__(
        self, detail: str | None = None, *, dependency: str, retry_after: float | None = None
    ) -> None:
        wait = 1.0 if retry_after is None else retry_after
        super().__init__(detail, retry_after=wait, context={"dependency": dependency})
        self.dependency = dependency


class BreakerOpen(OutboundRefused):
    """The dependency's circuit breaker is open (or forced open, or out of probes)."""

    code = "outbound.breaker_open"
    title = "Dependency circuit open"


class BulkheadFull(OutboundRefused):
    """Every permit of the lane was taken and its queue was full or waited too long."""

    code = "outbound.bulkhead_full"
    title = "Dependency busy"


class CapExceeded(OutboundRefused):
    """The dependency's shared call cap has no slot within the time the call may wait."""

    code = "outbound.capped"
    title = "Dependency call cap reached"


class DeadlineExceeded(OutboundRefused):
    """The call's total deadline passed (or left too little time for another attempt)."""

    code = "outbound.deadline_exceeded"
    title = "Dependency deadline exceeded"


class AttemptTimedOut(OutboundRefused):
    """One attempt took longer than the lane's attempt timeout."""

    code = "outbound.timeout"
    title = "Dependency timed out"


class UpstreamAuthFailed(OutboundRefused):
    """Getting a token from the dependency's auth endpoint failed or timed out."""

    code = "outbound.auth_failed"
    title = "Dependency authentication failed"
