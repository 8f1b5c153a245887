"""CSRF: signed double-submit tokens bound to the session, refused as 403 problems, never warned."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from hardened.errors import Unauthorized
from hardened.http import Credentials, Identity, IdentityMiddleware
from hardened.http._csrf import (
    CSRFMiddleware,
    CSRFPolicy,
    issue_csrf_token,
    set_csrf_cookie_header,
    verify_csrf_token,
)
from hardened.http._request_id import RequestIdMiddleware

if TYPE_CHECKING:
    from hardened.types import Receive, Scope, Send

SECRET = b"k" * 16 + b"e" * 16 + b"y" * 8
POLICY = CSRFPolicy(secret=SECRET, exempt_paths=("/webhooks",))
SESSION = "sess-0123456789"


class App:
    """Answers 200 and counts the requests that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def authenticate(credentials: Credentials) -> Identity:
    """The app's verifier: a bearer key, a session cookie, or an access cookie naming a session."""
    if credentials.bearer is not None:
        return Identity(principal="key:1")
    cookies = credentials.cookies
    if cookies.get("session") == "expired":
        raise Unauthorized(code="auth.token_expired")
    session = cookies.get("session") or cookies.get("access")
    return Identity(principal="user:1", session=session)


def client_for(app: App, policy: CSRFPolicy = POLICY) -> httpx.AsyncClient:
    guarded = RequestIdMiddleware(
        IdentityMiddleware(
            CSRFMiddleware(app, policy=policy),
            authenticate=authenticate,
            cookies=("session", "access"),
        )
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://api")


def cookie(session: str | None = SESSION, token: str | None = None) -> dict[str, str]:
    parts = []
    if session is not None:
        parts.append(f"session={session}")
    if token is not None:
        parts.append(f"csrf_token={token}")
    return {"cookie": "; ".join(parts)} if parts else {}


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("hardened_http_csrf_refused_total", {"reason": reason}) or 0.0


@pytest.mark.anyio
async def test_missing_header_is_403_csrf_missing_problem_with_correlation_id() -> None:
    """A cookie-authenticated POST without the header: 403 csrf.missing problem, app not run."""
    app = App()
    token = issue_csrf_token(POLICY, SESSION)
    async with client_for(app) as client:
        response = await client.post("/orders", headers=cookie(token=token))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "csrf.missing"
    assert body["status"] == 403
    assert body["instance"] == "/orders"
    assert "reload" in body["detail"].lower()
    assert body["correlation_id"] == response.headers["x-request-id"]
    assert app.calls == 0


@pytest.mark.anyio
async def test_missing_csrf_cookie_is_csrf_missing() -> None:
    """A header without its csrf_token cookie is refused as csrf.missing."""
    token = issue_csrf_token(POLICY, SESSION)
    async with client_for(App()) as client:
        response = await client.post("/orders", headers={**cookie(), "x-csrf-token": token})
    assert response.status_code == 403
    assert response.json()["code"] == "csrf.missing"


@pytest.mark.anyio
async def test_header_not_matching_cookie_is_csrf_invalid() -> None:
    """Two tokens both valid for the session, one in the header, one in the cookie: 403 invalid."""
    app = App()
    in_cookie, in_header = issue_csrf_token(POLICY, SESSION), issue_csrf_token(POLICY, SESSION)
    async with client_for(app) as client:
        response = await client.post(
            "/orders", headers={**cookie(token=in_cookie), "x-csrf-token": in_header}
        )
    assert response.status_code == 403
    assert response.json()["code"] == "csrf.invalid"
    assert app.calls == 0


@pytest.mark.anyio
async def test_token_signed_for_another_session_is_csrf_invalid() -> None:
    """An attacker's own valid token, planted in cookie and header, fails for the victim session."""
    app = App()
    attacker_token = issue_csrf_token(POLICY, "attacker-session")
    headers = {**cookie(token=attacker_token), "x-csrf-token": attacker_token}
    async with client_for(app) as client:
        response = await client.post("/orders", headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "csrf.invalid"
    assert app.calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "AAAAAAAAAAAAAAAAAAAAAAAA." + "A" * 43,
        issue_csrf_token(CSRFPolicy(secret=b"o" * 32), SESSION),
    ],
    ids=["garbage", "forged-signature", "other-secret"],
)
async def test_forged_or_foreign_tokens_are_csrf_invalid(token: str) -> None:
    """Garbage, a made-up signature or a token from another secret never pass."""
    async with client_for(App()) as client:
        response = await client.post(
            "/orders", headers={**cookie(token=token), "x-csrf-token": token}
        )
    assert response.status_code == 403
    assert response.json()["code"] == "csrf.invalid"


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_valid_double_submit_passes(method: str) -> None:
    """Header equal to the cookie and signed for this session lets every unsafe method through."""
    app = App()
    token = issue_csrf_token(POLICY, SESSION)
    async with client_for(app) as client:
        response = await client.request(
            method, "/orders", headers={**cookie(token=token), "x-csrf-token": token}
        )
    assert response.status_code == 200
    assert app.calls == 1


@pytest.mark.anyio
async def test_bearer_request_without_token_passes() -> None:
    """Authorization: Bearer is never sent by the browser on its own, so it is exempt."""
    app = App()
    headers = {**cookie(), "authorization": "Bearer eyJhbGciOi.x.y"}
    async with client_for(app) as client:
        response = await client.post("/orders", headers=headers)
    assert response.status_code == 200
    assert app.calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize("authorization", ["Basic dTpw", "Bearer ", "Bearer"])
async def test_other_or_empty_authorization_is_not_exempt(authorization: str) -> None:
    """Basic credentials or an empty Bearer do not exempt a cookie-authenticated request."""
    async with client_for(App()) as client:
        response = await client.post(
            "/orders", headers={**cookie(), "authorization": authorization}
        )
    assert response.status_code == 403
    assert response.json()["code"] == "csrf.missing"


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
async def test_safe_methods_pass_without_token(method: str) -> None:
    """Safe methods need no token even with the session cookie."""
    app = App()
    async with client_for(app) as client:
        response = await client.request(method, "/orders", headers=cookie())
    assert response.status_code == 200
    assert app.calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "status"),
    [("/webhooks", 200), ("/webhooks/stripe", 200), ("/webhooksx", 403), ("/api/webhooks", 403)],
)
async def test_exempt_prefix_matches_whole_segments(path: str, status: int) -> None:
    """An exempt prefix covers itself and paths below it, never look-alike siblings."""
    async with client_for(App()) as client:
        response = await client.post(path, headers=cookie())
    assert response.status_code == status


@pytest.mark.anyio
async def test_request_without_credential_cookies_passes() -> None:
    """Without a credential cookie a request is not cookie-authenticated: nothing to forge."""
    app = App()
    async with client_for(app) as client:
        response = await client.post("/signup", headers={"cookie": "theme=dark"})
    assert response.status_code == 200
    assert app.calls == 1


@pytest.mark.anyio
async def test_any_credential_cookie_alone_is_checked() -> None:
    """A request authenticated from another credential cookie (no session cookie) needs a token."""
    app = App()
    token = issue_csrf_token(POLICY, SESSION)
    async with client_for(app) as client:
        refused_ = await client.post("/customers", headers={"cookie": f"access={SESSION}"})
        passed = await client.post(
            "/customers",
            headers={"cookie": f"access={SESSION}; csrf_token={token}", "x-csrf-token": token},
        )
    assert (refused_.status_code, refused_.json()["code"]) == (403, "csrf.missing")
    assert passed.status_code == 200
    assert app.calls == 1


@pytest.mark.anyio
async def test_cookie_the_app_refused_is_not_cookie_authenticated() -> None:
    """A credential cookie the app refused carries no authority: the request reaches the app."""
    app = App()
    async with client_for(app) as client:
        response = await client.post("/auth/login", headers={"cookie": "session=expired"})
    assert response.status_code == 200
    assert app.calls == 1


@pytest.mark.anyio
async def test_guard_refuses_to_run_without_the_identity_step() -> None:
    """Without an identity step the guard cannot know who is cookie-authenticated: it raises."""
    guarded = CSRFMiddleware(App(), policy=POLICY)
    transport = httpx.ASGITransport(app=guarded, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        with pytest.raises(RuntimeError, match="IdentityMiddleware"):
            await client.post("/orders", headers=cookie())


@pytest.mark.anyio
async def test_session_cookie_sent_twice_is_refused() -> None:
    """A tossed second session cookie makes the session ambiguous: refused as invalid."""
    token = issue_csrf_token(POLICY, SESSION)
    headers = {
        "cookie": f"session={SESSION}; session=attacker; csrf_token={token}",
        "x-csrf-token": token,
    }
    async with client_for(App()) as client:
        response = await client.post("/orders", headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "csrf.invalid"


@pytest.mark.anyio
async def test_tossed_extra_csrf_cookie_does_not_lock_the_user_out() -> None:
    """An extra csrf_token cookie beside the real one still lets the valid header through."""
    token = issue_csrf_token(POLICY, SESSION)
    headers = {
        "cookie": f"csrf_token=planted; session={SESSION}; csrf_token={token}",
        "x-csrf-token": token,
    }
    async with client_for(App()) as client:
        response = await client.post("/orders", headers=headers)
    assert response.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (cookie(), "missing_header"),
        ({**cookie(), "x-csrf-token": issue_csrf_token(POLICY, SESSION)}, "missing_cookie"),
        (
            {
                **cookie(token=issue_csrf_token(POLICY, "other")),
                "x-csrf-token": issue_csrf_token(POLICY, SESSION),
            },
            "mismatch",
        ),
    ],
)
async def test_each_refusal_is_logged_once_and_counted_once(
    headers: dict[str, str], reason: str
) -> None:
    """One refusal: exactly one csrf.refused warning (reason, path) and +1 on its counter."""
    before = refused(reason)
    async with client_for(App()) as client:
        with capture_logs() as logs:
            response = await client.post("/orders", headers=headers)
    assert response.status_code == 403
    events = [e for e in logs if e["event"] == "csrf.refused"]
    assert len(events) == 1
    assert events[0]["reason"] == reason
    assert events[0]["path"] == "/orders"
    assert events[0]["log_level"] == "warning"
    assert refused(reason) == before + 1


@pytest.mark.anyio
async def test_passing_requests_are_neither_logged_nor_counted() -> None:
    """A valid request leaves no csrf.refused event and no counter increment."""
    token = issue_csrf_token(POLICY, SESSION)
    before = sum(refused(r) for r in ("missing_header", "mismatch", "bad_signature"))
    async with client_for(App()) as client:
        with capture_logs() as logs:
            await client.post("/orders", headers={**cookie(token=token), "x-csrf-token": token})
    assert not [e for e in logs if e["event"] == "csrf.refused"]
    assert sum(refused(r) for r in ("missing_header", "mismatch", "bad_signature")) == before


@pytest.mark.anyio
async def test_websocket_scopes_pass_through() -> None:
    """WebSocket handshakes are not CSRF-checked here (they authenticate without cookies)."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    guarded = CSRFMiddleware(app, policy=POLICY)

    async def receive() -> dict[str, str]:
        return {"type": "websocket.connect"}

    async def send(message: object) -> None:
        raise AssertionError(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"cookie", b"session=x")]}
    await guarded(scope, receive, send)  # type: ignore[arg-type]
    assert seen == ["websocket"]


def test_tokens_are_fresh_and_bound_to_their_session() -> None:
    """Each token is new, verifies for its own session only (length-prefixed, no splicing)."""
    first, second = issue_csrf_token(POLICY, "ab"), issue_csrf_token(POLICY, "ab")
    assert first != second
    assert verify_csrf_token(POLICY, "ab", first)
    assert not verify_csrf_token(POLICY, "a", first)
    assert not verify_csrf_token(POLICY, "abc", first)
    nonce, _, signature = first.partition(".")
    assert not verify_csrf_token(POLICY, "ab", nonce[:-1] + "." + signature)


def test_cookie_header_is_script_readable_secure_and_samesite() -> None:
    """The CSRF cookie is readable by the SPA (no HttpOnly), Secure, SameSite=Lax, Path=/."""
    token = issue_csrf_token(POLICY, SESSION)
    name, value = set_csrf_cookie_header(POLICY, token)
    assert name == b"set-cookie"
    assert value.decode() == f"csrf_token={token}; Path=/; SameSite=Lax; Secure"
    relaxed = CSRFPolicy(secret=SECRET, cookie_secure=False, cookie_samesite="Strict")
    assert set_csrf_cookie_header(relaxed, token)[1].endswith(b"SameSite=Strict")
    with pytest.raises(ValueError, match="not a CSRF token"):
        set_csrf_cookie_header(POLICY, "x; Domain=evil.com")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": b"short"}, "at least 32 bytes"),
        ({"secret": SECRET, "exempt_paths": ("/",)}, "exempt_paths"),
        ({"secret": SECRET, "exempt_paths": ("webhooks",)}, "exempt_paths"),
        ({"secret": SECRET, "cookie_samesite": "none", "cookie_secure": False}, "Secure"),
        ({"secret": SECRET, "cookie_samesite": "sometimes"}, "cookie_samesite"),
        ({"secret": SECRET, "csrf_cookie": "bad name"}, "csrf_cookie"),
        ({"secret": SECRET, "header": "cookie"}, "header"),
        ({"secret": SECRET, "previous_secrets": (b"short",)}, "previous_secrets"),
        ({"secret": SECRET, "previous_secrets": ("t" * 40,)}, "previous_secrets"),
        ({"secret": SECRET, "previous_secrets": (SECRET,)}, "repeat"),
    ],
)
def test_policy_refuses_unsafe_configuration(kwargs: dict[str, object], message: str) -> None:
    """Short secrets, exempting everything, insecure SameSite=None and bad names are refused."""
    with pytest.raises(ValueError, match=message):
        CSRFPolicy(**kwargs)  # type: ignore[arg-type]


def test_secret_is_not_in_repr() -> None:
    """The policy's repr never shows the secret, nor a previous one."""
    assert "kkkk" not in repr(POLICY)
    assert "oooo" not in repr(CSRFPolicy(secret=SECRET, previous_secrets=(OLD_SECRET,)))


OLD_SECRET = b"o" * 16 + b"l" * 16 + b"d" * 8


def test_token_of_a_previous_secret_verifies_and_new_tokens_use_the_current() -> None:
    """After a rotation, tokens of the previous secret verify; new ones verify without it."""
    before = CSRFPolicy(secret=OLD_SECRET)
    rotated = CSRFPolicy(secret=SECRET, previous_secrets=(OLD_SECRET,))
    old_token = issue_csrf_token(before, SESSION)
    assert verify_csrf_token(rotated, SESSION, old_token)
    assert not verify_csrf_token(rotated, "another-session", old_token)
    assert not verify_csrf_token(CSRFPolicy(secret=SECRET), SESSION, old_token)
    new_token = issue_csrf_token(rotated, SESSION)
    assert verify_csrf_token(CSRFPolicy(secret=SECRET), SESSION, new_token)
    assert not verify_csrf_token(before, SESSION, new_token)


@pytest.mark.anyio
async def test_request_with_a_pre_rotation_token_passes_only_with_the_previous_secret() -> None:
    """Over HTTP: a token from before the rotation passes with previous_secrets, 403 without."""
    old_token = issue_csrf_token(CSRFPolicy(secret=OLD_SECRET), SESSION)
    headers = {**cookie(token=old_token), "x-csrf-token": old_token}
    app = App()
    rotated = CSRFPolicy(secret=SECRET, previous_secrets=(OLD_SECRET,))
    async with client_for(app, rotated) as client:
        passed = await client.post("/orders", headers=headers)
    async with client_for(app, CSRFPolicy(secret=SECRET)) as client:
        dropped = await client.post("/orders", headers=headers)
    assert passed.status_code == 200
    assert (dropped.status_code, dropped.json()["code"]) == (403, "csrf.invalid")
    assert app.calls == 1
