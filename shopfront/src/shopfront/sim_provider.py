"""The SIM provider's activation API, called with a deadline and an idempotency key.

Why the key: the activation flow checkpoints *after* the provider answers, so a
crash between the provider's answer and the checkpoint repeats the call on
retry. The provider deduplicates on ``Idempotency-Key`` (derived from the
shop's own key), so the repeat returns the first activation instead of
activating twice, and so the ``sim`` governor may retry the call itself
(within its deadline and retry budget). A refused connection, a timeout or
a 5xx after the retries is `DependencyUnavailable` (503, retry later with
the same key), as is any refusal of the governor (503 ``outbound.*``:
breaker open, cap, bulkhead); a 4xx is the provider refusing this SIM (422,
final).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import structlog

from hardened.errors import DependencyUnavailable, ValidationFailed
from hardened.outbound import GovernedTransport, Governor

__all__ = ["Activation", "SimProvider", "SimRefused"]

_log = structlog.get_logger("shopfront.sim_provider")


class SimRefused(ValidationFailed):
    """The provider refused to activate this SIM (a final answer, not an outage)."""

    code = "sim.refused"


@dataclass(frozen=True, slots=True)
class Activation:
    provider_ref: str
    iccid: str


class SimProvider:
    """A small client over one pooled ``httpx.AsyncClient`` governed by the ``sim`` governor."""

    def __init__(self, base_url: str | None, governor: Governor) -> None:
        self._base_url = base_url
        self._client = httpx.AsyncClient(
            base_url=base_url or "http://sim-provider.invalid",
            transport=GovernedTransport(governor),
            # httpx's timeouts a second past the attempt's, so the governor's (typed) fires first.
            timeout=httpx.Timeout(governor.config.lane.timeout + 1),
        )

    async def activate(self, *, iccid: str, plan: str, idempotency_key: str) -> Activation:
        """Activate ``iccid`` on ``plan``; the same key always names the same activation."""
        if self._base_url is None:
            raise DependencyUnavailable(
                "SIM activation is not configured.", code="sim.not_configured", retry_after=60
            )
        try:
            resp = await self._client.post(
                "/activations",
                json={"iccid": iccid, "plan": plan},
                headers={"idempotency-key": idempotency_key},
            )
        except httpx.HTTPError as exc:
            _log.warning("sim_provider.unreachable", error=type(exc).__name__)
            raise DependencyUnavailable(
                "The SIM provider did not answer; retry with the same key.",
                code="sim.provider_unavailable",
                retry_after=5,
            ) from None
        if resp.status_code >= 500 or resp.status_code == 429:
            _log.warning("sim_provider.failed", status=resp.status_code)
            raise DependencyUnavailable(
                "The SIM provider failed; retry with the same key.",
                code="sim.provider_unavailable",
                retry_after=5,
            )
        if resp.status_code >= 400:
            raise SimRefused("The SIM provider refused this activation.")
        body = resp.json()
        return Activation(provider_ref=str(body["id"]), iccid=str(body["iccid"]))

    async def aclose(self) -> None:
        await self._client.aclose()
