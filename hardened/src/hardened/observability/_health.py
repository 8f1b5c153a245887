"""Liveness and readiness.

Liveness says only that the process answers (a restart would not help
otherwise). Readiness runs every check concurrently, each under its own
timeout, so one hung dependency cannot hang the probe: a failing *critical*
check makes the service unavailable (503); a failing non-critical one reports
``degraded`` with 200, because the service still serves (e.g. a cache that
fails open). A `Health` given a `hardened.http.Drain` reports ``draining``
with 503 as soon as the drain starts, without running the checks: the process
is on its way out, and the load balancer must stop sending it work while it
still answers what it already has.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from hardened.http import Drain

__all__ = ["CheckResult", "Health", "HealthCheck", "Readiness", "check"]

Status = Literal["ok", "degraded", "unavailable", "draining"]


class HealthCheck(Protocol):
    """A named probe; raising (or timing out) means the dependency is down."""

    @property
    def name(self) -> str: ...
    @property
    def critical(self) -> bool: ...

    async def __call__(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _FnCheck:
    name: str
    probe: Callable[[], Awaitable[Any]]
    critical: bool = True

    async def __call__(self) -> None:
        await self.probe()


def check(name: str, probe: Callable[[], Awaitable[Any]], *, critical: bool = True) -> HealthCheck:
    """Make a check from any awaitable probe (``engine ping``, ``store.ping``)."""
    return _FnCheck(name, probe, critical)


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    critical: bool
    duration_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Readiness:
    status: Status
    checks: tuple[CheckResult, ...]

    @property
    def http_status(self) -> int:
        return 503 if self.status in {"unavailable", "draining"} else 200

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checks": {
                r.name: {
                    "status": "ok" if r.ok else "failing",
                    "critical": r.critical,
                    "duration_ms": round(r.duration_ms, 2),
                    **({"error": r.error} if r.error else {}),
                }
                for r in self.checks
            },
        }


@dataclass(slots=True)
class Health:
    """The set of readiness checks of one service, and the drain that overrides them."""

    checks: Sequence[HealthCheck] = field(default_factory=list)
    timeout: float = 2.0
    drain: Drain | None = None

    async def _run(self, probe: HealthCheck) -> CheckResult:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await probe()
        except TimeoutError:
            error: str | None = f"timed out after {self.timeout}s"
        except Exception as exc:  # noqa: BLE001 - any failure is "down", reported by type only
            error = type(exc).__name__
        else:
            error = None
        elapsed = (time.perf_counter() - start) * 1000
        return CheckResult(probe.name, error is None, probe.critical, elapsed, error)

    async def ready(self) -> Readiness:
        """Run every check concurrently and summarise (``draining`` once the drain started)."""
        if self.drain is not None and self.drain.draining:
            return Readiness("draining", ())
        results = tuple(await asyncio.gather(*(self._run(c) for c in self.checks)))
        if any(not r.ok and r.critical for r in results):
            status: Status = "unavailable"
        elif any(not r.ok for r in results):
            status = "degraded"
        else:
            status = "ok"
        return Readiness(status, results)
