"""The SIM provider client against the fake over a real socket: deadlines and error mapping."""

import pytest

from fake_sim import running_fake_sim
from hardened.errors import DependencyUnavailable
from hardened.outbound import BulkheadConfig, Governor, GovernorConfig, LaneConfig
from shopfront.sim_provider import SimProvider, SimRefused

pytestmark = pytest.mark.anyio


def _governor(timeout: float) -> Governor:
    """The ``sim`` governor with one attempt of ``timeout`` seconds (no retries, no cap)."""
    lane = LaneConfig(BulkheadConfig(), timeout=timeout, deadline=timeout)
    return Governor(GovernorConfig("sim", lane=lane, cap=None))


async def test_same_key_names_the_same_activation() -> None:
    """A repeated call with one key returns the first activation; the provider activated once."""
    async with running_fake_sim() as fake:
        client = SimProvider(fake.url, _governor(2))
        first = await client.activate(iccid="8981", plan="basic", idempotency_key="k1")
        again = await client.activate(iccid="8981", plan="basic", idempotency_key="k1")
        await client.aclose()
    assert first == again
    assert (fake.calls, fake.by_iccid) == (2, {"8981": 1})


async def test_outages_are_503_and_refusals_422() -> None:
    """A 5xx or a hung provider is a retryable 503 within the deadline; a 4xx is a final 422."""
    async with running_fake_sim() as fake:
        # One second, not less: a shorter deadline also catches loop lag on a
        # loaded CI machine and turns the final 4xx into a spurious timeout.
        client = SimProvider(fake.url, _governor(1.0))
        fake.fail_next = 1
        with pytest.raises(DependencyUnavailable) as failed:
            await client.activate(iccid="1", plan="p", idempotency_key="k")
        fake.hang = True
        with pytest.raises(DependencyUnavailable):
            await client.activate(iccid="1", plan="p", idempotency_key="k")
        fake.hang = False
        with pytest.raises(SimRefused):
            await client.activate(iccid="1", plan="p", idempotency_key="")
        await client.aclose()
    assert failed.value.code == "sim.provider_unavailable"
    assert fake.by_iccid == {}


async def test_unconfigured_provider_is_503() -> None:
    """Without a provider URL activation is a clear 503, not a crash."""
    client = SimProvider(None, _governor(1.0))
    with pytest.raises(DependencyUnavailable) as refused:
        await client.activate(iccid="1", plan="p", idempotency_key="k")
    await client.aclose()
    assert refused.value.code == "sim.not_configured"
