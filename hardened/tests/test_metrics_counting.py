"""`fast_counter`: exported like a prometheus_client Counter, counted without losses."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hardened.observability.metrics import counter, fast_counter


def _exposition(registry: CollectorRegistry) -> list[str]:
    """Text exposition without the ``_created`` values (creation times differ)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line.rsplit(" ", 1)[0] if "_created{" in line else line for line in lines]


def test_exposition_matches_a_counter() -> None:
    """The same increments give a Counter's text exposition, _created series included."""
    plain, fast = CollectorRegistry(), CollectorRegistry()
    reference = counter("demo_total", "Demo decisions.", ["policy", "outcome"], registry=plain)
    counting = fast_counter("demo_total", "Demo decisions.", ["policy", "outcome"], registry=fast)
    for labels, times in ((("ip", "allowed"), 3), (("ip", "limited"), 1), (("user", "allowed"), 0)):
        reference.labels(*labels).inc(0)
        inc = counting.incrementer(*labels)
        for _ in range(times):
            reference.labels(*labels).inc()
            inc()
    assert _exposition(fast) == _exposition(plain)
    sample = fast.get_sample_value
    assert sample("hardened_demo_total", {"policy": "ip", "outcome": "allowed"}) == 3
    assert sample("hardened_demo_total", {"policy": "user", "outcome": "allowed"}) == 0


def test_reads_do_not_disturb_counts() -> None:
    """Scrapes and value() between increments never change the counts they report."""
    registry = CollectorRegistry()
    counting = fast_counter("reads_total", "Reads.", ["k"], registry=registry)
    inc = counting.incrementer("a")
    for expected in range(1, 6):
        inc()
        assert counting.value("a") == expected
        assert registry.get_sample_value("hardened_reads_total", {"k": "a"}) == expected
    assert counting.value("never") == 0


def test_threads_lose_no_increment() -> None:
    """Eight threads bumping one label set concurrently, with scrapes in between, lose nothing."""
    registry = CollectorRegistry()
    counting = fast_counter("threads_total", "Threads.", ["k"], registry=registry)
    per_thread, threads = 20_000, 8
    start = threading.Barrier(threads + 1)

    def bump() -> None:
        inc = counting.incrementer("a")
        start.wait()
        for _ in range(per_thread):
            inc()

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    while any(worker.is_alive() for worker in workers):
        registry.get_sample_value("hardened_threads_total", {"k": "a"})
    for worker in workers:
        worker.join()
    assert counting.value("a") == per_thread * threads


def test_same_name_is_one_collector_and_labels_are_checked() -> None:
    """Asking twice returns the same collector; a wrong label count or a Counter clash fails."""
    registry = CollectorRegistry()
    first = fast_counter("once_total", "Once.", ["k"], registry=registry)
    assert fast_counter("once", "Once.", ["k"], registry=registry) is first
    with pytest.raises(ValueError, match="takes labels"):
        first.incrementer("a", "b")
    with pytest.raises(TypeError, match="already registered"):
        counter("once_total", "Once.", ["k"], registry=registry)
