"""shopfront's outbound dependencies, each behind one `hardened.outbound.Governor`.

Every provider is configured by the ``<DEP>_*`` variables of
`hardened.outbound.ENV_VARIABLES` (``CRM_QUEUE_CONCURRENCY``,
``SIM_QUEUE_TIMEOUT_MS`` …) over the defaults below, validated when the app
is built (a bad value stops the start naming the variable) and shown by
``shopfront check``. Caps are shared by every worker through the service's
store (Redis when ``REDIS_URL`` is set).

Defaults beyond the library's (15 at once, 300 a minute, 30 s per attempt,
a long-running lane of 22 with 10 min): the CRM serves page reads, so an
attempt gets 2 s and a call 5 s in all (stale cache entries cover the
rest), and its cap is the CRM's 600 a minute with a burst of 30 (a cold
page makes six reads at once); a SIM activation gets 5 s per attempt and 15 s in all (it carries an
idempotency key, so it may be retried); a KYC verification 5 s per attempt and
10 s in all (a staff member waits for it); billing and the SMS gateway keep the
library's defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened.config import Check
from hardened.outbound import BulkheadConfig, CapConfig, GovernorConfig, Governors, LaneConfig

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hardened.stores import AtomicScripts

__all__ = ["DEPENDENCIES", "build_governors", "governor_checks"]

#: Each dependency's defaults (the environment overrides them).
DEPENDENCIES: Mapping[str, Mapping[str, object]] = {
    "crm": {
        "lane": LaneConfig(BulkheadConfig(), timeout=2.0, deadline=5.0),
        "cap": CapConfig(calls=600, period=60.0, burst=30),
    },
    "sim": {"lane": LaneConfig(BulkheadConfig(), timeout=5.0, deadline=15.0)},
    "billing": {},
    "sms": {},
    "kyc": {"lane": LaneConfig(BulkheadConfig(), timeout=5.0, deadline=10.0)},
}


def _configs(environ: Mapping[str, str] | None) -> list[GovernorConfig]:
    return [
        GovernorConfig.from_env(name, environ, **defaults)
        for name, defaults in DEPENDENCIES.items()
    ]


def build_governors(store: AtomicScripts, environ: Mapping[str, str] | None = None) -> Governors:
    """One governor per dependency; raises ``ValueError`` naming a bad variable."""
    governors = Governors(store)
    for config in _configs(environ):
        governors.add(config)
    return governors


def governor_checks(environ: Mapping[str, str] | None = None) -> list[Check]:
    """``shopfront check`` lines: each dependency's effective settings, or what is wrong."""
    try:
        configs = _configs(environ)
    except ValueError as exc:
        return [Check("outbound settings are valid", ok=False, detail=str(exc))]
    return [
        Check(
            f"outbound {config.name}",
            ok=True,
            detail=" ".join(f"{key}={value}" for key, value in config.describe().items()),
        )
        for config in configs
    ]
