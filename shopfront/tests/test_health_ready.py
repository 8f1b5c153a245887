import pytest
from fastapi import FastAPI

from sf_support import client_for, make_settings
from shopfront.app import create_app
from shopfront.migrate import upgrade_async


async def _ready(app: FastAPI) -> tuple[int, dict[str, object]]:
    try:
        async with client_for(app) as client:
            resp = await client.get("/health/ready")
        return resp.status_code, resp.json()
    finally:
        await app.state.shopfront.store.aclose()
        await app.state.shopfront.db.aclose()


@pytest.mark.anyio
async def test_ready_checks_postgres_and_redis(postgres_url: str, redis_url: str) -> None:
    """On PostgreSQL and Redis, readiness probes both (and each outbound breaker): ok."""
    await upgrade_async(postgres_url)
    status, body = await _ready(create_app(make_settings(postgres_url, redis_url=redis_url)))
    assert status == 200
    assert body["status"] == "ok"
    outbound = {f"outbound.{name}" for name in ("crm", "sim", "billing", "sms", "kyc")}
    assert set(body["checks"]) == {"database", "redis", *outbound}  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_redis_down_is_degraded_unless_tokens_require_it(sqlite_url: str) -> None:
    """An unreachable Redis degrades readiness (200), or fails it (503) in strict token mode."""
    await upgrade_async(sqlite_url)
    dead = "redis://127.0.0.1:1/0"
    status, body = await _ready(create_app(make_settings(sqlite_url, redis_url=dead)))
    assert (status, body["status"]) == (200, "degraded")
    strict = make_settings(sqlite_url, redis_url=dead, auth_require_redis_for_tokens=True)
    status, body = await _ready(create_app(strict))
    assert (status, body["status"]) == (503, "unavailable")


@pytest.mark.anyio
async def test_database_down_is_unavailable() -> None:
    """A database that cannot be reached makes readiness 503."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    status, body = await _ready(create_app(make_settings(url)))
    assert (status, body["status"]) == (503, "unavailable")
