"""Rate limiting over HTTP: route table, draft -11 headers, 429 problem, FastAPI dependency."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from structlog.testing import capture_logs

from hardened.errors import StoreUnavailable
from hardened.http._client_ip import ClientIPMiddleware
from hardened.http._proxy import TrustedProxies
from hardened.http._request_id import RequestIdMiddleware
from hardened.logging import Sampler
from hardened.ratelimit import _http as ratelimit_http
from hardened.ratelimit._core import Decision, Policy, PolicyResult, RateLimiter
from hardened.ratelimit._errors import CostExceedsLimit
from hardened.ratelimit._http import (
    RateLimitMiddleware,
    Rule,
    by_header,
    by_ip,
    by_route,
    by_state,
    enforce,
    policy_header,
    rate_limit,
    ratelimit_header,
    ratelimit_headers,
)
from hardened.stores import RedisStore
from hardened.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.types import Receive, Scope, Send


@dataclass
class FakeLimiter:
    """Counts per (policy, key); refuses the policies named in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    retry_after: float = 12.2
    calls: list[tuple[list[tuple[str, str]], int]] = field(default_factory=list)
    used: dict[tuple[str, str], int] = field(default_factory=dict)

    async def check(self, hits: Sequence[tuple[Policy, str]], *, cost: int = 1) -> Decision:
        self.calls.append(([(p.name, k) for p, k in hits], cost))
        results = []
        for policy, key in hits:
            if policy.name in self.refuse:
                results.append(
                    PolicyResult(
                        policy,
                        allowed=False,
                        remaining=0,
                        reset_after=self.retry_after,
                        retry_after=self.retry_after,
                    )
                )
            else:
                left = policy.limit - self.used.get((policy.name, key), 0) - cost
                results.append(
                    PolicyResult(
                        policy,
                        allowed=True,
                        remaining=left,
                        reset_after=policy.period / 2 + 0.3,
                        retry_after=0.0,
                    )
                )
        refused = [r for r in results if not r.allowed]
        violated = refused[0] if refused else None
        tightest = min(results, key=lambda r: r.remaining / r.policy.limit, default=None)
        if violated is None:
            for policy, key in hits:
                self.used[(policy.name, key)] = self.used.get((policy.name, key), 0) + cost
        return Decision(violated is None, tuple(results), violated, tightest, store_failed=False)


# -- a strict parser for the Structured Fields subset used (RFC 9651 sf-list) ---------------

_ITEM = re.compile(
    r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"((?:;[a-z*][a-z0-9_.*-]*=-?\d{1,15})*)'
)
_PARAM = re.compile(r";([a-z*][a-z0-9_.*-]*)=(-?\d{1,15})")


def parse_sf_list(value: str) -> list[tuple[str, dict[str, int]]]:
    """Parse a List of sf-string Items with integer parameters, rejecting anything else."""
    items: list[tuple[str, dict[str, int]]] = []
    pos = 0
    while True:
        match = _ITEM.match(value, pos)
        assert match, f"not an sf-string item at {pos}: {value!r}"
        name = re.sub(r"\\(.)", r"\1", match.group(1))
        params = {k: int(v) for k, v in _PARAM.findall(match.group(2))}
        assert len(params) == match.group(2).count(";"), "duplicate parameter"
        items.append((name, params))
        pos = match.end()
        if pos == len(value):
            return items
        sep = re.compile(r"[ \t]*,[ \t]*").match(value, pos)
        assert sep, f"bad list separator in {value!r}"
        assert sep.end() < len(value), f"trailing comma in {value!r}"
        pos = sep.end()


# -- fixtures --------------------------------------------------------------------------------

TENANT = Policy("tenant", 1000, 900)
LOGIN_IP = Policy("login-ip", 5, 900, algorithm="sliding_window")
WEBHOOK = Policy("webhook", 100, 60)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


def tenant_from_header(app: Any) -> Any:
    """Stand-in for an auth layer: copies x-tenant into scope["state"]["tenant_id"]."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        for k, v in scope.get("headers", ()):
            if k == b"x-tenant":
                scope.setdefault("state", {})["tenant_id"] = v.decode()
        await app(scope, receive, send)

    return wrapped


def make_app(limiter: FakeLimiter, **kwargs: Any) -> Any:
    rules = [
        Rule("/login$", ((LOGIN_IP, by_ip),), methods=frozenset({"post"})),
        Rule("/hooks", ((WEBHOOK, by_header("x-source")),)),
    ]
    inner = RateLimitMiddleware(
        hello, limiter=limiter, rules=rules, default=[(TENANT, by_state("tenant_id"))], **kwargs
    )
    return RequestIdMiddleware(tenant_from_header(inner))


def client(app: Any, peer: str = "203.0.113.9") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_allowed_response_carries_parseable_draft_headers() -> None:
    """An allowed response carries RateLimit-Policy and RateLimit as sf-lists, tightest first."""
    limiter = FakeLimiter()
    async with client(make_app(limiter)) as c:
        resp = await c.post("/login", headers={"x-tenant": "acme"})
    assert resp.status_code == 200
    assert resp.headers["x-app"] == "1"
    policies = parse_sf_list(resp.headers["ratelimit-policy"])
    limits = parse_sf_list(resp.headers["ratelimit"])
    assert policies == [("login-ip", {"q": 5, "w": 900}), ("tenant", {"q": 1000, "w": 900})]
    assert limits == [("login-ip", {"r": 4, "t": 451}), ("tenant", {"r": 999, "t": 451})]


@pytest.mark.anyio
async def test_refusal_is_429_problem_with_exact_retry_after() -> None:
    """A refusal is a 429 problem naming the policy; Retry-After is ceil(12.2) = 13 = header t."""
    limiter = FakeLimiter(refuse={"login-ip"}, retry_after=12.2)
    with capture_logs() as logs:
        async with client(make_app(limiter)) as c:
            resp = await c.post("/login", headers={"x-tenant": "acme"})
    assert resp.status_code == 429
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["retry-after"] == "13"
    body = resp.json()
    assert body["status"] == 429
    assert body["type"].endswith("quota_exceeded")
    assert body["violated_policy"] == "login-ip"
    assert body["correlation_id"] == resp.headers["x-request-id"]
    items = dict(parse_sf_list(resp.headers["ratelimit"]))
    assert items["login-ip"] == {"r": 0, "t": 13}
    assert parse_sf_list(resp.headers["ratelimit-policy"])[0][0] == "login-ip"
    everything = resp.text + json.dumps(dict(resp.headers))
    assert "203.0.113.9" not in everything
    assert "acme" not in everything
    [event] = [e for e in logs if e["event"] == "ratelimit.limited"]
    assert event["policy"] == "login-ip"
    assert event["path"] == "/login"
    assert "203.0.113.9" not in json.dumps(event)
    assert len(event["key_hash"]) == 16


@pytest.mark.anyio
async def test_non_matching_routes_are_not_limited() -> None:
    """Requests matching no rule and no applicable default never reach the limiter."""
    limiter = FakeLimiter(refuse={"login-ip", "webhook", "tenant"})
    async with client(make_app(limiter)) as c:
        get_login = await c.get("/login")
        sub = await c.post("/login/extra")
        other = await c.get("/hooksx", headers={"x-source": "s1"})
    assert [r.status_code for r in (get_login, sub, other)] == [200, 200, 200]
    assert "ratelimit" not in get_login.headers
    assert limiter.calls == []


@pytest.mark.anyio
async def test_keyer_returning_none_skips_the_policy() -> None:
    """A keyer returning None (no tenant, no source header) leaves its policy out of the check."""
    limiter = FakeLimiter()
    async with client(make_app(limiter)) as c:
        await c.post("/hooks/orders", headers={"x-source": "shopify"})
        await c.post("/hooks/orders", headers={"x-tenant": "acme"})
    assert limiter.calls == [([("webhook", "shopify")], 1), ([("tenant", "acme")], 1)]


@pytest.mark.anyio
async def test_overlapping_rules_count_a_policy_once() -> None:
    """Two matching rules naming the same policy and key produce one hit, not a duplicate."""
    limiter = FakeLimiter()
    rules = [Rule("/", ((WEBHOOK, by_ip),)), Rule("/hooks", ((WEBHOOK, by_ip),))]
    async with client(RateLimitMiddleware(hello, limiter=limiter, rules=rules)) as c:
        await c.get("/hooks/a")
    assert limiter.calls == [([("webhook", "203.0.113.9")], 1)]


@pytest.mark.anyio
async def test_cost_function_weights_the_request() -> None:
    """The cost callable's value is passed to the limiter."""
    limiter = FakeLimiter()
    app = make_app(limiter, cost=lambda scope: 5 if scope["method"] == "POST" else 1)
    async with client(app) as c:
        resp = await c.post("/hooks/x", headers={"x-source": "s"})
    assert limiter.calls == [([("webhook", "s")], 5)]
    assert parse_sf_list(resp.headers["ratelimit"]) == [("webhook", {"r": 95, "t": 31})]


@pytest.mark.anyio
async def test_by_ip_uses_trusted_proxy_result_not_forwarded_header() -> None:
    """by_ip keys on the trusted-proxy result; X-Forwarded-For from an untrusted peer is ignored."""
    limiter = FakeLimiter()
    inner = RateLimitMiddleware(hello, limiter=limiter, rules=[Rule("/", ((LOGIN_IP, by_ip),))])
    proxies = TrustedProxies.from_strings(["10.0.0.0/8"])
    app = ClientIPMiddleware(inner, trusted_proxies=proxies)
    spoof = {"x-forwarded-for": "1.2.3.4"}
    async with client(app, peer="203.0.113.9") as c:
        await c.get("/", headers=spoof)
    async with client(app, peer="10.0.0.5") as c:
        await c.get("/", headers={"x-forwarded-for": "198.51.100.7"})
    bare = RateLimitMiddleware(hello, limiter=limiter, rules=[Rule("/", ((LOGIN_IP, by_ip),))])
    async with client(bare, peer="192.0.2.1") as c:
        await c.get("/", headers=spoof)
    keys = [call[0][0][1] for call in limiter.calls]
    assert keys == ["203.0.113.9", "198.51.100.7", "192.0.2.1"]


@pytest.mark.anyio
async def test_websockets_pass_through() -> None:
    """WebSocket scopes reach the app untouched and the limiter is never consulted."""
    limiter = FakeLimiter(refuse={"login-ip"})
    app = RateLimitMiddleware(hello, limiter=limiter, rules=[Rule("/", ((LOGIN_IP, by_ip),))])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("192.0.2.1", 1)}
    await app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1000}]
    assert limiter.calls == []


@pytest.mark.anyio
async def test_shadow_policies_are_not_advertised() -> None:
    """A shadow policy is checked but left out of the response headers."""
    limiter = FakeLimiter()
    shadow = Policy("trial", 10, 60, shadow=True)
    rules = [Rule("/", ((shadow, by_ip), (WEBHOOK, by_ip)))]
    async with client(RateLimitMiddleware(hello, limiter=limiter, rules=rules)) as c:
        resp = await c.get("/")
    assert [n for n, _ in parse_sf_list(resp.headers["ratelimit-policy"])] == ["webhook"]
    assert [n for n, _ in limiter.calls[0][0]] == ["trial", "webhook"]


class DownStore:
    """An AtomicScripts store whose backend is unreachable."""

    async def run(self, script: object, keys: object, args: object) -> None:
        raise StoreUnavailable


@pytest.mark.anyio
async def test_store_down_fail_closed_is_503_and_fail_open_passes() -> None:
    """With the store down (real core), fail-closed is a 503 and fail-open passes, no headers."""
    limiter = RateLimiter(DownStore())
    closed = Policy("closed", 10, 60, fail_mode="closed")
    rules = [Rule("/strict", ((closed, by_ip),)), Rule("/", ((WEBHOOK, by_ip),))]
    async with client(RateLimitMiddleware(hello, limiter=limiter, rules=rules)) as c:
        strict = await c.get("/strict")
        lenient = await c.get("/other")
    assert strict.status_code == 503
    assert strict.json()["code"] == "store.unavailable"
    assert strict.headers["retry-after"] == "1"
    assert lenient.status_code == 200
    assert "ratelimit" not in lenient.headers


@pytest.mark.anyio
async def test_store_failures_are_logged_sampled_per_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outage refusing 60 requests logs ratelimit.store_failed once, then once a second."""
    now = [0.0]
    sampler = Sampler(clock=lambda: now[0])
    monkeypatch.setattr(ratelimit_http, "_STORE_FAILURES", sampler)
    closed = Policy("closed", 10, 60, fail_mode="closed")
    app = RateLimitMiddleware(
        hello, limiter=RateLimiter(DownStore()), rules=[Rule("/", ((closed, by_ip),))]
    )
    with capture_logs() as logs:
        async with client(app) as c:
            statuses = [(await c.get("/x")).status_code for _ in range(50)]
            now[0] += 1
            statuses += [(await c.get("/x")).status_code for _ in range(10)]
    assert statuses == [503] * 60
    failed = [e for e in logs if e["event"] == "ratelimit.store_failed"]
    assert [(e["log_level"], e["policy"], e["suppressed"]) for e in failed] == [
        ("warning", "closed", 0),
        ("warning", "closed", 49),
    ]
    assert sampler.pending() == {"closed": 9}


@pytest.mark.anyio
async def test_real_core_on_memory_store_limits_and_advertises() -> None:
    """With the real core on MemoryStore, the 3rd request of a 2-per-minute policy is refused."""
    limiter = RateLimiter(MemoryStore())
    policy = Policy("pair", 2, 60, algorithm="sliding_window")
    rules = [Rule("/", ((policy, by_ip),))]
    async with client(RateLimitMiddleware(hello, limiter=limiter, rules=rules)) as c:
        responses = [await c.get("/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert parse_sf_list(responses[0].headers["ratelimit-policy"]) == [("pair", {"q": 2, "w": 60})]
    assert parse_sf_list(responses[1].headers["ratelimit"])[0][1]["r"] == 0
    refused = responses[2]
    [(name, params)] = parse_sf_list(refused.headers["ratelimit"])
    assert name == "pair"
    assert params["t"] == int(refused.headers["retry-after"]) >= 1


def test_rule_paths_match_whole_segments_or_exactly() -> None:
    """Prefixes match on segment boundaries, a trailing $ is exact, methods filter."""
    orders = Rule("/api/orders", ())
    assert orders.matches("GET", "/api/orders")
    assert orders.matches("GET", "/api/orders/7")
    assert not orders.matches("GET", "/api/ordersx")
    exact = Rule("/login$", (), methods=frozenset({"post"}))
    assert exact.matches("POST", "/login")
    assert not exact.matches("POST", "/login/x")
    assert not exact.matches("GET", "/login")
    assert Rule("/", ()).matches("DELETE", "/anything")
    with pytest.raises(ValueError, match="start with"):
        Rule("api", ())


def test_header_helpers_round_seconds_up() -> None:
    """Helpers write integer seconds rounded up: a 0.5 s window is w=1, a 0.01 s reset is t=1."""
    policy = Policy("tiny", 3, 0.5)
    result = PolicyResult(policy, allowed=True, remaining=2, reset_after=0.01, retry_after=0.0)
    assert parse_sf_list(policy_header([result])) == [("tiny", {"q": 3, "w": 1})]
    assert parse_sf_list(ratelimit_header([result])) == [("tiny", {"r": 2, "t": 1})]


def test_parser_rejects_what_the_draft_syntax_forbids() -> None:
    """The test parser is strict: tokens, floats, trailing commas and bad escapes fail."""
    for bad in ("tenant;q=1", '"t";q=1.5', '"t";q=1,', '"a\\x"', '"t";Q=1'):
        with pytest.raises(AssertionError):
            parse_sf_list(bad)
    assert parse_sf_list('"a\\"b";q=1 , "c";w=2') == [('a"b', {"q": 1}), ("c", {"w": 2})]


@pytest.mark.anyio
async def test_fastapi_dependency_limits_and_renders_429() -> None:
    """The FastAPI dependency sets headers when allowed and raises a rendered 429 when refused."""
    from fastapi import Depends, FastAPI

    from hardened.fastapi import install_problem_handlers

    limiter = FakeLimiter()
    app = FastAPI()
    install_problem_handlers(app)
    guard = rate_limit(limiter, (WEBHOOK, by_route), (TENANT, by_state("tenant_id")))

    @app.get("/orders/{order_id}", dependencies=[Depends(guard)])
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    async with client(app) as c:
        ok = await c.get("/orders/7")
        limiter.refuse = {"webhook"}
        limiter.retry_after = 2.0
        refused = await c.get("/orders/8")
    assert ok.status_code == 200
    assert ok.json() == {"id": 7}
    assert parse_sf_list(ok.headers["ratelimit"]) == [("webhook", {"r": 99, "t": 31})]
    assert limiter.calls[0] == ([("webhook", "/orders/{order_id}")], 1)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert dict(parse_sf_list(refused.headers["ratelimit"]))["webhook"] == {"r": 0, "t": 2}
    assert refused.json()["violated_policy"] == "webhook"


@pytest.mark.anyio
async def test_three_policies_over_http_are_one_redis_command(redis_url: str) -> None:
    """IP, user and tenant of each request: one EVALSHA on Redis; a refusal consumes nothing."""
    prefix, name = f"test:{uuid.uuid4().hex}:", f"rl-http-{uuid.uuid4().hex}"
    pool = BlockingConnectionPool.from_url(redis_url, client_name=name, max_connections=4)
    store = RedisStore(Redis(connection_pool=pool), prefix=prefix, owns_client=True)
    ip, user = Policy("ip", 100, 60), Policy("user", 2, 60, algorithm="sliding_window")
    rules = [Rule("/", ((ip, by_ip), (user, by_header("x-user"))))]
    app = RateLimitMiddleware(
        hello, limiter=RateLimiter(store), rules=rules, default=[(TENANT, by_header("x-tenant"))]
    )
    probe, monitor = Redis.from_url(redis_url), Redis.from_url(redis_url)
    alice = {"x-user": "alice", "x-tenant": "t1"}
    try:
        async with client(app) as c:
            first = await c.get("/", headers=alice)  # warm-up: script loaded, connection open
            ours = {
                cl["addr"].rsplit(":", 1)[1]
                for cl in await probe.client_list()
                if cl["name"] == name
            }
            marker = uuid.uuid4().hex
            async with monitor.monitor() as lines:
                await probe.echo(marker + "-start")
                second = await c.get("/", headers=alice)
                refused = await c.get("/", headers=alice)
                bob = await c.get("/", headers={"x-user": "bob", "x-tenant": "t1"})
                await probe.echo(marker)
                seen = []
                while marker != (line := await lines.next_command())["command"].split(" ")[-1]:
                    seen.append(line)
    finally:
        await monitor.aclose()
        await probe.aclose()
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*")]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()
    start = next(i for i, ln in enumerate(seen) if ln["command"].endswith(marker + "-start"))
    mine = [ln["command"].split(" ")[0] for ln in seen[start:] if ln["client_port"] in ours]
    assert mine == ["EVALSHA"] * 3
    assert [first.status_code, second.status_code, refused.status_code] == [200, 200, 429]
    assert refused.json()["violated_policy"] == "user"
    remaining = {n: p["r"] for n, p in parse_sf_list(bob.headers["ratelimit"])}
    # alice's refused third request took nothing from the IP or tenant quotas.
    assert remaining == {"ip": 97, "user": 1, "tenant": 997}


@pytest.mark.anyio
async def test_cost_above_capacity_is_a_422_without_retry_hint() -> None:
    """A cost the policy can never admit is a 422 problem: no Retry-After, no RateLimit fields."""
    limiter = RateLimiter(MemoryStore())
    exports = Policy("exports", 5, 60, algorithm="sliding_window")
    rules = [Rule("/", ((exports, by_ip),))]

    def cost(scope: Scope) -> int:
        return int(dict(scope["headers"]).get(b"x-cost", b"1"))

    app = RequestIdMiddleware(RateLimitMiddleware(hello, limiter=limiter, rules=rules, cost=cost))
    with capture_logs() as logs:
        async with client(app) as c:
            refused = await c.get("/", headers={"x-cost": "6"})
            full = await c.get("/", headers={"x-cost": "5"})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in refused.headers
    assert "ratelimit" not in refused.headers
    assert "ratelimit-policy" not in refused.headers
    body = refused.json()
    assert body["code"] == "ratelimit.cost_exceeds_limit"
    assert (body["violated_policy"], body["cost"], body["max_cost"]) == ("exports", 6, 5)
    assert body["correlation_id"] == refused.headers["x-request-id"]
    # The refusal consumed nothing: the whole quota is still there.
    assert full.status_code == 200
    assert parse_sf_list(full.headers["ratelimit"])[0][1]["r"] == 0
    [event] = [e for e in logs if e["event"] == "ratelimit.impossible"]
    assert (event["policy"], event["cost"], event["max_cost"]) == ("exports", 6, 5)
    assert not [e for e in logs if e["event"] == "ratelimit.limited"]


@pytest.mark.anyio
async def test_enforce_raises_cost_exceeds_limit_and_dependency_renders_it() -> None:
    """A cost above the burst: enforce raises CostExceedsLimit, the dependency renders a 422."""
    from fastapi import Depends, FastAPI

    from hardened.fastapi import install_problem_handlers

    limiter = RateLimiter(MemoryStore())
    bulk = Policy("bulk", 100, 60, burst=3)
    with pytest.raises(CostExceedsLimit) as raised:
        await enforce(limiter, [(bulk, "k")], cost=4)
    assert (raised.value.status, raised.value.code) == (422, "ratelimit.cost_exceeds_limit")
    assert raised.value.headers == {}
    assert await enforce(limiter, [(bulk, "k")], cost=3)  # the capacity itself is admitted
    decision = await limiter.check([(bulk, "k")], cost=4)
    assert ratelimit_headers(decision) == {}  # stand-ins are never advertised
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/imports", dependencies=[Depends(rate_limit(limiter, (bulk, by_ip), cost=4))])
    async def imports() -> dict[str, str]:
        return {"ok": "yes"}

    async with client(app) as c:
        resp = await c.post("/imports")
    assert resp.status_code == 422
    assert resp.json()["code"] == "ratelimit.cost_exceeds_limit"
    assert "retry-after" not in resp.headers
