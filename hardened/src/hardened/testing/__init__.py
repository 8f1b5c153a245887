"""Test helpers for services built on hardened (import only from tests)."""

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
    "Probe",
    "RouteKey",
    "app_routes",
    "assert_isolated",
    "tenant_models_without_mixin",
]
