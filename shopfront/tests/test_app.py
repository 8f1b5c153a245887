import prometheus_client
import pytest
import structlog
from fastapi import FastAPI
from httpx import AsyncClient

PROBLEM = "application/problem+json"


def _assert_problem(resp: object, status: int, code: str) -> dict[str, object]:
    assert getattr(resp, "status_code") == status  # noqa: B009
    headers = getattr(resp, "headers")  # noqa: B009
    assert headers["content-type"] == PROBLEM
    body: dict[str, object] = getattr(resp, "json")()  # noqa: B009
    assert body["status"] == status
    assert body["code"] == code
    assert body["correlation_id"]
    assert body["correlation_id"] == headers["x-request-id"]
    return body


@pytest.mark.anyio
async def test_ready_live_docs_and_metrics(client: AsyncClient) -> None:
    """The probes, the OpenAPI UI and the metrics endpoint answer."""
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert ready.json()["checks"]["database"]["status"] == "ok"
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "shopfront"
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "python_info" in metrics.text


@pytest.mark.anyio
async def test_security_headers_on_every_response(client: AsyncClient) -> None:
    """Responses carry nosniff, frame and referrer policies and a CSP."""
    resp = await client.get("/health/live")
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["referrer-policy"] == "strict-origin-when-cross-origin"


@pytest.mark.anyio
async def test_malformed_json_is_422_problem(client: AsyncClient) -> None:
    """A body that is not JSON is a 422 problem carrying the correlation id."""
    resp = await client.post(
        "/tenants", content=b'{"name": "x", "domain":', headers={"content-type": "application/json"}
    )
    _assert_problem(resp, 422, "request.malformed_json")


@pytest.mark.anyio
async def test_wrong_content_type_is_415_problem(client: AsyncClient) -> None:
    """A form-encoded body to a JSON route is a 415 problem."""
    resp = await client.post(
        "/tenants",
        content=b"name=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    _assert_problem(resp, 415, "request.unsupported_media_type")


@pytest.mark.anyio
async def test_chunked_body_over_limit_is_413_problem(client: AsyncClient) -> None:
    """A 10 MB chunked body to a 1 MB route is refused with a 413 problem."""

    async def chunks() -> object:
        for _ in range(160):
            yield b"x" * 65536

    resp = await client.post(
        "/tenants", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_problem(resp, 413, "request.too_large")


@pytest.mark.anyio
async def test_disallowed_origin_gets_no_cors_headers_and_is_counted(client: AsyncClient) -> None:
    """A foreign origin gets no CORS headers, one log event and one counter increment."""

    def blocked() -> float:
        value = prometheus_client.REGISTRY.get_sample_value(
            "hardened_http_cors_blocked_total", {"kind": "simple"}
        )
        return value or 0.0

    before = blocked()
    with structlog.testing.capture_logs() as logs:
        resp = await client.get("/health/live", headers={"origin": "https://evil.example"})
    assert resp.status_code == 200
    assert not [h for h in resp.headers if h.startswith("access-control-")]
    assert [e["event"] for e in logs].count("cors.blocked") == 1
    assert blocked() == before + 1
    allowed = await client.get("/health/live", headers={"origin": "https://admin.shop.test"})
    assert allowed.headers["access-control-allow-origin"] == "https://admin.shop.test"


@pytest.mark.anyio
async def test_unknown_route_and_bad_host(client: AsyncClient) -> None:
    """Unknown routes are 404 problems and foreign Host headers 400 problems."""
    _assert_problem(await client.get("/nope"), 404, "resource.not_found")
    resp = await client.get("/health/live", headers={"host": "attacker.example"})
    _assert_problem(resp, 400, "request.bad_host")


@pytest.mark.anyio
async def test_crash_is_500_problem_without_stack_trace(app: FastAPI, client: AsyncClient) -> None:
    """An unexpected exception yields a bare 500 problem: no trace, no message."""

    @app.get("/boom")
    async def boom() -> None:
        msg = "connection string postgres://admin:pw@db"
        raise RuntimeError(msg)

    resp = await client.get("/boom")
    body = _assert_problem(resp, 500, "internal.error")
    assert "detail" not in body
    assert "Traceback" not in resp.text
    assert "postgres://" not in resp.text
