"""`CountingCounter`: a Prometheus counter for hot paths, counted in process.

Why: a `prometheus_client.Counter` increment takes a lock and runs a few
Python frames (about 10 % of a `MemoryStore` rate-limit decision). Here each
label set gets an `itertools.count` and an increment is one call of its
``__next__`` (C code that never releases the GIL, so it is atomic across
threads in CPython: no count is lost, unlike ``d[k] += 1``, which can drop
one when two threads bump the same label set at once). The counts are read at
scrape time by `collect`, so the exported value is never behind.

Exported exactly like a `Counter` built with the same name, documentation and
labels: one ``counter`` family with ``<name>_total`` per label set and
``<name>_created`` (the time the label set was first asked for, as a Counter
child's). A label set appears, at 0, as soon as an incrementer for it exists.
``_created`` follows the ``PROMETHEUS_DISABLE_CREATED_SERIES`` environment
variable as read at import; the runtime ``disable_created_metrics()`` switch
of ``prometheus_client`` is not seen (it lives in a private module global).
Only plain counting by 1: no ``inc(amount)``, exemplars or multiprocess mode.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from prometheus_client.registry import CollectorRegistry

__all__ = ["CountingCounter"]

# The same switch, read the same way, as prometheus_client's own _created series.
_USE_CREATED = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
    "true",
    "1",
    "t",
)


class _Series:
    __slots__ = ("count", "created", "reads")

    def __init__(self) -> None:
        self.count = itertools.count()
        self.created = time.time()
        # collect() reads a count with next() too; those reads are subtracted.
        self.reads = 0


class CountingCounter(Collector):
    """A labelled counter whose increments are ``itertools.count`` steps, exported on scrape."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None,
    ) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def incrementer(self, *labelvalues: str) -> Callable[[], object]:
        """The increment-by-one callable for one label set (resolve once, call often)."""
        if len(labelvalues) != len(self._labelnames):
            msg = f"{self._name} takes labels {self._labelnames}, got {labelvalues!r}"
            raise ValueError(msg)
        key = tuple(str(v) for v in labelvalues)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
        return series.count.__next__

    def value(self, *labelvalues: str) -> int:
        """The current count for one label set (0 if it was never asked for)."""
        with self._lock:
            series = self._series.get(tuple(str(v) for v in labelvalues))
            return 0 if series is None else self._read(series)

    @staticmethod
    def _read(series: _Series) -> int:
        # next() returns how many steps came before: increments plus earlier reads.
        value = next(series.count) - series.reads
        series.reads += 1
        return value

    def describe(self) -> Iterator[CounterMetricFamily]:
        """The family without samples: lets the registry check names without a scrape."""
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One counter family with the live count of every label set."""
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            for key, series in self._series.items():
                created = series.created if _USE_CREATED else None
                family.add_metric(key, self._read(series), created=created)
        yield family
