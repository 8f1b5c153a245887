"""Outbound calls: one governor per dependency, modelled on resilience4j and Polly.

``governor = Governor(GovernorConfig.from_env("crm"), store=redis_store)``;
``client = httpx.AsyncClient(base_url=..., transport=GovernedTransport(governor),
auth=UpstreamAuth("crm", fetch_token))``; or ``await governor.call(fn,
idempotent=True)`` for any awaitable.

Each call passes, outer to inner: its **deadline** (the lane's, a
``deadline=`` argument, an enclosing `deadline` block: the earliest wins) →
**retry** (full-jitter backoff on stamina, idempotent calls only, within a
retry budget, honouring ``Retry-After``, never cancellation) → **circuit
breaker** (per process, time-based window, leased half-open probes) →
**interval cap** (N per period for the dependency, shared by every process
through one store script on the server's clock) → **bulkhead** (per
process and lane, bounded queue, cancellation-safe) → **attempt timeout**.
Two lanes per dependency (``default`` and ``long_running``) have their own
bulkhead and timeouts and share the cap and the breaker.

Every refusal is an `OutboundRefused` (503 ``outbound.*``, with
``Retry-After`` where the breaker or the cap knows when). Needs the
``outbound`` extra (httpx, stamina). Design, metrics and failure modes:
``docs/components/outbound.md``.
"""

from __future__ import annotations

from hardened._extras import missing_extra

try:
    import httpx  # noqa: F401
    import stamina  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the wheel check
    raise missing_extra("hardened.outbound", "outbound") from exc

from hardened.outbound._auth import Token, UpstreamAuth
from hardened.outbound._breaker import CircuitBreaker, Permit
from hardened.outbound._bulkhead import Bulkhead
from hardened.outbound._cap import Admission, IntervalCap
from hardened.outbound._config import (
    ENV_VARIABLES,
    BreakerConfig,
    BulkheadConfig,
    CapConfig,
    GovernorConfig,
    LaneConfig,
    RetryConfig,
    TokenConfig,
)
from hardened.outbound._errors import (
    AttemptTimedOut,
    BreakerOpen,
    BulkheadFull,
    CapExceeded,
    DeadlineExceeded,
    OutboundRefused,
    UpstreamAuthFailed,
)
from hardened.outbound._governor import Governor, Verdict
from hardened.outbound._httpx import IDEMPOTENT_METHODS, RETRYABLE_ERRORS, GovernedTransport
from hardened.outbound._registry import Governors
from hardened.outbound._retry import RetryBudget, deadline, deadline_left, parse_retry_after

__all__ = [
    "ENV_VARIABLES",
    "IDEMPOTENT_METHODS",
    "RETRYABLE_ERRORS",
    "Admission",
    "AttemptTimedOut",
    "BreakerConfig",
    "BreakerOpen",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadFull",
    "CapConfig",
    "CapExceeded",
    "CircuitBreaker",
    "DeadlineExceeded",
    "GovernedTransport",
    "Governor",
    "GovernorConfig",
    "Governors",
    "IntervalCap",
    "LaneConfig",
    "OutboundRefused",
    "Permit",
    "RetryBudget",
    "RetryConfig",
    "Token",
    "TokenConfig",
    "UpstreamAuth",
    "UpstreamAuthFailed",
    "Verdict",
    "deadline",
    "deadline_left",
    "parse_retry_after",
]
