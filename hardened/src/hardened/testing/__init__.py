"""Test helpers for services built on hardened (import only from tests)."""

from hardened.testing._clock import ManualClock
from hardened.testing._databases import temporary_database
from hardened.testing._redis import scratch_redis_store
from hardened.testing.isolation import (
    IsolationFailure,
    Probe,
    RouteKey,
    app_routes,
    assert_isolated,
    tenant_models_without_mixin,
)

__all__ = [
    "IsolationFailure",
    "ManualClock",
    "Probe",
    "RouteKey",
    "app_routes",
    "assert_isolated",
    "scratch_redis_store",
    "temporary_database",
    "tenant_models_without_mixin",
]
