"""HTTP front of the rate limiter: a pure-ASGI middleware, a FastAPI dependency, the headers.

Why one ``limiter.check`` per request with every matching policy (route rules
plus the defaults) instead of one call per limit as slowapi does? Quota must be
consumed only when *all* policies allow, and each extra call is an extra store
round trip; the core does it in one atomic script.

Headers follow draft-ietf-httpapi-ratelimit-headers-11 (Structured Fields,
RFC 9651): ``RateLimit-Policy: "tenant";q=1000;w=900`` (a List of sf-string
items naming the policy, ``q`` = quota, ``w`` = window in seconds) and
``RateLimit: "tenant";r=998;t=870`` (``r`` = remaining quota units, ``t`` =
seconds until quota is available again). Every enforced policy of the request is
listed (the draft allows several items), the most restrictive first, so a
client that reads only the first item still sees the binding one; shadow
policies are not advertised since they do not limit anyone. Seconds are
integers rounded up, so a client that waits ``t`` is never early. ``pk``
(partition key) is deliberately omitted: it would be derived from the key.

A refusal is a 429 problem+json of type ``...:ratelimit.quota_exceeded`` naming
the violated policy (``violated_policy``), never the key (an IP, a user id), with
``Retry-After`` = ``ceil(retry_after)`` (>= 1), equal to the ``t`` of the
violated policy. A fail-closed refusal caused by an unreachable store is a 503
``store.unavailable`` instead (the client did nothing wrong), and after any store
failure no RateLimit fields are sent: the numbers would be the fail modes' guesses. The event
``ratelimit.limited`` logs the policy and path, and the key only as a hash;
``ratelimit.store_failed`` is sampled (`hardened.logging.Sampler`: the first per
policy, then one a second with the count left out), since during an outage every
request fails the same way.

A cost the policy can never admit (above its burst or limit, `Decision.impossible`)
is `CostExceedsLimit`: a 422 problem ``ratelimit.cost_exceeds_limit`` naming the
policy, the cost and the largest admissible cost, without ``Retry-After`` and
without RateLimit fields. Why 422 and not 429: the request is not early, it is
unservable as made, and a 429 tells clients (and their retry libraries) to come
back; one without ``Retry-After`` invites blind retries that can never succeed.
The client must split or shrink the request, so it is a client error that does
not say "retry", and it is no `RateLimited`. Logged as ``ratelimit.impossible``.

The client IP comes only from the trusted-proxy rule (``ClientIPMiddleware``);
``X-Forwarded-For`` is never read here.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import structlog

from hardened._asgi import first_header
from hardened._context import client_ip_var
from hardened.errors import StoreUnavailable, retry_after_seconds
from hardened.http import PathPattern, send_problem
from hardened.logging import Sampler
from hardened.ratelimit._errors import CostExceedsLimit, QuotaExceeded
from hardened.types import Scope

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Sequence

    from hardened.ratelimit._core import Decision, Policy, PolicyResult, RateLimiter
    from hardened.types import ASGIApp, Message, Receive, Send

__all__ = [
    "Keyer",
    "RateLimitMiddleware",
    "Rule",
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

Keyer: TypeAlias = Callable[[Scope], str | None]
"""A key function: the bucket key of a request, or None when the policy does not apply."""

_MAX_SF_INT = 999_999_999_999_999  # RFC 9651 sf-integer: at most 15 digits
_STORE_FAILURES = Sampler()  # ratelimit.store_failed: first per policy, then one a second
_client_ip = client_ip_var.get  # get_client_ip() without its call, for every request


# -- key functions -------------------------------------------------------------------------


def by_ip(scope: Scope) -> str | None:
    """The client IP decided by the trusted-proxy rule, else the socket peer."""
    ip = _client_ip()
    if ip:
        return ip
    client = scope.get("client")
    return str(client[0]) if client else None


def by_state(name: str) -> Keyer:
    """Key on ``scope["state"][name]`` (e.g. ``tenant_id`` set by an auth layer)."""

    def keyer(scope: Scope) -> str | None:
        value = (scope.get("state") or {}).get(name)
        return None if value is None or value == "" else str(value)

    keyer.__name__ = f"by_state({name!r})"
    return keyer


def by_route(scope: Scope) -> str | None:
    """The route template (``scope["route"].path``) when routing ran, else the raw path.

    In the middleware routing has not run yet, so this is the path; in the FastAPI
    dependency it is the template (``/orders/{id}``), one bucket for all ids.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    path = scope.get("path")
    return str(path) if path else None


def by_header(name: str) -> Keyer:
    """Key on a request header (e.g. a webhook source id); absent or empty means not applied."""
    wanted = name.lower().encode("latin-1")

    def keyer(scope: Scope) -> str | None:
        value = first_header(scope, wanted)
        return (value.strip() or None) if value is not None else None

    keyer.__name__ = f"by_header({name!r})"
    return keyer


# -- headers -------------------------------------------------------------------------------


def _sf_string(value: str) -> str:
    # sf-string allows printable ASCII only; escape the two specials, replace the rest.
    chars = ("_" if not (0x20 <= ord(c) <= 0x7E) else c for c in value)
    return '"' + "".join(chars).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sf_int(value: float) -> int:
    # min() before ceil(): an infinite retry_after (an impossible cost) clamps, never raises.
    return max(0, math.ceil(min(_MAX_SF_INT, value)))


def _window(policy: Policy) -> int:
    return max(1, _sf_int(policy.period))


class _Item:
    """What one policy puts in the two fields that never changes: derived once per policy."""

    __slots__ = ("policy", "policy_item", "prefix", "value")

    def __init__(self, policy: Policy) -> None:
        name = _sf_string(policy.name)
        self.policy = policy
        # The whole RateLimit-Policy item, e.g. '"ip";q=100;w=60'.
        self.policy_item = f"{name};q={_sf_int(policy.limit)};w={_window(policy)}"
        self.value = self.policy_item.encode("ascii")  # the field when it is the only item
        self.prefix = name.encode("ascii") + b";r="  # the RateLimit item before its numbers


# Policies are long-lived and the same objects come back on every request: look their
# items up by identity (the entry holds the policy, so its id cannot be reused while
# cached). Bounded: a caller minting policies per request only empties it now and then.
_ITEMS: dict[int, _Item] = {}
_POLICY_VALUES: dict[tuple[int, ...], tuple[tuple[Policy, ...], bytes]] = {}
_CACHE_MAX = 1024


def _item(policy: Policy) -> _Item:
    item = _ITEMS.get(id(policy))
    if item is None or item.policy is not policy:
        if len(_ITEMS) >= _CACHE_MAX:
            _ITEMS.clear()
        item = _ITEMS[id(policy)] = _Item(policy)
    return item


def _policy_value(results: Sequence[PolicyResult]) -> bytes:
    # RateLimit-Policy is constant per ordered set of policies: built once per set.
    if len(results) == 1:
        return _item(results[0].policy).value
    policies = tuple(r.policy for r in results)
    ids = tuple(map(id, policies))
    cached = _POLICY_VALUES.get(ids)
    if cached is not None and all(map(operator.is_, cached[0], policies)):
        return cached[1]
    value = ", ".join(_item(p).policy_item for p in policies).encode("ascii")
    if len(_POLICY_VALUES) >= _CACHE_MAX:
        _POLICY_VALUES.clear()
    _POLICY_VALUES[ids] = (policies, value)
    return value


def _ratelimit_item(result: PolicyResult, item: _Item | None = None) -> bytes:
    remaining = result.remaining
    if remaining.__class__ is not int or not 0 <= remaining <= _MAX_SF_INT:
        remaining = _sf_int(remaining)
    # t: the reset time when allowed, the retry-after (>= 1) when refused.
    allowed = result.allowed
    seconds = _sf_int(result.reset_after) if allowed else retry_after_seconds(result.retry_after)
    prefix = (item or _item(result.policy)).prefix
    return b"%s%d;t=%d" % (prefix, remaining, seconds)


def _advertised(results: Iterable[PolicyResult]) -> list[PolicyResult]:
    return [r for r in results if not r.policy.shadow]


def policy_header(results: Iterable[PolicyResult]) -> str:
    """``RateLimit-Policy`` value: ``"name";q=<limit>;w=<period, s>`` items, comma-separated."""
    advertised = _advertised(results)
    return _policy_value(advertised).decode("ascii") if advertised else ""


def ratelimit_header(results: Iterable[PolicyResult]) -> str:
    """``RateLimit`` value: ``"name";r=<remaining>;t=<seconds>`` items, comma-separated.

    ``t`` is the reset time for a policy that allowed, and the retry-after (>= 1)
    for one that refused, so it matches ``Retry-After`` on a 429.
    """
    return b", ".join(map(_ratelimit_item, _advertised(results))).decode("ascii")


def _ordered(decision: Decision) -> list[PolicyResult]:
    first = decision.violated or decision.most_restrictive
    rest = [r for r in decision.results if r is not first]
    return [first, *rest] if first is not None else rest


_POLICY_FIELD = b"ratelimit-policy"
_RATELIMIT_FIELD = b"ratelimit"


def _header_list(decision: Decision) -> list[tuple[bytes, bytes]]:
    """`ratelimit_headers` as ASGI header pairs, built in bytes (the middleware's form)."""
    if decision.store_failed:
        return []
    results = decision.results
    if len(results) == 1:  # the common case: no ordering, no filtering lists
        result = results[0]
        if result.policy.shadow:
            return []
        item = _item(result.policy)
        return [(_POLICY_FIELD, item.value), (_RATELIMIT_FIELD, _ratelimit_item(result, item))]
    advertised = _advertised(_ordered(decision))
    if not advertised:
        return []
    return [
        (_POLICY_FIELD, _policy_value(advertised)),
        (_RATELIMIT_FIELD, b", ".join(map(_ratelimit_item, advertised))),
    ]


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """Both fields for a decision; empty when no enforced policy applied or the store failed.

    After a store failure the results are the fail modes' stand-ins (full quota or a
    1 s refusal), not real quota state, so advertising them would mislead clients;
    so are those of an impossible decision, which never asked the store.
    """
    if not decision.allowed and decision.impossible:
        return {}
    pairs = _header_list(decision)
    if not pairs:
        return {}
    return {
        "RateLimit-Policy": pairs[0][1].decode("ascii"),
        "RateLimit": pairs[1][1].decode("ascii"),
    }


# -- rules and the middleware --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """Policies applied to requests whose method and path match.

    ``path`` matches as a prefix on whole segments (``/api/orders`` matches
    ``/api/orders`` and ``/api/orders/7``, not ``/api/ordersx``); a trailing ``$``
    makes it exact (``/login$``), and a ``{name}`` segment matches any one
    segment (``/orders/{id}/cancel$``): `hardened.http.PathPattern`, the syntax of
    `hardened.idempotency.IdempotentRoute` too. ``methods`` None means every method.
    """

    path: str
    limits: tuple[tuple[Policy, Keyer], ...]
    methods: frozenset[str] | None = None
    _pattern: PathPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", PathPattern(self.path))
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to ``method`` ``path``."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self._pattern.matches(path)


def _hits(scope: Scope, limits: Iterable[tuple[Policy, Keyer]]) -> list[tuple[Policy, str]]:
    # Overlapping rules may name the same policy and key twice; it is one hit, counted once.
    hits: dict[tuple[Policy, str], None] = {}
    for policy, keyer in limits:
        key = keyer(scope)
        if key is not None:
            hits[policy, key] = None
    return list(hits)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _refusal(
    decision: Decision, hits: Sequence[tuple[Policy, str]], path: str, cost: int
) -> Exception:
    violated = decision.violated
    if violated is not None and violated.impossible:
        policy = violated.policy
        structlog.get_logger("hardened.ratelimit").info(
            "ratelimit.impossible",
            policy=policy.name,
            path=path,
            cost=cost,
            max_cost=policy.max_cost,
        )
        return CostExceedsLimit(
            f"This request costs {cost}; quota {policy.name!r} admits at most "
            f"{policy.max_cost} at once.",
            violated_policy=policy.name,
            cost=cost,
            max_cost=policy.max_cost,
        )
    if violated is None or decision.store_failed:
        # A fail-closed policy refused because the store is down: the client is not at fault.
        # Every request refuses the same way until it is back: sampled, not a line each.
        name = violated.policy.name if violated is not None else None
        suppressed = _STORE_FAILURES.admit(name)
        if suppressed is not None:
            structlog.get_logger("hardened.ratelimit").warning(
                "ratelimit.store_failed", policy=name, path=path, suppressed=suppressed
            )
        return StoreUnavailable(
            "Rate limiting is temporarily unavailable.", retry_after=decision.retry_after
        )
    key = next((k for p, k in hits if p == violated.policy), "")
    structlog.get_logger("hardened.ratelimit").info(
        "ratelimit.limited",
        policy=violated.policy.name,
        path=path,
        key_hash=_key_hash(key),
    )
    return QuotaExceeded(
        f"Quota {violated.policy.name!r} exceeded; retry later.",
        violated_policy=violated.policy.name,
        retry_after=decision.retry_after,
        headers=ratelimit_headers(decision),
    )


async def enforce(
    limiter: RateLimiter, hits: Sequence[tuple[Policy, str]], *, cost: int = 1, path: str = ""
) -> dict[str, str]:
    """Check ``hits`` in one step: the RateLimit headers to send, or the refusal raised.

    The refusal is `QuotaExceeded` (429, headers attached), `CostExceedsLimit`
    (422) for a cost a policy can never admit, or, when a fail-closed policy lost
    its store, `StoreUnavailable` (503). For callers whose keys come
    from somewhere the keyers cannot see, such as an account in a request body.
    """
    decision = await limiter.check(hits, cost=cost)
    if not decision.allowed:
        raise _refusal(decision, hits, path, cost)
    return ratelimit_headers(decision)


_Limits: TypeAlias = "tuple[tuple[Policy, Keyer], ...]"
# What a (method, path) checks: its limits, and whether a policy can appear twice in them.
_Plan: TypeAlias = "tuple[_Limits, bool]"
_PLANS_MAX = 4096  # bounded: paths are the client's choice
_PLAN_PATH_MAX = 256  # longer paths are matched every time rather than kept


class RateLimitMiddleware:
    """Pure-ASGI rate limiting driven by a route table; websockets and lifespan pass through.

    Which limits a method and path get is decided once per distinct pair and kept
    (a bounded cache, emptied when full), so a request pays one dict lookup, not
    one `Rule.matches` per rule.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        rules: Sequence[Rule],
        default: Sequence[tuple[Policy, Keyer]] = (),
        cost: Callable[[Scope], int] | None = None,
        debug: bool = False,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.rules = tuple(rules)
        self.default = tuple(default)
        self.cost = cost
        self.debug = debug
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._planned_rules, self._planned_default = self.rules, self.default

    def _plan(self, method: str, path: str) -> _Plan:
        if self._planned_rules is not self.rules or self._planned_default is not self.default:
            self._plans.clear()  # the table was replaced: forget what the old one decided
            self._planned_rules, self._planned_default = self.rules, self.default
        limits = (
            *(lim for rule in self.rules if rule.matches(method, path) for lim in rule.limits),
            *self.default,
        )
        policies = [policy for policy, _ in limits]
        plan = limits, len(set(policies)) != len(policies)
        if len(path) <= _PLAN_PATH_MAX:
            if len(self._plans) >= _PLANS_MAX:
                self._plans.clear()
            self._plans[method, path] = plan
        return plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        plan = self._plans.get((method, path))
        if (
            plan is None
            or self._planned_rules is not self.rules
            or self._planned_default is not self.default
        ):
            plan = self._plan(method, path)
        limits, repeats = plan
        if repeats:
            hits = _hits(scope, limits)
        else:  # no policy twice, so no (policy, key) twice: nothing to deduplicate
            hits = []
            for policy, keyer in limits:
                key = keyer(scope)
                if key is not None:
                    hits.append((policy, key))
        if not hits:
            await self.app(scope, receive, send)
            return
        cost = self.cost(scope) if self.cost is not None else 1
        decision = await self.limiter.check(hits, cost=cost)
        if not decision.allowed:
            refusal = _refusal(decision, hits, path, cost)
            await send_problem(scope, send, refusal, debug=self.debug)
            return
        extra = _header_list(decision)
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # One new list and one new message; the app's own stay untouched.
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- FastAPI -------------------------------------------------------------------------------


def rate_limit(
    limiter: RateLimiter, *limits: tuple[Policy, Keyer], cost: int = 1
) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency (``Depends(rate_limit(...))``) checking ``limits`` for the route.

    On success the RateLimit headers are set on the response; on refusal it raises
    `QuotaExceeded` (a `RateLimited`) carrying them, or `CostExceedsLimit`, rendered by
    ``hardened.fastapi.install_problem_handlers``. Here routing has run, so
    `by_route` keys on the route template.
    """
    from starlette.requests import Request  # noqa: PLC0415 - fastapi stays optional
    from starlette.responses import Response  # noqa: PLC0415

    async def dependency(request: Request, response: Response) -> None:
        hits = _hits(request.scope, limits)
        if hits:
            headers = await enforce(limiter, hits, cost=cost, path=request.url.path)
            response.headers.update(headers)

    # FastAPI reads the signature; give it real classes, not postponed annotation strings.
    params = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter("response", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Response),
    ]
    dependency.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    return dependency
