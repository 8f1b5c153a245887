"""Metrics and health: every refusal is counted, every dependency probed."""

from hardened.observability._health import CheckResult, Health, HealthCheck, Readiness, check
from hardened.observability.metrics import METRIC_PREFIX, counter, gauge, histogram

__all__ = [
    "METRIC_PREFIX",
    "CheckResult",
    "Health",
    "HealthCheck",
    "Readiness",
    "check",
    "counter",
    "gauge",
    "histogram",
]
