"""Prometheus metric helpers and the naming convention.

Names are ``hardened_<component>_<what>`` with the unit as suffix
(``_total`` for counters, ``_seconds`` for durations), labels low-cardinality
only (policy, outcome, route template; never a user, key or IP). Getting a
metric twice returns the same collector, so middleware can be instantiated
many times (tests, several apps in one process) without duplicate-registration
errors.

`fast_counter` is the same counter for hot paths: increments are plain
in-process counts, exported at scrape time (see `CountingCounter`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from hardened.observability._counting import CountingCounter

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["METRIC_PREFIX", "counter", "fast_counter", "gauge", "histogram"]

METRIC_PREFIX = "hardened_"

_M = TypeVar("_M", Counter, CountingCounter, Gauge, Histogram)
_lock = threading.Lock()
_made: dict[tuple[int, str], object] = {}


def _get(
    kind: type[_M],
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    registry: CollectorRegistry | None,
    **kwargs: object,
) -> _M:
    if not name.startswith(METRIC_PREFIX):
        name = METRIC_PREFIX + name
    reg = registry if registry is not None else REGISTRY
    key = (id(reg), name)
    with _lock:
        existing = _made.get(key)
        if existing is None:
            existing = kind(name, documentation, labelnames, registry=reg, **kwargs)  # type: ignore[arg-type]
            _made[key] = existing
    if not isinstance(existing, kind):
        msg = f"metric {name} already registered as {type(existing).__name__}"
        raise TypeError(msg)
    return existing


def counter(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
) -> Counter:
    """A counter named by the convention (``_total`` is added by the client)."""
    return _get(Counter, name.removesuffix("_total"), documentation, labelnames, registry)


def fast_counter(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
) -> CountingCounter:
    """A counter exported exactly as `counter` would, for paths where its lock shows."""
    return _get(CountingCounter, name.removesuffix("_total"), documentation, labelnames, registry)


def gauge(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
) -> Gauge:
    """A gauge named by the convention."""
    return _get(Gauge, name, documentation, labelnames, registry)


def histogram(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> Histogram:
    """A histogram named by the convention; durations end in ``_seconds``."""
    return _get(Histogram, name, documentation, labelnames, registry, buckets=tuple(buckets))
