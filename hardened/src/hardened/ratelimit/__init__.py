"""Rate limits: every policy of a request decided in one atomic step.

GCRA and sliding-window counters over the stores' atomic scripts (one Redis
round trip for all of a request's policies, quota consumed only when all
allow), per-policy fail modes and shadow mode, and the HTTP layer: pure-ASGI
middleware, a FastAPI dependency and the IETF ``RateLimit-Policy`` /
``RateLimit`` headers, and `Throttle` for the same limits outside HTTP
(WebSocket messages, outbound sends, job enqueues).

Error codes: ``ratelimit.quota_exceeded`` (429 `QuotaExceeded`, with
``Retry-After``) and ``ratelimit.cost_exceeds_limit`` (422 `CostExceedsLimit`:
a cost above what a policy can ever admit, so no retry hint); a fail-closed
policy without its store refuses with ``store.unavailable`` (503).
"""

from hardened.ratelimit._core import Algorithm, Decision, Policy, PolicyResult, RateLimiter
from hardened.ratelimit._errors import CostExceedsLimit, QuotaExceeded
from hardened.ratelimit._http import (
    Keyer,
    RateLimitMiddleware,
    Rule,
    by_header,
    by_ip,
    by_route,
    by_state,
    enforce,
    policy_header,
    rate_limit,
    ratelimit_header,
    ratelimit_headers,
)
from hardened.ratelimit._throttle import Throttle

__all__ = [
    "Algorithm",
    "CostExceedsLimit",
    "Decision",
    "Keyer",
    "Policy",
    "PolicyResult",
    "QuotaExceeded",
    "RateLimitMiddleware",
    "RateLimiter",
    "Rule",
    "Throttle",
    "by_header",
    "by_ip",
    "by_route",
    "by_state",
    "enforce",
    "policy_header",
    "rate_limit",
    "ratelimit_header",
    "ratelimit_headers",
]
