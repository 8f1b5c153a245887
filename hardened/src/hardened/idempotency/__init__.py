"""Exactly-once execution by idempotency key: leases, fencing, recovery points, replays.

One backend contract (``claim``, ``heartbeat``, ``checkpoint``, ``complete``,
``release``) with the same semantics on every backend: `StoreBackend` over
`MemoryStore` or `RedisStore` (one round trip per claim and per replay).
`Idempotent` (``operation()``, giving an `IdempotentRun`, and the
``@idempotent`` decorator) runs internal operations once per key with leases,
heartbeats, fencing and recovery points. `IdempotencyMiddleware` (pure ASGI)
and the `idempotency_key` FastAPI dependency are the HTTP front, per the IETF
Idempotency-Key draft (the idempotency middleware guide has its semantics).
Both take their lease settings from `LeaseConfig`. Keys are scoped and hashed
before they reach a store or a log line.

`SqlBackend` (PostgreSQL, SQLite) adds the transactional mode (the record
commits with the business effect: ``complete_in``) and `run_phases`
(recovery points around external calls). They are imported on first access,
so this package works without the ``postgres``/``sqlite`` extras.
"""

from typing import TYPE_CHECKING

from hardened._extras import lazy_exports
from hardened.idempotency._config import (
    DEFAULT_REPLAY_HEADERS,
    HttpIdempotencyConfig,
    IdempotentRoute,
)
from hardened.idempotency._contracts import (
    Claim,
    Claimed,
    Completed,
    IdempotencyBackend,
    InFlight,
    Mismatch,
)
from hardened.idempotency._errors import (
    IdempotencyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyResponseNotKept,
    IdempotencyUnguarded,
    LeaseLost,
)
from hardened.idempotency._fastapi import IdempotencyKey, idempotency_key
from hardened.idempotency._guard import (
    IdempotencyConfig,
    Idempotent,
    IdempotentRun,
    current_operation,
    idempotent,
)
from hardened.idempotency._keys import (
    MAX_KEY_LENGTH,
    fingerprint,
    fingerprints,
    key_hash_for_logs,
    scoped_key,
    validate_key,
)
from hardened.idempotency._lease import LeaseConfig
from hardened.idempotency._middleware import IdempotencyMiddleware
from hardened.idempotency._request import ScopeOf, scope_from_credentials
from hardened.idempotency._store import StoreBackend
from hardened.idempotency._wire import decode_response, encode_response

if TYPE_CHECKING:
    from hardened.idempotency._phases import (
        ExternalPhase,
        LocalPhase,
        Phase,
        PhaseState,
        run_phases,
    )
    from hardened.idempotency._sql import SqlBackend, idempotency_table

__all__ = [
    "DEFAULT_REPLAY_HEADERS",
    "MAX_KEY_LENGTH",
    "Claim",
    "Claimed",
    "Completed",
    "ExternalPhase",
    "HttpIdempotencyConfig",
    "IdempotencyBackend",
    "IdempotencyConfig",
    "IdempotencyInFlight",
    "IdempotencyKey",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMissing",
    "IdempotencyKeyReused",
    "IdempotencyMiddleware",
    "IdempotencyResponseNotKept",
    "IdempotencyUnguarded",
    "Idempotent",
    "IdempotentRoute",
    "IdempotentRun",
    "InFlight",
    "LeaseConfig",
    "LeaseLost",
    "LocalPhase",
    "Mismatch",
    "Phase",
    "PhaseState",
    "ScopeOf",
    "SqlBackend",
    "StoreBackend",
    "current_operation",
    "decode_response",
    "encode_response",
    "fingerprint",
    "fingerprints",
    "idempotency_key",
    "idempotency_table",
    "idempotent",
    "key_hash_for_logs",
    "run_phases",
    "scope_from_credentials",
    "scoped_key",
    "validate_key",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "SqlBackend": "_sql",
        "idempotency_table": "_sql",
        "ExternalPhase": "_phases",
        "LocalPhase": "_phases",
        "Phase": "_phases",
        "PhaseState": "_phases",
        "run_phases": "_phases",
    },
)
