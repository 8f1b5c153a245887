"""Multi-policy rate limiting in one atomic script: GCRA and sliding-window counter.

Why this shape: a request usually answers to several limits at once (per IP,
per user, per tenant). Checking them one after another, as slowapi and
``limits`` do, costs one round trip each and, worse, consumes quota from the
first policies even when a later one refuses. Here every hit of a request goes
into **one** script (``lua/ratelimit_check.lua``, one ``EVALSHA``), which
evaluates all policies on the server clock (``TIME``, microseconds) and writes
only if every enforced policy allows: a request refused by one policy consumes
nothing from the others. `MemoryStore` runs the Python twin `_check`, the
same integer microsecond arithmetic line by line, so both backends agree
exactly (the contract suite replays Redis's clock on the twin and compares).

Algorithms (no timestamp logs: cost is O(1) whatever the limit)
    ``gcra``: one TAT per key; emission interval ``T = round(period / limit)``
    in whole microseconds, capacity ``burst * T``; admits when
    ``TAT + cost*T - capacity <= now``; exact ``retry_after``; the key expires
    at the reset time. ``sliding_window``: the ``limits`` sliding-window
    counter (windows aligned on multiples of the period since the epoch;
    ``floor(previous * (period - elapsed) / period) + current + cost <= limit``),
    kept as one hash ``{w, c, p}`` per key.

Shadow policies are evaluated and reported but never block. They consume
exactly as if they were enforced: only when they allow and the request goes
through, so their numbers show what enforcing them would do. A
`PolicyResult.allowed` is the policy's own verdict; `Decision.allowed` the
request's. ``remaining`` is capped at ``limit`` (a GCRA burst above the limit
shows as ``limit``).

Keys and Redis Cluster: every key of a limiter lives under one hash tag,
``hardened:{<namespace>}:<policy>:<g|s>:<key>``, so any mix of policies is
one script on one slot. The trade-off: one namespace is one shard's load;
spread load with several limiters (namespaces), e.g. one per tenant group.

Failure: `StoreUnavailable` applies each policy's ``fail_mode`` (open:
allowed with full quota; closed: refused, ``retry_after`` 1 s), sets
``store_failed`` and never raises. A cost above a sliding-window limit is
never allowed (``retry_after`` = period). Metrics:
``hardened_ratelimit_decisions_total{policy,outcome}`` (allowed, limited,
shadow_limited, failed_open, failed_closed),
``hardened_ratelimit_near_limit_total{policy}`` (remaining <= 20 %),
``hardened_ratelimit_store_errors_total``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Literal

from hardened.errors import StoreUnavailable
from hardened.observability._metrics import counter
from hardened.stores._contracts import Script, tagged

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.stores._contracts import AtomicScripts
    from hardened.stores._state import MemoryState

__all__ = ["CHECK", "Algorithm", "Decision", "Policy", "PolicyResult", "RateLimiter"]

Algorithm = Literal["gcra", "sliding_window"]

_US = 1_000_000
_NAME = re.compile(r"[a-z0-9_.-]+")
_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_MAX_PRODUCT = 2**52  # keeps every Lua (double) product exact

_DECISIONS = counter(
    "ratelimit_decisions_total",
    "Rate-limit decisions by policy and outcome.",
    ["policy", "outcome"],
)
_NEAR = counter("ratelimit_near_limit_total", "Decisions leaving <= 20% of a quota.", ["policy"])
_STORE_ERRORS = counter("ratelimit_store_errors_total", "Rate-limit checks the store failed.")


@dataclass(frozen=True, slots=True)
class Policy:
    """One limit: ``limit`` requests per ``period`` seconds, keyed by the caller."""

    name: str
    limit: int
    period: float
    algorithm: Algorithm = "gcra"
    burst: int | None = None
    fail_mode: Literal["open", "closed"] = "open"
    shadow: bool = False

    def __post_init__(self) -> None:
        if _NAME.fullmatch(self.name) is None:
            raise ValueError(f"policy name must match [a-z0-9_.-]+, got {self.name!r}")
        if isinstance(self.limit, bool) or self.limit <= 0:
            raise ValueError("limit must be a positive int")
        if not self.period > 0:
            raise ValueError("period must be positive")
        if self.algorithm not in ("gcra", "sliding_window"):
            raise ValueError(f"unknown algorithm {self.algorithm!r}")
        if self.burst is not None and (self.algorithm != "gcra" or self.burst <= 0):
            raise ValueError("burst is a positive int, for gcra only")
        if self.fail_mode not in ("open", "closed"):
            raise ValueError("fail_mode is 'open' or 'closed'")
        if round(self.period * _US) < self.limit:
            raise ValueError("period / limit must be at least one microsecond")
        if (max(self.limit, self.burst or 0) + 1) * round(self.period * _US) >= _MAX_PRODUCT:
            raise ValueError("limit * period too large for exact arithmetic")


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """One policy's verdict on one request (times in seconds)."""

    policy: Policy
    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The request's verdict over all its policies."""

    allowed: bool
    results: tuple[PolicyResult, ...]
    violated: PolicyResult | None
    most_restrictive: PolicyResult | None
    store_failed: bool

    @property
    def retry_after(self) -> float:
        """Seconds until the violated policy would allow this request (0 when allowed)."""
        return 0.0 if self.violated is None else self.violated.retry_after

    @property
    def near_limit(self) -> bool:
        """Whether any policy has at most 20 % of its quota left."""
        return any(r.remaining * 5 <= r.policy.limit for r in self.results)


# -- the script's Python twin ------------------------------------------------------


def _gcra(state: MemoryState, key: str, now: int, cost: int, *, a: int, b: int) -> list[Any]:
    raw = state.get(key)
    tat = max(now if raw is None else int(raw), now)
    new_tat = tat + cost * a
    diff = now - (new_tat - b)
    before = [max(0, (now - (tat - b)) // a), tat - now]
    if diff >= 0:
        return [1, 0, before, [diff // a, new_tat - now], (new_tat,)]
    return [0, -diff, before, None, None]


def _window(state: MemoryState, key: str, now: int, cost: int, *, limit: int, a: int) -> list[Any]:
    w, e = divmod(now, a)
    hw, hc, hp = state.hmget(key, b"w", b"c", b"p")
    cur = prev = 0
    if hw is not None and int(hw) == w:
        cur, prev = int(hc or 0), int(hp or 0)
    elif hw is not None and int(hw) == w - 1:
        prev = int(hc or 0)
    weighted = prev * (a - e) // a + cur
    reset = 2 * a - e if cur > 0 else (a - e if prev > 0 else 0)
    before = [max(0, limit - weighted), reset]
    if weighted + cost <= limit:
        write = (w, cur + cost, prev, 2 * a - e)
        return [1, 0, before, [limit - weighted - cost, 2 * a - e], write]
    room = limit - cost - cur
    if room >= 0:
        retry = a - ((room + 1) * a - 1) // prev - e
    elif cost <= limit:
        e2 = max(0, a - ((limit - cost + 1) * a - 1) // cur) if cur > 0 else 0
        retry = a - e + e2
    else:
        retry = a
    return [0, retry, before, None, None]


def _check(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    """Twin of ``ratelimit_check.lua``: same reply, same writes, same TTLs."""
    now_us, cost, every = round(now * _US), int(args[0]), 1
    evaluated = []
    for i, key in enumerate(keys):
        alg, shadow, limit, a, b = args[1 + i * 5 : 6 + i * 5]
        if alg == b"1":
            res = _gcra(state, key, now_us, cost, a=int(a), b=int(b))
        else:
            res = _window(state, key, now_us, cost, limit=int(limit), a=int(a))
        if res[0] == 0 and shadow != b"1":
            every = 0
        evaluated.append(res)
    out: list[int] = [now_us, every]
    for key, (ok, retry, before, after, write) in zip(keys, evaluated, strict=True):
        if every and write is not None:
            if len(write) == 1:
                state.set(key, b"%d" % write[0], px=(write[0] - now_us + 999) // 1000)
            else:
                fields = {b"w": b"%d" % write[0], b"c": b"%d" % write[1], b"p": b"%d" % write[2]}
                state.hset(key, fields)
                state.pexpire(key, (write[3] + 999) // 1000)
        shown = after if every and write is not None else before
        out += [ok, shown[0], shown[1], retry]
    return out


def _load() -> Script:
    # Chained joinpath: works whether hardened.ratelimit is a regular or a namespace package.
    path = files("hardened.ratelimit").joinpath("lua").joinpath("ratelimit_check.lua")
    return Script("ratelimit_check", path.read_text(encoding="utf-8"), _check)


CHECK = _load()


# -- the limiter ---------------------------------------------------------------------


def _params(policy: Policy) -> tuple[bytes, bytes, bytes, bytes, bytes, str]:
    """Pre-encoded script arguments for ``policy``, plus its key infix."""
    period_us = round(policy.period * _US)
    shadow = b"1" if policy.shadow else b"0"
    limit = b"%d" % policy.limit
    if policy.algorithm == "gcra":
        interval = max(1, round(period_us / policy.limit))
        capacity = (policy.burst or policy.limit) * interval
        return b"1", shadow, limit, b"%d" % interval, b"%d" % capacity, f"{policy.name}:g:"
    return b"2", shadow, limit, b"%d" % period_us, b"0", f"{policy.name}:s:"


def _failed(policy: Policy) -> PolicyResult:
    if policy.fail_mode == "open" or policy.shadow:
        return PolicyResult(
            policy, allowed=True, remaining=policy.limit, reset_after=0.0, retry_after=0.0
        )
    return PolicyResult(policy, allowed=False, remaining=0, reset_after=1.0, retry_after=1.0)


class RateLimiter:
    """Checks a request's (policy, key) hits in one atomic script on ``store``."""

    def __init__(self, store: AtomicScripts, *, namespace: str = "rl") -> None:
        self._store = store
        self._prefix = tagged(namespace) + ":"
        self._params: dict[Policy, tuple[bytes, bytes, bytes, bytes, bytes, str]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _counter(self, metric: Any, *labels: str) -> Any:
        # labels() takes a lock and builds a tuple on every call: cache the children.
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def key_for(self, policy: Policy, key: str) -> str:
        """The store key holding ``policy``'s counter for ``key``."""
        return self._prefix + self._param(policy)[5] + key.translate(_ESCAPES)

    def _param(self, policy: Policy) -> tuple[bytes, bytes, bytes, bytes, bytes, str]:
        params = self._params.get(policy)
        if params is None:
            params = self._params[policy] = _params(policy)
        return params

    async def check(self, hits: Sequence[tuple[Policy, str]], *, cost: int = 1) -> Decision:
        """Evaluate every hit in one round trip; consume only if all enforced policies allow."""
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ValueError("cost must be an int >= 1")
        if not hits:
            return Decision(
                allowed=True, results=(), violated=None, most_restrictive=None, store_failed=False
            )
        keys: list[str] = []
        args: list[bytes] = [b"%d" % cost]
        for policy, key in hits:
            params = self._param(policy)
            keys.append(self._prefix + params[5] + key.translate(_ESCAPES))
            args += params[:5]
        if len(set(keys)) != len(keys):
            raise ValueError("the same (policy, key) appears twice in one check")
        try:
            reply = await self._store.run(CHECK, keys, args)
        except StoreUnavailable:
            _STORE_ERRORS.inc()
            return self._decide(tuple(_failed(p) for p, _ in hits), failed=True)
        results = []
        for i, (policy, _) in enumerate(hits):
            j = 2 + i * 4
            remaining = reply[j + 1]
            results.append(
                PolicyResult(
                    policy,
                    reply[j] == 1,
                    remaining if remaining < policy.limit else policy.limit,
                    reply[j + 2] / _US,
                    reply[j + 3] / _US,
                )
            )
        return self._decide(tuple(results), failed=False)

    def _decide(self, results: tuple[PolicyResult, ...], *, failed: bool) -> Decision:
        violated: PolicyResult | None = None
        restrictive: PolicyResult | None = None
        allowed = True
        for r in results:
            policy = r.policy
            if failed:
                outcome = "failed_open" if r.allowed else "failed_closed"
            elif r.allowed:
                outcome = "allowed"
            else:
                outcome = "shadow_limited" if policy.shadow else "limited"
            self._counter(_DECISIONS, policy.name, outcome).inc()
            if r.remaining * 5 <= policy.limit:
                self._counter(_NEAR, policy.name).inc()
            if not r.allowed and not policy.shadow:
                allowed = False
                if violated is None or r.retry_after > violated.retry_after:
                    violated = r
            if (
                restrictive is None
                or r.remaining * restrictive.policy.limit < restrictive.remaining * policy.limit
            ):
                restrictive = r
        return Decision(allowed, results, violated, restrictive, failed)
