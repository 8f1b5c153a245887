import asyncio

import pytest

from hardened.http import Drain
from hardened.observability import Health, check


async def _ok() -> None:
    return None


async def _boom() -> None:
    raise ConnectionError


async def _hang() -> None:
    await asyncio.sleep(10)


@pytest.mark.anyio
async def test_all_ok_is_ready() -> None:
    """All checks passing reports ok with 200."""
    result = await Health([check("db", _ok)]).ready()
    assert (result.status, result.http_status) == ("ok", 200)


@pytest.mark.anyio
async def test_non_critical_failure_is_degraded() -> None:
    """A failing non-critical dependency reports degraded but stays 200."""
    result = await Health([check("db", _ok), check("cache", _boom, critical=False)]).ready()
    assert (result.status, result.http_status) == ("degraded", 200)
    assert result.as_dict()["checks"]["cache"] == {
        "status": "failing",
        "critical": False,
        "duration_ms": result.as_dict()["checks"]["cache"]["duration_ms"],
        "error": "ConnectionError",
    }


@pytest.mark.anyio
async def test_hung_critical_check_times_out_unavailable() -> None:
    """A hung critical dependency times out and reports unavailable with 503."""
    result = await Health([check("db", _hang)], timeout=0.05).ready()
    assert (result.status, result.http_status) == ("unavailable", 503)
    assert "timed out" in (result.checks[0].error or "")


@pytest.mark.anyio
async def test_draining_is_unready_without_running_checks() -> None:
    """Once its drain started, readiness is 503 draining and no dependency is probed."""
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    drain = Drain()
    health = Health([check("db", counted)], drain=drain)
    assert (await health.ready()).http_status == 200
    drain.start()
    result = await health.ready()
    assert (result.status, result.http_status) == ("draining", 503)
    assert result.as_dict() == {"status": "draining", "checks": {}}
    assert calls == 1
