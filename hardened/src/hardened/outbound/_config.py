"""A governor's settings, one frozen dataclass per layer, and their environment variables.

The defaults are a telecom back office's (a CRM and a billing system behind
per-provider queues): 15 concurrent calls, 300 per minute, 30 s per attempt,
a long-running lane of 22 with 10 min, tokens of 12 min refreshed 1 min early.
`GovernorConfig.from_env` reads ``<DEP>_QUEUE_CONCURRENCY`` and the rest (see
`ENV_VARIABLES`), validating each at start-up with the variable's name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ENV_VARIABLES",
    "BreakerConfig",
    "BulkheadConfig",
    "CapConfig",
    "GovernorConfig",
    "LaneConfig",
    "RetryConfig",
    "TokenConfig",
]

BreakerMode = Literal["normal", "forced_open", "disabled"]


def _seconds(name: str, value: float, *, zero: bool = False) -> None:
    ok = (value >= 0 if zero else value > 0) and math.isfinite(value)
    if not ok:
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


def _count(name: str, value: int, *, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _rate(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be a share in (0, 1], got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Exponential backoff with full jitter: retry n waits uniform(0, min(cap, base * 2**(n-1))).

    ``jitter`` is the random share of that wait (1: full jitter, as AWS
    recommends against synchronised retries; 0: the plain exponential wait).

    Only retryable outcomes are retried (connect errors, ``statuses``, the
    exception types in ``on``), only for idempotent calls, and only while the
    budget allows: every call deposits ``budget_ratio`` of a retry, every
    retry withdraws one, the balance starting at (and capped to)
    ``budget_reserve``. So under a lasting outage retries stay near
    ``budget_ratio`` of calls instead of multiplying the load by ``attempts``.
    """

    attempts: int = 3
    base: float = 0.1
    cap: float = 5.0
    jitter: float = 1.0
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    on: tuple[type[Exception], ...] = ()
    budget_ratio: float = 0.2
    budget_reserve: int = 10

    def __post_init__(self) -> None:
        _count("attempts", self.attempts)
        _seconds("base", self.base)
        _seconds("cap", self.cap)
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be a share in [0, 1], got {self.jitter!r}")
        _rate("budget_ratio", self.budget_ratio)
        _count("budget_reserve", self.budget_reserve, low=0)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """A time-based circuit breaker (per process, as resilience4j's).

    Over the last ``window`` seconds (``buckets`` slices on the monotonic
    clock), once at least ``minimum_calls`` attempts were seen: a failure rate
    or a slow-call rate (attempts longer than ``slow_call_duration``) at or
    above its threshold opens it for ``open_for`` seconds; then it admits
    ``half_open_probes`` probes, each holding a permit that comes back if the
    probe is lost or not reported within ``probe_lease`` seconds. The probes'
    own failure rate decides: below the threshold closes, else it opens again.
    ``mode`` forces it open or disables it (every call passes, nothing counted).
    """

    failure_rate: float = 0.5
    slow_call_rate: float = 1.0
    slow_call_duration: float = 10.0
    minimum_calls: int = 10
    window: float = 60.0
    buckets: int = 10
    open_for: float = 30.0
    half_open_probes: int = 3
    probe_lease: float = 60.0
    mode: BreakerMode = "normal"

    def __post_init__(self) -> None:
        _rate("failure_rate", self.failure_rate)
        _rate("slow_call_rate", self.slow_call_rate)
        _seconds("slow_call_duration", self.slow_call_duration)
        _count("minimum_calls", self.minimum_calls)
        _seconds("window", self.window)
        _count("buckets", self.buckets)
        _seconds("open_for", self.open_for)
        _count("half_open_probes", self.half_open_probes)
        _seconds("probe_lease", self.probe_lease)
        if self.mode not in ("normal", "forced_open", "disabled"):
            raise ValueError(f"mode must be normal, forced_open or disabled, got {self.mode!r}")


@dataclass(frozen=True, slots=True)
class CapConfig:
    """At most ``calls`` per ``period`` for the dependency, plus ``burst`` at once.

    ``burst`` defaults to the default lane's concurrency (15): without it the
    cap spaces calls strictly (one every 200 ms at 300 a minute), so a page
    making six calls at once would wait a second for its slots.

    Shared by every process through one store script on the server's clock
    (GCRA: a call reserves the next slot and waits for it). A call waits at
    most ``max_wait`` (and never past its deadline) for its slot, else it is
    refused with `CapExceeded`. ``fail_open``: when the store is down, calls
    pass uncapped (counted) instead of being refused.
    """

    calls: int = 300
    period: float = 60.0
    burst: int = 15
    max_wait: float = 10.0
    fail_open: bool = True

    def __post_init__(self) -> None:
        _count("calls", self.calls)
        _seconds("period", self.period)
        _count("burst", self.burst, low=0)
        _seconds("max_wait", self.max_wait, zero=True)


@dataclass(frozen=True, slots=True)
class BulkheadConfig:
    """Per process: ``max_concurrent`` calls at once, ``max_queue`` waiting, each ``max_wait`` s."""

    max_concurrent: int = 15
    max_queue: int = 1000
    max_wait: float = 30.0

    def __post_init__(self) -> None:
        _count("max_concurrent", self.max_concurrent)
        _count("max_queue", self.max_queue, low=0)
        _seconds("max_wait", self.max_wait, zero=True)


@dataclass(frozen=True, slots=True)
class LaneConfig:
    """A lane of calls: its own bulkhead, attempt timeout and total deadline."""

    bulkhead: BulkheadConfig = field(default_factory=BulkheadConfig)
    timeout: float = 30.0
    deadline: float = 60.0

    def __post_init__(self) -> None:
        _seconds("timeout", self.timeout)
        _seconds("deadline", self.deadline)


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """Upstream tokens: fetched within ``auth_timeout``, kept ``ttl``, renewed ``buffer`` early."""

    auth_timeout: float = 30.0
    ttl: float = 720.0
    refresh_buffer: float = 60.0

    def __post_init__(self) -> None:
        _seconds("auth_timeout", self.auth_timeout)
        _seconds("ttl", self.ttl)
        _seconds("refresh_buffer", self.refresh_buffer, zero=True)
        if self.refresh_buffer >= self.ttl:
            raise ValueError("refresh_buffer must be shorter than ttl")


def _long_running() -> LaneConfig:
    return LaneConfig(BulkheadConfig(max_concurrent=22), timeout=600.0, deadline=600.0)


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    """Everything one dependency's governor does; ``cap=None`` leaves it uncapped."""

    name: str
    lane: LaneConfig = field(default_factory=LaneConfig)
    long_running: LaneConfig = field(default_factory=_long_running)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    cap: CapConfig | None = field(default_factory=CapConfig)
    token: TokenConfig = field(default_factory=TokenConfig)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"a dependency name is letters, digits and _, got {self.name!r}")

    @classmethod
    def from_env(
        cls, name: str, environ: Mapping[str, str] | None = None, **defaults: object
    ) -> GovernorConfig:
        """``name``'s settings from ``<NAME>_*`` variables over ``defaults`` (see `ENV_VARIABLES`).

        A bad value raises ``ValueError`` naming the variable (never echoing
        other settings), so a service refuses to start on it.
        """
        env = os.environ if environ is None else environ
        base = cls(name, **defaults)  # type: ignore[arg-type]
        prefix = name.upper()
        values: dict[str, float] = {}
        for suffix, kind in ENV_VARIABLES.items():
            raw = env.get(f"{prefix}_{suffix}")
            if raw is None or raw.strip() == "":
                continue
            try:
                number = int(raw) if kind == "int" else float(raw)
            except ValueError:
                msg = f"{prefix}_{suffix} must be {'an integer' if kind == 'int' else 'a number'}"
                raise ValueError(msg) from None
            values[suffix] = number / 1000 if suffix.endswith("_MS") else number
        try:
            return _apply(base, values)
        except ValueError as exc:
            # Name the variable: the first one that fails on its own.
            culprit = next((key for key in values if not _valid(base, {key: values[key]})), None)
            where = f"{prefix}_{culprit}" if culprit else f"{prefix}_*"
            raise ValueError(f"{where}: {exc}") from None

    def describe(self) -> dict[str, object]:
        """The effective settings by environment variable name (for ``check`` commands)."""
        prefix = self.name.upper()
        lane, long, cap = self.lane, self.long_running, self.cap
        shown: dict[str, object] = {
            "QUEUE_CONCURRENCY": lane.bulkhead.max_concurrent,
            "QUEUE_MAX_QUEUE": lane.bulkhead.max_queue,
            "QUEUE_MAX_WAIT_MS": round(lane.bulkhead.max_wait * 1000),
            "QUEUE_TIMEOUT_MS": round(lane.timeout * 1000),
            "QUEUE_DEADLINE_MS": round(lane.deadline * 1000),
            "QUEUE_LONG_RUNNING_CONCURRENCY": long.bulkhead.max_concurrent,
            "QUEUE_LONG_RUNNING_TIMEOUT_MS": round(long.timeout * 1000),
            "QUEUE_INTERVAL_CAP": cap.calls if cap else 0,
            "QUEUE_INTERVAL_MS": round(cap.period * 1000) if cap else 0,
            "QUEUE_INTERVAL_BURST": cap.burst if cap else 0,
            "RETRY_ATTEMPTS": self.retry.attempts,
            "BREAKER_FAILURE_RATE": self.breaker.failure_rate,
            "BREAKER_MINIMUM_CALLS": self.breaker.minimum_calls,
            "BREAKER_OPEN_MS": round(self.breaker.open_for * 1000),
            "AUTH_TIMEOUT_MS": round(self.token.auth_timeout * 1000),
            "TOKEN_TTL_MS": round(self.token.ttl * 1000),
            "TOKEN_REFRESH_BUFFER_MS": round(self.token.refresh_buffer * 1000),
        }
        return {f"{prefix}_{key}": value for key, value in shown.items()}


#: The variables `GovernorConfig.from_env` reads, after ``<NAME>_`` (``_MS`` ones in ms).
#: ``QUEUE_INTERVAL_CAP=0`` turns the shared cap off.
ENV_VARIABLES: Mapping[str, Literal["int", "float"]] = {
    "QUEUE_CONCURRENCY": "int",
    "QUEUE_MAX_QUEUE": "int",
    "QUEUE_MAX_WAIT_MS": "float",
    "QUEUE_TIMEOUT_MS": "float",
    "QUEUE_DEADLINE_MS": "float",
    "QUEUE_LONG_RUNNING_CONCURRENCY": "int",
    "QUEUE_LONG_RUNNING_TIMEOUT_MS": "float",
    "QUEUE_INTERVAL_CAP": "int",
    "QUEUE_INTERVAL_MS": "float",
    "QUEUE_INTERVAL_BURST": "int",
    "RETRY_ATTEMPTS": "int",
    "BREAKER_FAILURE_RATE": "float",
    "BREAKER_MINIMUM_CALLS": "int",
    "BREAKER_OPEN_MS": "float",
    "AUTH_TIMEOUT_MS": "float",
    "TOKEN_TTL_MS": "float",
    "TOKEN_REFRESH_BUFFER_MS": "float",
}


def _valid(base: GovernorConfig, values: Mapping[str, float]) -> bool:
    try:
        _apply(base, values)
    except ValueError:
        return False
    return True


def _apply(base: GovernorConfig, v: Mapping[str, float]) -> GovernorConfig:
    def get(key: str, current: float) -> float:
        return v.get(key, current)

    lane, long = base.lane, base.long_running
    lane = LaneConfig(
        BulkheadConfig(
            max_concurrent=int(get("QUEUE_CONCURRENCY", lane.bulkhead.max_concurrent)),
            max_queue=int(get("QUEUE_MAX_QUEUE", lane.bulkhead.max_queue)),
            max_wait=get("QUEUE_MAX_WAIT_MS", lane.bulkhead.max_wait),
        ),
        timeout=get("QUEUE_TIMEOUT_MS", lane.timeout),
        deadline=get("QUEUE_DEADLINE_MS", lane.deadline),
    )
    long_timeout = get("QUEUE_LONG_RUNNING_TIMEOUT_MS", long.timeout)
    long = LaneConfig(
        replace(
            long.bulkhead,
            max_concurrent=int(get("QUEUE_LONG_RUNNING_CONCURRENCY", long.bulkhead.max_concurrent)),
        ),
        timeout=long_timeout,
        deadline=max(long.deadline, long_timeout),
    )
    cap = base.cap
    calls = int(get("QUEUE_INTERVAL_CAP", cap.calls if cap else 0))
    if calls == 0:
        cap = None
    else:
        cap = replace(
            cap or CapConfig(),
            calls=calls,
            period=get("QUEUE_INTERVAL_MS", cap.period if cap else 60.0),
            burst=int(get("QUEUE_INTERVAL_BURST", cap.burst if cap else 0)),
        )
    breaker = replace(
        base.breaker,
        failure_rate=get("BREAKER_FAILURE_RATE", base.breaker.failure_rate),
        minimum_calls=int(get("BREAKER_MINIMUM_CALLS", base.breaker.minimum_calls)),
        open_for=get("BREAKER_OPEN_MS", base.breaker.open_for),
    )
    token = TokenConfig(
        auth_timeout=get("AUTH_TIMEOUT_MS", base.token.auth_timeout),
        ttl=get("TOKEN_TTL_MS", base.token.ttl),
        refresh_buffer=get("TOKEN_REFRESH_BUFFER_MS", base.token.refresh_buffer),
    )
    retry = replace(base.retry, attempts=int(get("RETRY_ATTEMPTS", base.retry.attempts)))
    return replace(
        base, lane=lane, long_running=long, cap=cap, breaker=breaker, token=token, retry=retry
    )
