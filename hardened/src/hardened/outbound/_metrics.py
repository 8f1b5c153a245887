"""The governors' metrics, labelled by dependency (a configured name, never a URL).

Queue depth and in-flight gauges are read from the bulkheads at scrape
time (no cost per call); hot counters are `fast_counter` s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from hardened.observability import gauge, histogram
from hardened.observability.metrics import fast_counter

if TYPE_CHECKING:
    from collections.abc import Callable

    from hardened.outbound._bulkhead import Bulkhead

__all__ = ["Bound", "bind"]

_log = structlog.get_logger("hardened.outbound")

_QUEUE_DEPTH = gauge(
    "outbound_queue_depth", "Calls waiting for a bulkhead permit.", ("dependency", "lane")
)
_IN_FLIGHT = gauge("outbound_in_flight", "Calls holding a bulkhead permit.", ("dependency", "lane"))
_QUEUE_WAIT = histogram(
    "outbound_queue_wait_seconds",
    "Time queued calls waited for a bulkhead permit.",
    ("dependency", "lane"),
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
)
_ATTEMPT = histogram(
    "outbound_attempt_seconds",
    "Duration of attempts that got an answer (any status).",
    ("dependency",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_TIMEOUTS = fast_counter("outbound_timeouts_total", "Attempts cut by a timeout.", ("dependency",))
_REJECTIONS = fast_counter(
    "outbound_rejections_total",
    "Calls refused or given up by the governor, by reason.",
    ("dependency", "reason"),
)
_RETRIES = fast_counter("outbound_retries_total", "Retries scheduled.", ("dependency",))
_TRANSITIONS = fast_counter(
    "outbound_breaker_transitions_total", "Circuit breaker state changes.", ("dependency", "to")
)
_STATE = gauge(
    "outbound_breaker_open",
    "1 while the breaker refuses calls (open or forced open), else 0.",
    ("dependency",),
)
REAUTHS = fast_counter(
    "outbound_reauths_total",
    "Token fetches because the upstream rejected a token.",
    ("dependency",),
)


class Bound:
    """One dependency's metric children, resolved once."""

    __slots__ = ("_attempt", "_name", "_retried", "_state", "_timed_out")

    def __init__(self, name: str) -> None:
        self._name = name
        self._attempt = _ATTEMPT.labels(name).observe
        self._timed_out = _TIMEOUTS.incrementer(name)
        self._retried = _RETRIES.incrementer(name)
        self._state = _STATE.labels(name)
        self._state.set(0)

    def attempt(self, seconds: float) -> None:
        self._attempt(seconds)

    def timed_out(self) -> None:
        self._timed_out()

    def retried(self) -> None:
        self._retried()

    def reject(self, reason: str) -> None:
        _REJECTIONS.incrementer(self._name, reason)()

    def transition(self, key: str, old: str, new: str) -> None:
        _TRANSITIONS.incrementer(self._name, new)()
        self._state.set(1 if new in ("open", "forced_open") else 0)
        _log.warning("outbound.breaker", dependency=self._name, key=key, old=old, new=new)

    def queue_wait(self, lane: str) -> Callable[[float], None]:
        return _QUEUE_WAIT.labels(self._name, lane).observe

    def watch(self, lane: str, bulkhead: Bulkhead) -> None:
        _QUEUE_DEPTH.labels(self._name, lane).set_function(lambda: bulkhead.queued)
        _IN_FLIGHT.labels(self._name, lane).set_function(lambda: bulkhead.in_flight)


def bind(name: str) -> Bound:
    """The metric children of dependency ``name``."""
    return Bound(name)
