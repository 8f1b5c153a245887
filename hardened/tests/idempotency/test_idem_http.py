"""Idempotency over HTTP: the draft's outcomes, what is stored, scoping, leases, the dependency."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from hardened.errors import Forbidden, StoreUnavailable, Unauthorized
from hardened.fastapi import install_problem_handlers
from hardened.http import Credentials, Identity, IdentityMiddleware
from hardened.http._request_id import RequestIdMiddleware
from hardened.idempotency import (
    HttpIdempotencyConfig,
    IdempotencyKey,
    IdempotencyMiddleware,
    IdempotentRoute,
    StoreBackend,
    decode_response,
    encode_response,
    idempotency_key,
    scope_from_credentials,
)
from hardened.stores import MemoryStore, RedisStore
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import Sequence

    from conftest import IdemBackend
    from hardened.idempotency import IdempotencyBackend
    from hardened.types import Receive, Scope, Send

pytestmark = pytest.mark.anyio

SECRET = b"test-secret-0123456789abcdef0123"


def metric(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("hardened_idempotency_requests_total", {"outcome": outcome})
        or 0.0
    )


@dataclass
class Shop:
    """A small app whose handlers count how often they really ran."""

    runs: dict[str, int] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    fail_first: int = 0

    def ran(self, name: str) -> int:
        self.runs[name] = self.runs.get(name, 0) + 1
        return self.runs[name]

    def app(self) -> Starlette:
        async def orders(request: Request) -> Response:
            body = await request.body()
            n = self.ran("orders")
            response = JSONResponse(
                {"order": n, "id": uuid.uuid4().hex, "echo": body.decode(), "q": request.url.query},
                status_code=201,
                headers={"location": f"/orders/{n}", "x-internal": "secret"},
            )
            response.set_cookie("session", "s3cr3t")
            return response

        async def slow(request: Request) -> Response:
            n = self.ran("slow")
            self.entered.set()
            if n == 1:
                await self.gate.wait()
            return JSONResponse({"slow": n, "id": uuid.uuid4().hex}, status_code=201)

        async def flaky(request: Request) -> Response:
            n = self.ran("flaky")
            if n <= self.fail_first:
                return JSONResponse({"error": n}, status_code=503)
            return JSONResponse({"ok": n}, status_code=201)

        async def boom(request: Request) -> Response:
            self.ran("boom")
            raise RuntimeError("handler crashed")

        async def big(request: Request) -> Response:
            n = self.ran("big")
            return Response(b"x" * 5000 + str(n).encode(), media_type="text/plain")

        async def conflict(request: Request) -> Response:
            n = self.ran("conflict")
            return JSONResponse({"conflict": n}, status_code=409)

        async def invalid(request: Request) -> Response:
            n = self.ran("invalid")
            return JSONResponse({"invalid": n}, status_code=400)

        async def cancel(request: Request) -> Response:
            n = self.ran("cancel")
            return JSONResponse({"cancelled": request.path_params["id"], "n": n})

        return Starlette(
            routes=[
                Route("/orders", orders, methods=["POST"]),
                Route("/optional", orders, methods=["POST"]),
                Route("/slow", slow, methods=["POST"]),
                Route("/wait", slow, methods=["POST"]),
                Route("/flaky", flaky, methods=["POST"]),
                Route("/boom", boom, methods=["POST"]),
                Route("/big", big, methods=["POST"]),
                Route("/conflict", conflict, methods=["POST"]),
                Route("/invalid", invalid, methods=["POST"]),
                Route("/fields", orders, methods=["POST"]),
                Route("/orders/{id}/cancel", cancel, methods=["POST"]),
            ]
        )


RULES = (
    IdempotentRoute("/optional", required=False),
    IdempotentRoute("/wait", wait=10.0),
    IdempotentRoute("/fields", fingerprint_fields=("amount", "card.last4")),
    IdempotentRoute("/orders/{id}/cancel$"),
    IdempotentRoute("/"),
)


def guarded(
    shop: Shop,
    backend: IdempotencyBackend,
    *,
    rules: Sequence[IdempotentRoute] = RULES,
    **config: Any,
) -> Any:
    inner = IdempotencyMiddleware(
        shop.app(),
        backend=backend,
        secret=SECRET,
        rules=rules,
        config=HttpIdempotencyConfig(**config),
    )
    return RequestIdMiddleware(inner)


def client(app: Any) -> httpx.AsyncClient:
    """An API client that keeps no cookies: a Cookie header is part of the default scope."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        transport=transport, base_url="http://shop.example", cookies=no_cookies
    )


def key() -> dict[str, str]:
    return {"idempotency-key": str(uuid.uuid4())}


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["correlation_id"] == resp.headers["x-request-id"]
    return body


# -- the draft's outcomes --------------------------------------------------------------------------


async def test_same_key_same_body_replays_status_and_body(idem_backend: IdemBackend) -> None:
    """A repeat with the same key and body gets the stored status and body; the handler ran once."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, idem_backend.backend)) as c:
        first = await c.post("/orders", content=b'{"amount": 5}', headers=headers)
        second = await c.post("/orders", content=b'{"amount": 5}', headers=headers)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["content-length"] == str(len(first.content))
    assert second.headers["location"] == first.headers["location"]
    assert shop.runs == {"orders": 1}


async def test_same_key_different_body_is_422_problem(idem_backend: IdemBackend) -> None:
    """The same key with another body is a 422 idempotency.key_reused problem; nothing runs."""
    shop = Shop()
    headers = key()
    before = metric("mismatch")
    with capture_logs() as logs:
        async with client(guarded(shop, idem_backend.backend)) as c:
            await c.post("/orders", content=b'{"amount": 5}', headers=headers)
            resp = await c.post("/orders", content=b'{"amount": 6}', headers=headers)
    assert_problem(resp, 422, "idempotency.key_reused")
    assert shop.runs == {"orders": 1}
    assert metric("mismatch") == before + 1
    [event] = [e for e in logs if e["event"] == "idempotency.mismatch"]
    assert headers["idempotency-key"] not in json.dumps(event)
    assert len(event["key_hash"]) == 16


async def test_missing_key_is_400_on_required_route_and_passes_on_optional() -> None:
    """No key: 400 idempotency.key_missing where required; an optional route runs unguarded."""
    shop = Shop()
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        refused = await c.post("/orders", json={"amount": 5})
        one = await c.post("/optional", json={"amount": 5})
        two = await c.post("/optional", json={"amount": 5})
        keyed = await c.post("/optional", json={"amount": 5}, headers=(h := key()))
        again = await c.post("/optional", json={"amount": 5}, headers=h)
    assert_problem(refused, 400, "idempotency.key_missing")
    assert one.status_code == two.status_code == 201
    assert "idempotent-replayed" not in two.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == keyed.content
    assert shop.runs == {"orders": 3}


async def test_x_idempotency_key_is_accepted_and_is_the_same_key(idem_backend: IdemBackend) -> None:
    """X-Idempotency-Key guards the request, and the same value under Idempotency-Key replays it."""
    shop = Shop()
    value = str(uuid.uuid4())
    async with client(guarded(shop, idem_backend.backend)) as c:
        first = await c.post("/orders", json={"a": 1}, headers={"x-idempotency-key": value})
        second = await c.post("/orders", json={"a": 1}, headers={"idempotency-key": value})
        quoted = await c.post("/orders", json={"a": 1}, headers={"idempotency-key": f'"{value}"'})
    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert quoted.headers["idempotent-replayed"] == "true"
    assert second.content == quoted.content == first.content
    assert shop.runs == {"orders": 1}


async def test_invalid_or_ambiguous_keys_are_400() -> None:
    """Over-long, non-ASCII, repeated or two different keys are 400 idempotency.key_invalid."""
    shop = Shop()
    cases = [
        [("idempotency-key", "k" * 256)],
        [("idempotency-key", "caf\u00e9")],
        [("idempotency-key", "a"), ("x-idempotency-key", "b")],
        [("idempotency-key", "a"), ("idempotency-key", "a")],
        [("idempotency-key", '"a"b"')],
    ]
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        for headers in cases:
            encoded = [(k.encode(), v.encode("utf-8")) for k, v in headers]
            resp = await c.post("/orders", json={}, headers=encoded)
            assert_problem(resp, 400, "idempotency.key_invalid")
        same = await c.post(
            "/orders", json={}, headers=[("idempotency-key", "a"), ("x-idempotency-key", "a")]
        )
    assert same.status_code == 201
    assert shop.runs == {"orders": 1}


async def test_concurrent_duplicate_is_409_with_retry_after(idem_backend: IdemBackend) -> None:
    """While the first request runs, a duplicate gets 409 idempotency.in_flight with Retry-After."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, idem_backend.backend, lease=30.0)) as c:
        first = asyncio.create_task(c.post("/slow", json={"n": 1}, headers=headers))
        await shop.entered.wait()
        busy = await c.post("/slow", json={"n": 1}, headers=headers)
        shop.gate.set()
        done = await first
        after = await c.post("/slow", json={"n": 1}, headers=headers)
    assert_problem(busy, 409, "idempotency.in_flight")
    assert 1 <= int(busy.headers["retry-after"]) <= 30
    assert done.status_code == 201
    assert after.headers["idempotent-replayed"] == "true"
    assert after.content == done.content
    assert shop.runs == {"slow": 1}


async def test_wait_for_result_route_returns_the_original_result(
    idem_backend: IdemBackend,
) -> None:
    """On a route with ``wait``, a duplicate waits for the first and gets its result, replayed."""
    shop = Shop()
    headers = key()
    before = metric("in_flight")
    async with client(guarded(shop, idem_backend.backend)) as c:
        first = asyncio.create_task(c.post("/wait", json={"n": 1}, headers=headers))
        await shop.entered.wait()
        second = asyncio.create_task(c.post("/wait", json={"n": 1}, headers=headers))
        await asyncio.sleep(0.1)  # let the duplicate start polling (either way it must not run)
        shop.gate.set()
        original, waited = await first, await second
    assert original.status_code == waited.status_code == 201
    assert waited.headers["idempotent-replayed"] == "true"
    assert waited.content == original.content
    assert shop.runs == {"slow": 1}
    assert metric("in_flight") == before


async def test_wait_gives_up_with_409_when_the_holder_outlasts_it() -> None:
    """A waiting duplicate whose holder is still running when ``wait`` ends gets a 409."""
    shop = Shop()
    headers = key()
    rules = (IdempotentRoute("/wait", wait=0.2),)
    async with client(guarded(shop, StoreBackend(MemoryStore()), rules=rules)) as c:
        first = asyncio.create_task(c.post("/wait", json={}, headers=headers))
        await shop.entered.wait()
        busy = await c.post("/wait", json={}, headers=headers)
        shop.gate.set()
        await first
    assert_problem(busy, 409, "idempotency.in_flight")
    assert shop.runs == {"slow": 1}


# -- what is stored --------------------------------------------------------------------------------


async def test_server_error_releases_the_key_so_a_retry_runs(idem_backend: IdemBackend) -> None:
    """A 5xx is not stored: the retry with the same key runs again, and its 201 is then replayed."""
    shop = Shop(fail_first=1)
    headers = key()
    before = metric("released")
    async with client(guarded(shop, idem_backend.backend)) as c:
        failed = await c.post("/flaky", json={}, headers=headers)
        retried = await c.post("/flaky", json={}, headers=headers)
        replayed = await c.post("/flaky", json={}, headers=headers)
    assert failed.status_code == 503
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == {"ok": 2}
    assert shop.runs == {"flaky": 2}
    assert metric("released") == before + 1


async def test_store_server_errors_replays_the_5xx(idem_backend: IdemBackend) -> None:
    """With store_server_errors the first 5xx is stored and replayed; the handler does not rerun."""
    shop = Shop(fail_first=1)
    headers = key()
    async with client(guarded(shop, idem_backend.backend, store_server_errors=True)) as c:
        failed = await c.post("/flaky", json={}, headers=headers)
        again = await c.post("/flaky", json={}, headers=headers)
    assert failed.status_code == again.status_code == 503
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == failed.content
    assert shop.runs == {"flaky": 1}


async def test_exception_releases_or_stores_a_500_problem() -> None:
    """A raising handler releases the key; with store_server_errors a 500 problem is replayed."""
    runs = 0

    async def crash(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("handler crashed")

    backend = StoreBackend(MemoryStore())
    rules = (IdempotentRoute("/"),)
    released = IdempotencyMiddleware(crash, backend=backend, secret=SECRET, rules=rules)
    headers = key()
    async with client(released) as c:
        assert (await c.post("/boom", json={}, headers=headers)).status_code == 500
        assert (await c.post("/boom", json={}, headers=headers)).status_code == 500
    assert runs == 2
    config = HttpIdempotencyConfig(store_server_errors=True)
    stored = IdempotencyMiddleware(
        crash, backend=backend, secret=SECRET, rules=rules, config=config
    )
    async with client(stored) as c:
        await c.post("/boom", json={}, headers=headers)
        replay = await c.post("/boom", json={}, headers=headers)
    assert runs == 3
    assert replay.status_code == 500
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["content-type"] == "application/problem+json"
    assert replay.json()["code"] == "internal.error"


async def test_cancelled_request_releases_its_claim() -> None:
    """A request cancelled mid-handler (server shutdown) releases its key: the retry runs."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        stuck = asyncio.create_task(c.post("/slow", json={}, headers=headers))
        await shop.entered.wait()
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        await asyncio.sleep(0.01)  # let the shielded release finish
        retried = await c.post("/slow", json={}, headers=headers)
    assert retried.status_code == 201
    assert shop.runs == {"slow": 2}


async def test_framework_rendered_500_follows_the_5xx_rule() -> None:
    """Starlette renders the crash as a 500 and re-raises: released, or replayed when stored."""
    backend = StoreBackend(MemoryStore())
    shop = Shop()
    headers = key()
    async with client(guarded(shop, backend)) as c:
        assert (await c.post("/boom", json={}, headers=headers)).status_code == 500
        assert (await c.post("/boom", json={}, headers=headers)).status_code == 500
    assert shop.runs == {"boom": 2}
    async with client(guarded(shop, backend, store_server_errors=True)) as c:
        first = await c.post("/boom", json={}, headers=(h := key()))
        replay = await c.post("/boom", json={}, headers=h)
    assert replay.status_code == 500
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert shop.runs == {"boom": 3}


async def test_4xx_is_stored_but_transient_conflicts_are_released() -> None:
    """A 400 is replayed like any result; a 409 means nothing happened, so a retry runs again."""
    shop = Shop()
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        h = key()
        first = await c.post("/invalid", json={}, headers=h)
        again = await c.post("/invalid", json={}, headers=h)
        h = key()
        await c.post("/conflict", json={}, headers=h)
        retried = await c.post("/conflict", json={}, headers=h)
    assert first.status_code == again.status_code == 400
    assert again.headers["idempotent-replayed"] == "true"
    assert retried.status_code == 409
    assert "idempotent-replayed" not in retried.headers
    assert shop.runs == {"invalid": 1, "conflict": 2}


async def test_set_cookie_and_unlisted_headers_are_never_replayed(
    idem_backend: IdemBackend,
) -> None:
    """The original carries Set-Cookie and an internal header; the replay carries neither."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, idem_backend.backend)) as c:
        first = await c.post("/orders", json={}, headers=headers)
        replay = await c.post("/orders", json={}, headers=headers)
    assert "set-cookie" in first.headers
    assert first.headers["x-internal"] == "secret"
    assert replay.headers["idempotent-replayed"] == "true"
    assert "set-cookie" not in replay.headers
    assert "x-internal" not in replay.headers
    assert replay.headers["location"] == first.headers["location"]
    assert replay.headers["x-request-id"] != first.headers["x-request-id"]


def test_credential_headers_cannot_be_configured_for_replay() -> None:
    """Configuring Set-Cookie, Authorization or WWW-Authenticate for replay is refused."""
    for name in ("Set-Cookie", "authorization", "WWW-Authenticate"):
        with pytest.raises(ValueError, match=name.lower()):
            HttpIdempotencyConfig(replay_headers=frozenset({"content-type", name}))


async def test_oversized_response_leaves_a_marker_so_the_retry_never_reruns() -> None:
    """A response above max_stored_bytes reaches the client whole; retries get a 410, no rerun."""
    shop = Shop()
    headers = key()
    before = metric("not_stored")
    backend = StoreBackend(MemoryStore())
    with capture_logs() as logs:
        async with client(guarded(shop, backend, max_stored_bytes=4096)) as c:
            first = await c.post("/big", json={}, headers=headers)
            second = await c.post("/big", json={}, headers=headers)
            third = await c.post("/big", json={}, headers=headers)
    assert first.content == b"x" * 5000 + b"1"
    assert "idempotent-replayed" not in first.headers
    for retry in (second, third):
        body = assert_problem(retry, 410, "idempotency.response_not_kept")
        assert retry.headers["idempotent-replayed"] == "true"
        assert "executed" in body["detail"]
        assert "too large" in body["detail"]
        assert body["original_status"] == 200
    assert shop.runs == {"big": 1}
    assert metric("not_stored") == before + 1
    assert [e["event"] for e in logs].count("idempotency.not_stored") == 1


async def test_401_and_403_are_never_stored_whatever_the_config() -> None:
    """A 401 or 403 raised in the route releases its key: the caller's retry after login runs."""
    runs: dict[str, int] = {}

    def counted(name: str) -> int:
        runs[name] = runs.get(name, 0) + 1
        return runs[name]

    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/pay")
    async def pay() -> dict[str, int]:
        n = counted("pay")
        if n == 1:
            raise Unauthorized("The session was signed out.", code="auth.token_revoked")
        return {"paid": n}

    @app.post("/admin")
    async def admin() -> dict[str, int]:
        n = counted("admin")
        if n == 1:
            raise Forbidden("Not your shop.")
        return {"admin": n}

    def same_caller(scope: Scope) -> tuple[str | None, str | None]:
        return "shop-1", "user:1"  # a fresh login is the same principal

    for config in ({}, {"store_server_errors": True}):
        runs.clear()
        middleware = IdempotencyMiddleware(
            app,
            backend=StoreBackend(MemoryStore()),
            secret=SECRET,
            rules=(IdempotentRoute("/"),),
            config=HttpIdempotencyConfig(scope_of=same_caller, **config),
        )
        async with client(RequestIdMiddleware(middleware)) as c:
            h, g = key(), key()
            revoked = await c.post("/pay", headers={**h, "authorization": "Bearer old"})
            paid = await c.post("/pay", headers={**h, "authorization": "Bearer new"})
            replay = await c.post("/pay", headers={**h, "authorization": "Bearer new"})
            refused = await c.post("/admin", headers=g)
            allowed = await c.post("/admin", headers=g)
        assert_problem(revoked, 401, "auth.token_revoked")
        assert paid.status_code == 200
        assert "idempotent-replayed" not in paid.headers
        assert paid.json() == {"paid": 2}
        assert replay.headers["idempotent-replayed"] == "true"
        assert_problem(refused, 403, "auth.forbidden")
        assert allowed.json() == {"admin": 2}
        assert runs == {"pay": 2, "admin": 2}


class FlakyRelease(StoreBackend):
    """A real memory backend whose releases fail ``failures`` times (retries wait for ``gate``)."""

    def __init__(self, store: MemoryStore, failures: int) -> None:
        super().__init__(store)
        self.failures = failures
        self.attempts = 0
        self.gate = asyncio.Event()
        self.landed = asyncio.Event()

    async def release(self, key: str, token: int) -> bool:
        self.attempts += 1
        if self.attempts > 1:
            await self.gate.wait()
        if self.attempts <= self.failures:
            raise StoreUnavailable(context={"backend": "test"})
        released = await super().release(key, token)
        self.landed.set()
        return released


async def test_failed_release_is_retried_in_the_background_until_the_key_is_free() -> None:
    """A 5xx whose release fails 3 times is answered at once; the key is freed by a later try."""
    shop = Shop(fail_first=1)
    backend = FlakyRelease(MemoryStore(), failures=3)
    headers = key()
    async with client(guarded(shop, backend, lease=60.0)) as c:
        failed = await asyncio.wait_for(c.post("/flaky", json={}, headers=headers), 30)
        busy = await c.post("/flaky", json={}, headers=headers)  # retries wait for the gate
        backend.gate.set()
        await asyncio.wait_for(backend.landed.wait(), 30)
        retried = await c.post("/flaky", json={}, headers=headers)
    assert failed.status_code == 503
    assert_problem(busy, 409, "idempotency.in_flight")
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert backend.attempts == 4
    assert shop.runs == {"flaky": 2}


# -- fingerprint and scope -------------------------------------------------------------------------


async def test_another_principal_with_the_same_key_is_not_a_replay(
    idem_backend: IdemBackend,
) -> None:
    """The same key and body under another Authorization or Host runs afresh, not as a replay."""
    shop = Shop()
    value = str(uuid.uuid4())
    alice = {"idempotency-key": value, "authorization": "Bearer alice"}
    bob = {"idempotency-key": value, "authorization": "Bearer bob"}
    async with client(guarded(shop, idem_backend.backend)) as c:
        a1 = await c.post("/orders", json={"amount": 5}, headers=alice)
        b1 = await c.post("/orders", json={"amount": 5}, headers=bob)
        a2 = await c.post("/orders", json={"amount": 5}, headers=alice)
        other_host = await c.post("http://other.example/orders", json={"amount": 5}, headers=alice)
    assert "idempotent-replayed" not in b1.headers
    assert b1.json()["id"] != a1.json()["id"]
    assert a2.headers["idempotent-replayed"] == "true"
    assert a2.content == a1.content
    assert "idempotent-replayed" not in other_host.headers
    assert shop.runs == {"orders": 3}


def test_default_scope_without_identity_is_host_and_a_credential_hash() -> None:
    """No identity step: the Host name (no port, case or trailing dot) and a credential hash."""
    headers = [(b"host", b"Shop.Example"), (b"authorization", b"Bearer t0ken")]
    tenant, principal = scope_from_credentials({"type": "http", "headers": headers})
    assert tenant == "shop.example"
    assert principal is not None
    assert "t0ken" not in principal
    assert len(principal) == 64
    anonymous = scope_from_credentials({"type": "http", "headers": [(b"host", b"a:8001")]})
    assert anonymous == ("a", None)
    for host, tenant in (
        (b"[::1]:8000", "[::1]"),
        (b"[::1]", "[::1]"),
        (b"b.example", "b.example"),
        (b"shop.example.com.", "shop.example.com"),
        (b"SHOP.example.com.:8443", "shop.example.com"),
    ):
        assert scope_from_credentials({"headers": [(b"host", host)]})[0] == tenant
    # An outer middleware's state is not a credential: only the identity step is read.
    state = {"tenant_id": 7, "principal": "user-1"}
    assert scope_from_credentials({"headers": headers, "state": state}) == (
        "shop.example",
        principal,
    )


def test_default_scope_hashes_the_cookie_header_too() -> None:
    """Two cookie sessions on one host are two principals; the credential never shows."""

    def principal(*headers: tuple[bytes, bytes]) -> str | None:
        return scope_from_credentials({"headers": [(b"host", b"shop.example"), *headers]})[1]

    alice = principal((b"cookie", b"session=alice-s3cret"))
    bob = principal((b"cookie", b"session=bob-s3cret"))
    assert alice is not None
    assert bob is not None
    assert alice != bob
    assert "s3cret" not in alice
    assert principal((b"cookie", b"session=alice-s3cret")) == alice
    bearer = principal((b"authorization", b"Bearer t"))
    assert bearer not in (alice, None)
    assert principal((b"authorization", b"Bearer t"), (b"cookie", b"session=alice-s3cret")) not in (
        alice,
        bearer,
    )
    assert principal() is None


def test_default_scope_reads_the_identity_step_when_it_ran() -> None:
    """With an Identity recorded: its tenant and principal; refused or anonymous: no principal."""
    headers = [(b"host", b"shop.example"), (b"authorization", b"Bearer t0ken")]

    def scoped(identity: Identity) -> tuple[str | None, str | None]:
        return scope_from_credentials({"headers": headers, "state": {"identity": identity}})

    assert scoped(Identity(principal="user:1", tenant="t-1", via="header")) == ("t-1", "user:1")
    assert scoped(Identity(principal="user:1", via="cookie")) == (None, "user:1")
    refused = Identity(via="header", error=Unauthorized(code="auth.token_revoked"))
    assert scoped(refused) == (None, None)
    assert scoped(Identity()) == (None, None)


async def test_cookie_users_of_one_host_cannot_replay_each_others_results() -> None:
    """User B sending user A's key and body with another session cookie runs afresh, no replay."""
    shop = Shop()
    value = str(uuid.uuid4())
    alice = {"idempotency-key": value, "cookie": "session=alice"}
    bob = {"idempotency-key": value, "cookie": "session=bob"}
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        a1 = await c.post("/orders", json={"amount": 5}, headers=alice)
        b1 = await c.post("/orders", json={"amount": 5}, headers=bob)
        a2 = await c.post("/orders", json={"amount": 5}, headers=alice)
    assert "idempotent-replayed" not in b1.headers
    assert b1.json()["id"] != a1.json()["id"]
    assert a2.headers["idempotent-replayed"] == "true"
    assert shop.runs == {"orders": 2}


async def test_identity_step_scopes_by_principal_across_token_refreshes() -> None:
    """Behind IdentityMiddleware a refreshed token replays; another user's token runs afresh."""
    users = {"t1": "user:1", "t2": "user:1", "t3": "user:2"}

    async def authenticate(credentials: Credentials) -> Identity:
        if credentials.bearer not in users:
            raise Unauthorized("Unknown token.")
        return Identity(principal=users[credentials.bearer], tenant="shop-1")

    shop = Shop()
    inner = IdempotencyMiddleware(
        shop.app(), backend=StoreBackend(MemoryStore()), secret=SECRET, rules=RULES
    )
    app = RequestIdMiddleware(IdentityMiddleware(inner, authenticate=authenticate))
    value = str(uuid.uuid4())

    def as_(token: str) -> dict[str, str]:
        return {"idempotency-key": value, "authorization": f"Bearer {token}"}

    async with client(app) as c:
        first = await c.post("/orders", json={}, headers=as_("t1"))
        refreshed = await c.post("/orders", json={}, headers=as_("t2"))
        other = await c.post("/orders", json={}, headers=as_("t3"))
    assert first.status_code == other.status_code == 201
    assert refreshed.headers["idempotent-replayed"] == "true"
    assert refreshed.content == first.content
    assert "idempotent-replayed" not in other.headers
    assert shop.runs == {"orders": 2}


async def test_query_string_is_part_of_the_fingerprint(idem_backend: IdemBackend) -> None:
    """Another query string is a 422; the same pairs in another order are the same request."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, idem_backend.backend)) as c:
        first = await c.post("/orders?a=1&b=2", json={}, headers=headers)
        reordered = await c.post("/orders?b=2&a=1", json={}, headers=headers)
        changed = await c.post("/orders?a=1&b=3", json={}, headers=headers)
    assert first.status_code == 201
    assert reordered.headers["idempotent-replayed"] == "true"
    assert reordered.content == first.content
    assert_problem(changed, 422, "idempotency.key_reused")
    assert shop.runs == {"orders": 1}


async def test_order_of_repeated_query_values_is_part_of_the_fingerprint() -> None:
    """?amount=1&amount=100 and ?amount=100&amount=1 are different requests; names may move."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        first = await c.post("/orders?amount=1&b=2&amount=100", json={}, headers=headers)
        names_moved = await c.post("/orders?b=2&amount=1&amount=100", json={}, headers=headers)
        swapped = await c.post("/orders?amount=100&b=2&amount=1", json={}, headers=headers)
    assert first.status_code == 201
    assert names_moved.headers["idempotent-replayed"] == "true"
    assert_problem(swapped, 422, "idempotency.key_reused")
    assert shop.runs == {"orders": 1}


async def test_lone_surrogate_in_a_fingerprinted_field_is_fingerprinted_not_a_500() -> None:
    """A declared field holding an escaped lone surrogate runs, replays, differs from another."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        first = await c.post("/fields", content=b'{"amount": "\\ud800"}', headers=headers)
        again = await c.post("/fields", content=b'{"amount": "\\ud800", "x": 1}', headers=headers)
        other = await c.post("/fields", content=b'{"amount": "\\udfff"}', headers=headers)
    assert first.status_code == 201, first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert_problem(other, 422, "idempotency.key_reused")
    assert shop.runs == {"orders": 1}


async def test_too_deeply_nested_body_falls_back_to_the_raw_bytes_not_a_500() -> None:
    """A JSON body nested past the parser's depth is fingerprinted by its raw bytes."""
    shop = Shop()
    headers = key()
    deep = b'{"amount": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        first = await c.post("/fields", content=deep, headers=headers)
        again = await c.post("/fields", content=deep, headers=headers)
    assert first.status_code == 201, first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert shop.runs == {"orders": 1}


async def test_declared_fields_fingerprint_ignores_the_rest_of_the_payload() -> None:
    """With fingerprint_fields only the declared fields count, whatever their order."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        first = await c.post(
            "/fields", json={"amount": 5, "card": {"last4": "4242"}, "note": "a"}, headers=headers
        )
        same = await c.post(
            "/fields",
            content=b'{"note":"b","card":{"last4":"4242","brand":"visa"},"amount":5}',
            headers=headers,
        )
        other = await c.post(
            "/fields", json={"amount": 5, "card": {"last4": "0000"}}, headers=headers
        )
        missing = await c.post("/fields", json={"amount": 5}, headers=headers)
    assert first.status_code == 201
    assert same.headers["idempotent-replayed"] == "true"
    assert_problem(other, 422, "idempotency.key_reused")
    assert_problem(missing, 422, "idempotency.key_reused")
    assert shop.runs == {"orders": 1}


async def test_key_reused_on_another_resource_of_a_template_route_is_422() -> None:
    """On /orders/{id}/cancel a key reused for another order is a 422, not its replay."""
    shop = Shop()
    headers = key()
    async with client(guarded(shop, StoreBackend(MemoryStore()))) as c:
        first = await c.post("/orders/1/cancel", headers=headers)
        other = await c.post("/orders/2/cancel", headers=headers)
        again = await c.post("/orders/1/cancel", headers=headers)
    assert first.json()["cancelled"] == "1"
    assert_problem(other, 422, "idempotency.key_reused")
    assert again.headers["idempotent-replayed"] == "true"
    assert shop.runs == {"cancel": 1}


def test_route_matching_follows_the_ratelimit_rules() -> None:
    """Prefixes match whole segments, ``$`` is exact, {param} is one segment; methods filter."""
    prefix = IdempotentRoute("/orders")
    assert prefix.matches("post", "/orders")
    assert prefix.matches("PATCH", "/orders/7")
    assert not prefix.matches("POST", "/ordersx")
    assert not prefix.matches("GET", "/orders")
    assert prefix.template("/orders/7") == "/orders/7"
    exact = IdempotentRoute("/orders/{id}/cancel$", methods=frozenset({"put"}))
    assert exact.matches("PUT", "/orders/9/cancel")
    assert not exact.matches("PUT", "/orders/9/cancel/x")
    assert not exact.matches("PUT", "/orders//cancel")
    assert exact.template("/orders/9/cancel") == "/orders/{id}/cancel"
    with pytest.raises(ValueError, match="start with"):
        IdempotentRoute("orders")


# -- backend failures and leases -------------------------------------------------------------------


async def test_unreachable_store_is_503_and_the_handler_never_runs() -> None:
    """With the backend down the answer is a 503 store.unavailable and the handler never runs."""
    shop = Shop()
    store = RedisStore.from_url("redis://127.0.0.1:1/0", timeout=0.5)
    before = metric("unavailable")
    try:
        async with client(guarded(shop, StoreBackend(store))) as c:
            resp = await c.post("/orders", json={}, headers=key())
    finally:
        await store.aclose()
    body = assert_problem(resp, 503, "store.unavailable")
    assert "redis" not in json.dumps(body).lower()
    assert resp.headers["retry-after"] == "1"
    assert shop.runs == {}
    assert metric("unavailable") == before + 1


async def test_holder_whose_lease_was_taken_over_cannot_store_its_result() -> None:
    """A holder whose lease was taken over cannot store its result; its client is still served."""
    clock = ManualClock()
    backend = StoreBackend(MemoryStore(clock=clock))
    shop = Shop()
    headers = key()
    before = metric("lease_lost")
    with capture_logs() as logs:
        async with client(guarded(shop, backend, lease=30.0)) as c:
            stalled = asyncio.create_task(c.post("/slow", json={}, headers=headers))
            await shop.entered.wait()
            clock.now += 31  # the holder stalled past its lease (no heartbeat on this clock)
            taken_over = await c.post("/slow", json={}, headers=headers)
            shop.gate.set()
            late = await stalled
            replay = await c.post("/slow", json={}, headers=headers)
    assert taken_over.status_code == late.status_code == 201
    assert late.json()["slow"] == 1
    assert taken_over.json()["slow"] == 2
    assert replay.content == taken_over.content
    assert metric("lease_lost") == before + 1
    assert any(e["event"] == "idempotency.lease_lost" for e in logs)


async def test_heartbeat_keeps_a_request_slower_than_its_lease(redis_url: str) -> None:
    """A handler running past twice its lease keeps its claim: a duplicate gets 409, never a run."""
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    shop = Shop()
    headers = key()
    try:
        async with client(guarded(shop, StoreBackend(store), lease=0.5, heartbeat=0.1)) as c:
            first = asyncio.create_task(c.post("/slow", json={}, headers=headers))
            await shop.entered.wait()
            await asyncio.sleep(1.2)
            busy = await c.post("/slow", json={}, headers=headers)
            shop.gate.set()
            done = await first
            replay = await c.post("/slow", json={}, headers=headers)
    finally:
        stale = [k async for k in store.client.scan_iter(match=f"{prefix}*")]
        if stale:
            await store.client.delete(*stale)
        await store.aclose()
    assert_problem(busy, 409, "idempotency.in_flight")
    assert done.status_code == 201
    assert replay.content == done.content
    assert shop.runs == {"slow": 1}


class NoBeats(StoreBackend):
    """A real memory backend whose heartbeats never land, as if the holder had crashed."""

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        raise StoreUnavailable(context={"backend": "test"})


async def test_default_lease_lets_a_retry_take_over_a_dead_holder_after_five_seconds() -> None:
    """With the default config a holder that stopped renewing is taken over 5 s after its claim."""
    clock = ManualClock()
    backend = NoBeats(MemoryStore(clock=clock))
    shop = Shop()
    headers = key()
    assert HttpIdempotencyConfig().lease == 5.0
    async with client(guarded(shop, backend)) as c:
        stalled = asyncio.create_task(c.post("/slow", json={}, headers=headers))
        await shop.entered.wait()
        clock.now += 4.9
        busy = await c.post("/slow", json={}, headers=headers)
        clock.now += 0.2
        taken_over = await c.post("/slow", json={}, headers=headers)
        shop.gate.set()
        await stalled
    assert_problem(busy, 409, "idempotency.in_flight")
    assert taken_over.status_code == 201
    assert taken_over.json()["slow"] == 2


# -- stored encoding -------------------------------------------------------------------------------


def test_response_encoding_round_trips_and_refuses_garbage() -> None:
    """Stored responses round-trip status, headers and body; corrupt records are refused."""
    headers = [(b"content-type", b"application/json"), (b"location", b"/x/\xff")]
    body = b'{"a": 1}' * 100
    encoded = encode_response(201, headers, body)
    assert decode_response(encoded) == (201, headers, body)
    assert decode_response(encode_response(204, [], b"")) == (204, [], b"")
    for garbage in (b"", b"\x02abc", encoded[:8]):
        with pytest.raises(ValueError, match="encoded response"):
            decode_response(garbage)


# -- the FastAPI dependency ------------------------------------------------------------------------


def fastapi_app(backend: IdempotencyBackend | None) -> Any:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/pay")
    async def pay(key: IdempotencyKey = Depends(idempotency_key())) -> dict[str, Any]:  # noqa: B008
        return {"key": key.value, "guarded": key.guarded}

    @app.post("/maybe")
    async def maybe(
        key: IdempotencyKey | None = Depends(idempotency_key(required=False)),  # noqa: B008
    ) -> dict[str, Any]:
        return {"key": None if key is None else key.value}

    @app.post("/money")
    async def money(
        key: IdempotencyKey = Depends(idempotency_key(guarded=True)),  # noqa: B008
    ) -> dict[str, Any]:
        return {"key": key.value}

    if backend is None:
        return RequestIdMiddleware(app)
    rules = (IdempotentRoute("/pay$"), IdempotentRoute("/money$"))
    return RequestIdMiddleware(
        IdempotencyMiddleware(app, backend=backend, secret=SECRET, rules=rules)
    )


async def test_dependency_validates_and_exposes_the_key() -> None:
    """idempotency_key(): 400 when missing or invalid, the value when present, None if optional."""
    async with client(fastapi_app(None)) as c:
        missing = await c.post("/pay")
        invalid = await c.post("/pay", headers={"idempotency-key": "k" * 300})
        ok = await c.post("/pay", headers={"x-idempotency-key": "k-1"})
        optional = await c.post("/maybe")
    assert_problem(missing, 400, "idempotency.key_missing")
    assert_problem(invalid, 400, "idempotency.key_invalid")
    assert ok.json() == {"key": "k-1", "guarded": False}
    assert optional.json() == {"key": None}


async def test_guarded_dependency_refuses_a_route_the_middleware_does_not_cover() -> None:
    """idempotency_key(guarded=True) is a 500 without the middleware and the key behind it."""
    async with client(fastapi_app(None)) as c:
        unguarded = await c.post("/money", headers={"idempotency-key": "k-2"})
    assert_problem(unguarded, 500, "idempotency.unguarded")
    async with client(fastapi_app(StoreBackend(MemoryStore()))) as c:
        guarded_resp = await c.post("/money", headers={"idempotency-key": "k-2"})
        pay = await c.post("/pay", headers={"idempotency-key": "k-3"})
        replay = await c.post("/pay", headers={"idempotency-key": "k-3"})
    assert guarded_resp.json() == {"key": "k-2"}
    assert pay.json() == {"key": "k-3", "guarded": True}
    assert replay.headers["idempotent-replayed"] == "true"
