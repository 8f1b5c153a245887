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

Impossible costs: a request costing more than a policy's capacity
(`Policy.max_cost`: the burst for GCRA, the limit for a sliding window) can
never be admitted, at any moment, for any key, so waiting is no answer and a
finite ``retry_after`` would invite a retry loop. Such a policy refuses with
``retry_after`` = ``math.inf`` (`PolicyResult.impossible`,
`Decision.impossible`). The comparison is made per policy before the store is
asked (the capacity is derived once, in `_Entry`): a request an enforced
policy can never admit costs no round trip, takes and reads nothing, and is
refused the same way when the store is down (a fail-open policy must not admit
what it never could). Its other policies are not evaluated; their results are
stand-ins (allowed, full quota), as after a store failure. A shadow policy
below the cost still goes to the store with the rest of the request and only
reports ``impossible``. Cost 1 never reaches the comparison (every capacity is
at least 1), so the hot path is unchanged.

Failure: `StoreUnavailable` applies each policy's ``fail_mode`` (open:
allowed with full quota; closed: refused, ``retry_after`` 1 s), sets
``store_failed`` and never raises. Metrics:
``hardened_ratelimit_decisions_total{policy,outcome}`` (allowed, limited,
impossible, shadow_limited, shadow_impossible, failed_open, failed_closed),
``hardened_ratelimit_near_limit_total{policy}`` (remaining <= 20 %),
``hardened_ratelimit_store_errors_total``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Literal

from hardened.errors import StoreUnavailable
from hardened.observability.metrics import counter, fast_counter
from hardened.stores import Script, tagged

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.stores import AtomicScripts, MemoryState

__all__ = ["CHECK", "Algorithm", "Decision", "Policy", "PolicyResult", "RateLimiter"]

Algorithm = Literal["gcra", "sliding_window"]

_US = 1_000_000
# One evaluated hit in the twin, as in the Lua: ok, retry, remaining and reset before
# and after consuming, then the write to make if every enforced policy allows.
_Res = tuple[int, int, int, int, int, int, "tuple[int, ...] | None"]
_NAME = re.compile(r"[a-z0-9_.-]+")
_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_MAX_PRODUCT = 2**52  # keeps every Lua (double) product exact
_NEVER = math.inf  # the retry_after of a cost a policy can never admit

# Counted in process and exported on scrape (fast_counter): a Counter's lock was a
# tenth of a MemoryStore decision. Same names, labels and type as Counters.
_DECISIONS = fast_counter(
    "ratelimit_decisions_total",
    "Rate-limit decisions by policy and outcome.",
    ["policy", "outcome"],
)
_NEAR = fast_counter(
    "ratelimit_near_limit_total", "Decisions leaving <= 20% of a quota.", ["policy"]
)
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

    @property
    def max_cost(self) -> int:
        """The largest cost a request can ever be admitted with: the GCRA burst, else the limit."""
        return self.burst or self.limit


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """One policy's verdict on one request (times in seconds)."""

    policy: Policy
    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float

    @property
    def impossible(self) -> bool:
        """Whether this policy can never admit the request's cost (``retry_after`` is inf)."""
        return not self.allowed and self.retry_after == _NEVER


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
        """Seconds until the violated policy would allow this request (0 when allowed).

        ``math.inf`` when the request is `impossible`: no wait will do.
        """
        return 0.0 if self.violated is None else self.violated.retry_after

    @property
    def impossible(self) -> bool:
        """Whether an enforced policy can never admit this cost: refused, retrying is futile."""
        return self.violated is not None and self.violated.retry_after == _NEVER

    @property
    def near_limit(self) -> bool:
        """Whether any policy has at most 20 % of its quota left."""
        return any(r.remaining * 5 <= r.policy.limit for r in self.results)


# Frozen dataclasses initialise through object.__setattr__, one generic call per field;
# the hot path sets their slots through the slot descriptors instead: the same objects,
# built in half the time. The import-time check keeps the field lists in step.
_new = object.__new__
_RESULT_FIELDS = ("policy", "allowed", "remaining", "reset_after", "retry_after")
_DECISION_FIELDS = ("allowed", "results", "violated", "most_restrictive", "store_failed")
if (
    tuple(f.name for f in fields(PolicyResult)) != _RESULT_FIELDS
    or tuple(f.name for f in fields(Decision)) != _DECISION_FIELDS
):  # pragma: no cover - a changed dataclass must update the builders
    raise RuntimeError("PolicyResult/Decision fields changed: update their builders")
_R_POLICY, _R_ALLOWED, _R_REMAINING, _R_RESET, _R_RETRY = (
    PolicyResult.__dict__[name].__set__ for name in _RESULT_FIELDS
)
_D_ALLOWED, _D_RESULTS, _D_VIOLATED, _D_RESTRICTIVE, _D_FAILED = (
    Decision.__dict__[name].__set__ for name in _DECISION_FIELDS
)


def _result(
    policy: Policy, allowed: bool, remaining: int, reset_after: float, retry_after: float
) -> PolicyResult:
    r = _new(PolicyResult)
    _R_POLICY(r, policy)
    _R_ALLOWED(r, allowed)
    _R_REMAINING(r, remaining)
    _R_RESET(r, reset_after)
    _R_RETRY(r, retry_after)
    return r


def _decision(
    allowed: bool,
    results: tuple[PolicyResult, ...],
    violated: PolicyResult | None,
    restrictive: PolicyResult | None,
    *,
    failed: bool,
) -> Decision:
    d = _new(Decision)
    _D_ALLOWED(d, allowed)
    _D_RESULTS(d, results)
    _D_VIOLATED(d, violated)
    _D_RESTRICTIVE(d, restrictive)
    _D_FAILED(d, failed)
    return d


# -- the script's Python twin ------------------------------------------------------


def _window(state: MemoryState, key: str, now: int, cost: int, *, limit: int, a: int) -> _Res:
    w, e = divmod(now, a)
    hw, hc, hp = state.hmget(key, b"w", b"c", b"p")
    cur = prev = 0
    if hw is not None and int(hw) == w:
        cur, prev = int(hc or 0), int(hp or 0)
    elif hw is not None and int(hw) == w - 1:
        prev = int(hc or 0)
    weighted = prev * (a - e) // a + cur
    reset = 2 * a - e if cur > 0 else (a - e if prev > 0 else 0)
    before = max(0, limit - weighted)
    if weighted + cost <= limit:
        write = (w, cur + cost, prev, 2 * a - e)
        return 1, 0, before, reset, limit - weighted - cost, 2 * a - e, write
    room = limit - cost - cur
    if room >= 0:
        retry = a - ((room + 1) * a - 1) // prev - e
    elif cost <= limit:
        e2 = max(0, a - ((limit - cost + 1) * a - 1) // cur) if cur > 0 else 0
        retry = a - e + e2
    else:
        retry = a
    return 0, retry, before, reset, 0, 0, None


def _check(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    """Twin of ``ratelimit_check.lua``: same reply, same writes, same TTLs.

    One GCRA hit (the common case) is unrolled here; any other mix goes to
    `_check_all`, shaped like the Lua (GCRA inline, one tuple per hit). The
    twin is most of a decision's cost on `MemoryStore`.
    """
    now_us, cost = round(now * _US), int(args[0])
    if len(keys) == 1 and args[1] == b"1":
        key = keys[0]
        a, b = int(args[4]), int(args[5])
        raw = state.get(key)
        tat = now_us if raw is None else max(int(raw), now_us)
        new_tat = tat + cost * a
        diff = now_us - (new_tat - b)
        if diff >= 0:
            state.set(key, b"%d" % new_tat, px=(new_tat - now_us + 999) // 1000)
            return [now_us, 1, 1, diff // a, new_tat - now_us, 0]
        shown = max(0, (now_us - (tat - b)) // a)
        return [now_us, 1 if args[2] == b"1" else 0, 0, shown, tat - now_us, -diff]
    return _check_all(state, keys, args, now_us, cost)


def _check_all(
    state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now_us: int, cost: int
) -> Any:
    """`_check` for any mix of hits, shaped like the Lua loop by loop."""
    every = 1
    res: list[_Res] = []
    j = 1
    for key in keys:
        a = int(args[j + 3])
        if args[j] == b"1":
            b = int(args[j + 4])
            raw = state.get(key)
            tat = now_us if raw is None else max(int(raw), now_us)
            new_tat = tat + cost * a
            diff = now_us - (new_tat - b)
            before = max(0, (now_us - (tat - b)) // a)
            if diff >= 0:
                r: _Res = (1, 0, before, tat - now_us, diff // a, new_tat - now_us, (new_tat,))
            else:
                r = (0, -diff, before, tat - now_us, 0, 0, None)
        else:
            r = _window(state, key, now_us, cost, limit=int(args[j + 2]), a=a)
        if r[0] == 0 and args[j + 1] != b"1":
            every = 0
        res.append(r)
        j += 5
    out: list[int] = [now_us, every]
    for key, (ok, retry, rem_before, reset_before, rem_after, reset_after, write) in zip(
        keys, res, strict=True
    ):
        if every and write is not None:
            if len(write) == 1:
                state.set(key, b"%d" % write[0], px=(write[0] - now_us + 999) // 1000)
            else:
                fields = {b"w": b"%d" % write[0], b"c": b"%d" % write[1], b"p": b"%d" % write[2]}
                state.hset(key, fields)
                state.pexpire(key, (write[3] + 999) // 1000)
            out += (ok, rem_after, reset_after, retry)
        else:
            out += (ok, rem_before, reset_before, retry)
    return out


def _load() -> Script:
    # Chained joinpath: works whether hardened.ratelimit is a regular or a namespace package.
    path = files("hardened.ratelimit").joinpath("lua").joinpath("ratelimit_check.lua")
    return Script("ratelimit_check", path.read_text(encoding="utf-8"), _check)


CHECK = _load()


# -- the limiter ---------------------------------------------------------------------


class _Entry:
    """What a limiter derives once per policy: script arguments, key prefix, metric children."""

    __slots__ = (
        "allowed",
        "args1",
        "decisions",
        "limited",
        "max_cost",
        "near",
        "params",
        "policy",
        "prefix",
        "shadow_limited",
    )

    def __init__(self, policy: Policy, namespace_prefix: str) -> None:
        period_us = round(policy.period * _US)
        shadow = b"1" if policy.shadow else b"0"
        limit = b"%d" % policy.limit
        if policy.algorithm == "gcra":
            interval = max(1, round(period_us / policy.limit))
            capacity = (policy.burst or policy.limit) * interval
            self.params = (b"1", shadow, limit, b"%d" % interval, b"%d" % capacity)
            infix = "g"
        else:
            self.params = (b"2", shadow, limit, b"%d" % period_us, b"0")
            infix = "s"
        self.policy = policy
        self.max_cost = policy.max_cost  # a higher cost is refused before the store is asked
        self.prefix = f"{namespace_prefix}{policy.name}:{infix}:"
        self.args1 = (b"1", *self.params)  # the whole ARGV of a one-hit check at cost 1
        # Resolve the metric series once: a decision only calls their incrementers.
        self.decisions = {o: _DECISIONS.incrementer(policy.name, o) for o in _OUTCOMES}
        self.allowed = self.decisions["allowed"]
        self.limited = self.decisions["limited"]
        self.shadow_limited = self.decisions["shadow_limited"]
        self.near = _NEAR.incrementer(policy.name)


def _escape(key: str) -> str:
    # Most keys (IPs, ids) need no escaping; testing for it is 5-10x cheaper than translate().
    if "%" in key or ":" in key or "{" in key or "}" in key:
        return key.translate(_ESCAPES)
    return key


def _failed(policy: Policy) -> PolicyResult:
    if policy.fail_mode == "open" or policy.shadow:
        return PolicyResult(
            policy, allowed=True, remaining=policy.limit, reset_after=0.0, retry_after=0.0
        )
    return PolicyResult(policy, allowed=False, remaining=0, reset_after=1.0, retry_after=1.0)


_OUTCOMES = (
    "allowed",
    "limited",
    "impossible",
    "shadow_limited",
    "shadow_impossible",
    "failed_open",
    "failed_closed",
)
_BY_ID_MAX = 1024


class RateLimiter:
    """Checks a request's (policy, key) hits in one atomic script on ``store``."""

    def __init__(self, store: AtomicScripts, *, namespace: str = "rl") -> None:
        self._store = store
        self._prefix = tagged(namespace) + ":"
        self._entries: dict[Policy, _Entry] = {}
        # Hashing a Policy hashes all its fields; the same objects come back on every
        # request, so look them up by identity first (bounded: cleared when full).
        self._by_id: dict[int, _Entry] = {}

    def _entry(self, policy: Policy) -> _Entry:
        entry = self._by_id.get(id(policy))
        if entry is not None and entry.policy is policy:
            return entry
        entry = self._entries.get(policy)
        if entry is None:
            entry = self._entries[policy] = _Entry(policy, self._prefix)
        if len(self._by_id) >= _BY_ID_MAX:
            self._by_id.clear()
        self._by_id[id(policy)] = entry
        return entry

    def key_for(self, policy: Policy, key: str) -> str:
        """The store key holding ``policy``'s counter for ``key``."""
        return self._entry(policy).prefix + _escape(key)

    async def check(  # noqa: PLR0912 - the one-hit path is unrolled on purpose
        self, hits: Sequence[tuple[Policy, str]], *, cost: int = 1
    ) -> Decision:
        """Evaluate every hit in one round trip; consume only if all enforced policies allow."""
        if (
            cost.__class__ is not int and (isinstance(cost, bool) or not isinstance(cost, int))
        ) or cost < 1:
            raise ValueError("cost must be an int >= 1")
        if len(hits) == 1:  # the common case, without the loops
            policy, key = hits[0]
            entry = self._by_id.get(id(policy))
            if entry is None or entry.policy is not policy:
                entry = self._entry(policy)
            args: tuple[bytes, ...]
            if cost == 1:
                args = entry.args1
            elif cost > entry.max_cost:  # can never be admitted: the general path says so
                return await self._check_many(hits, cost)
            else:
                args = (b"%d" % cost, *entry.params)
            if "%" in key or ":" in key or "{" in key or "}" in key:  # _escape(), inlined
                key = key.translate(_ESCAPES)
            try:
                reply = await self._store.run(CHECK, [entry.prefix + key], args)
            except StoreUnavailable:
                _STORE_ERRORS.inc()
                return self._decide((_failed(policy),), failed=True)
            ok = reply[2] == 1
            remaining, limit = reply[3], policy.limit
            if remaining > limit:  # noqa: PLR1730 - min() is a call, this is the hot path
                remaining = limit
            # _result(), _decide() and _decision() for one result, unrolled.
            result = _new(PolicyResult)
            _R_POLICY(result, policy)
            _R_ALLOWED(result, ok)
            _R_REMAINING(result, remaining)
            _R_RESET(result, reply[4] / _US)
            _R_RETRY(result, reply[5] / _US)
            decision = _new(Decision)
            _D_RESULTS(decision, (result,))
            _D_RESTRICTIVE(decision, result)
            _D_FAILED(decision, False)  # noqa: FBT003 - a slot setter, not a flag
            violated = None
            if ok:
                entry.allowed()
            elif policy.shadow:
                entry.shadow_limited()
            else:
                entry.limited()
                violated = result
            _D_ALLOWED(decision, violated is None)
            _D_VIOLATED(decision, violated)
            if remaining * 5 <= limit:
                entry.near()
            return decision
        return await self._check_many(hits, cost)

    async def _check_many(self, hits: Sequence[tuple[Policy, str]], cost: int) -> Decision:
        if not hits:
            return Decision(
                allowed=True, results=(), violated=None, most_restrictive=None, store_failed=False
            )
        entries = tuple(self._entry(policy) for policy, _ in hits)
        keys = [entry.prefix + _escape(key) for entry, (_, key) in zip(entries, hits, strict=True)]
        if len(set(keys)) != len(keys):
            raise ValueError("the same (policy, key) appears twice in one check")
        over = cost > 1 and any(cost > entry.max_cost for entry in entries)
        if over and any(cost > e.max_cost and not e.policy.shadow for e in entries):
            return self._impossible(entries, cost)
        argv: list[bytes] = [b"%d" % cost]
        for entry in entries:
            argv += entry.params
        try:
            reply = await self._store.run(CHECK, keys, argv)
        except StoreUnavailable:
            _STORE_ERRORS.inc()
            return self._decide(tuple(_failed(p) for p, _ in hits), failed=True, entries=entries)
        results = []
        j = 2
        for policy, _ in hits:
            remaining = reply[j + 1]
            results.append(
                _result(
                    policy,
                    reply[j] == 1,
                    remaining if remaining < policy.limit else policy.limit,
                    reply[j + 2] / _US,
                    reply[j + 3] / _US,
                )
            )
            j += 4
        if over:  # a shadow policy below the cost: no wait admits it, whatever the store says
            for i, (r, entry) in enumerate(zip(results, entries, strict=True)):
                if cost > entry.max_cost:
                    results[i] = _result(
                        r.policy,
                        allowed=False,
                        remaining=r.remaining,
                        reset_after=r.reset_after,
                        retry_after=_NEVER,
                    )
        return self._decide(tuple(results), failed=False, entries=entries)

    def _impossible(self, entries: Sequence[_Entry], cost: int) -> Decision:
        """An enforced policy can never admit ``cost``: refused without asking the store.

        Only the policies below the cost are counted; the others were not evaluated
        and get the fail-open stand-in (never advertised: see `ratelimit_headers`).
        """
        results = []
        violated: PolicyResult | None = None
        for entry in entries:
            policy = entry.policy
            if cost > entry.max_cost:
                result = _result(
                    policy, allowed=False, remaining=0, reset_after=0.0, retry_after=_NEVER
                )
                entry.decisions["shadow_impossible" if policy.shadow else "impossible"]()
                if violated is None and not policy.shadow:
                    violated = result
            else:
                result = _result(
                    policy, allowed=True, remaining=policy.limit, reset_after=0.0, retry_after=0.0
                )
            results.append(result)
        refused = tuple(results)
        return _decision(
            allowed=False, results=refused, violated=violated, restrictive=violated, failed=False
        )

    def _decide(
        self,
        results: tuple[PolicyResult, ...],
        *,
        failed: bool,
        entries: Sequence[_Entry] | None = None,
    ) -> Decision:
        if entries is None:
            entries = tuple(self._entry(r.policy) for r in results)
        violated: PolicyResult | None = None
        restrictive: PolicyResult | None = None
        allowed = True
        for r, entry in zip(results, entries, strict=True):
            policy = r.policy
            if failed:
                outcome = "failed_open" if r.allowed else "failed_closed"
            elif r.allowed:
                outcome = "allowed"
            elif r.retry_after == _NEVER:
                outcome = "shadow_impossible" if policy.shadow else "impossible"
            else:
                outcome = "shadow_limited" if policy.shadow else "limited"
            entry.decisions[outcome]()
            if r.remaining * 5 <= policy.limit:
                entry.near()
            if not r.allowed and not policy.shadow:
                allowed = False
                if violated is None or r.retry_after > violated.retry_after:
                    violated = r
            if (
                restrictive is None
                or r.remaining * restrictive.policy.limit < restrictive.remaining * policy.limit
            ):
                restrictive = r
        return _decision(allowed, results, violated, restrictive, failed=failed)
