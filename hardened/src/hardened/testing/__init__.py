"""Test helpers for services built on hardened (import only from tests)."""

from hardened.testing._clock import ManualClock
from hardened.testing._databases import temporary_database
from hardened.testing._fields import (
    TextInput,
    TextInputFailure,
    TextInputReport,
    assert_text_inputs_safe,
    check_text_inputs,
)
from hardened.testing._redis import PrivateRedis, scratch_redis_store
from hardened.testing._serve import serve_app
from hardened.testing.authorization import (
    AuthorizationFailure,
    Caller,
    Cell,
    Matrix,
    assert_authorization,
    declared_requirements,
)
from hardened.testing.isolation import (
    IsolationFailure,
    Probe,
    RouteKey,
    app_routes,
    assert_isolated,
    tenant_models_without_mixin,
)

__all__ = [
    "AuthorizationFailure",
    "Caller",
    "Cell",
    "IsolationFailure",
    "ManualClock",
    "Matrix",
    "PrivateRedis",
    "Probe",
    "RouteKey",
    "TextInput",
    "TextInputFailure",
    "TextInputReport",
    "app_routes",
    "assert_authorization",
    "assert_isolated",
    "assert_text_inputs_safe",
    "check_text_inputs",
    "declared_requirements",
    "scratch_redis_store",
    "serve_app",
    "temporary_database",
    "tenant_models_without_mixin",
]
