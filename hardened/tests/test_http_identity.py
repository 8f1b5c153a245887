"""IdentityMiddleware: one credential per request, verified once, ``via`` set by the library."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from hardened.errors import DependencyUnavailable, Unauthorized
from hardened.http import ANONYMOUS, Credentials, Identity, IdentityMiddleware, identity_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.types import Message, Receive, Scope, Send

COOKIES = ("session", "access")


class Downstream:
    """The wrapped app: records the identity each scope carried and answers 200."""

    def __init__(self) -> None:
        self.seen: list[Identity | None] = []
        self.types: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.types.append(scope["type"])
        self.seen.append(identity_of(scope))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


class Verifier:
    """The app's authenticate: records every call, answers with ``answer`` (or a default)."""

    def __init__(self, answer: Identity | BaseException | None = None) -> None:
        self.answer = answer
        self.calls: list[Credentials] = []

    async def __call__(self, credentials: Credentials) -> Identity:
        self.calls.append(credentials)
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer is not None:
            return self.answer
        if credentials.bearer is not None:
            return Identity(principal="key:1", kind="api_key", role="admin")
        return Identity(principal="user:1", kind="user", session=credentials.cookies.get("session"))


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def identify(
    headers: Sequence[tuple[str, str]],
    verifier: Verifier,
    *,
    cookies: Sequence[str] = COOKIES,
) -> Identity | None:
    """Send one HTTP request with exactly these raw headers; the identity the app saw."""
    downstream = Downstream()
    middleware = IdentityMiddleware(downstream, authenticate=verifier, cookies=cookies)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }
    await middleware(scope, _receive, send)
    assert sent[0]["status"] == 200, "the identity step never answers on its own"
    assert len(downstream.seen) == 1
    return downstream.seen[0]


@pytest.mark.anyio
async def test_bearer_header_wins_and_cookies_are_not_passed() -> None:
    """With a bearer token and credential cookies, authenticate gets only the token; via header."""
    verifier = Verifier()
    identity = await identify(
        [("authorization", "Bearer tok-1"), ("cookie", "session=s1; access=a1")], verifier
    )
    assert verifier.calls == [Credentials(bearer="tok-1")]
    assert verifier.calls[0].cookies == {}
    assert identity is not None
    assert (identity.principal, identity.via) == ("key:1", "header")
    assert identity.authenticated


@pytest.mark.anyio
async def test_bearer_scheme_is_case_insensitive_and_token_trimmed() -> None:
    """``bearer  tok`` is a bearer credential, whitespace around the token removed."""
    verifier = Verifier()
    identity = await identify([("authorization", "bearer   tok-2  ")], verifier)
    assert verifier.calls == [Credentials(bearer="tok-2")]
    assert identity is not None
    assert identity.via == "header"


@pytest.mark.anyio
async def test_no_credential_is_anonymous_without_asking_the_app() -> None:
    """No Authorization and no credential cookie: ANONYMOUS, authenticate never called."""
    verifier = Verifier()
    identity = await identify([("accept", "application/json")], verifier)
    assert identity is ANONYMOUS
    assert not identity.authenticated
    assert identity.via is None
    assert verifier.calls == []


@pytest.mark.anyio
async def test_cookies_that_are_not_configured_are_ignored() -> None:
    """Only configured cookie names are credentials: others are neither passed nor counted."""
    verifier = Verifier()
    assert await identify([("cookie", "theme=dark; lang=en")], verifier) is ANONYMOUS
    assert verifier.calls == []
    identity = await identify([("cookie", "theme=dark; session=s1; theme=light")], verifier)
    assert verifier.calls == [Credentials(cookies={"session": "s1"})]
    assert identity is not None
    assert identity.via == "cookie"


@pytest.mark.anyio
async def test_without_configured_cookies_a_cookie_is_never_a_credential() -> None:
    """``cookies=()``: header credentials only, so a session cookie leaves the caller anonymous."""
    verifier = Verifier()
    assert await identify([("cookie", "session=s1")], verifier, cookies=()) is ANONYMOUS
    assert verifier.calls == []


@pytest.mark.anyio
async def test_configured_cookies_are_handed_over_together() -> None:
    """Both credential cookies, split over two Cookie headers, reach authenticate in one call."""
    verifier = Verifier()
    identity = await identify([("cookie", "access=a1"), ("cookie", "session=s1")], verifier)
    assert verifier.calls == [Credentials(cookies={"access": "a1", "session": "s1"})]
    assert identity is not None
    assert (identity.principal, identity.session, identity.via) == ("user:1", "s1", "cookie")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc"]
)
async def test_non_bearer_authorization_falls_back_to_cookies(authorization: str) -> None:
    """Basic, an empty Bearer or another scheme is no bearer credential: the cookies are used."""
    verifier = Verifier()
    identity = await identify(
        [("authorization", authorization), ("cookie", "session=s1")], verifier
    )
    assert verifier.calls == [Credentials(cookies={"session": "s1"})]
    assert identity is not None
    assert identity.via == "cookie"
    assert await identify([("authorization", authorization)], verifier) is ANONYMOUS
    assert len(verifier.calls) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Bearer a"), ("authorization", "Bearer b")],
        [("authorization", "Bearer a"), ("authorization", "Bearer a")],
        [("authorization", "Basic dTpw"), ("authorization", "Bearer a")],
    ],
    ids=["two-tokens", "same-token-twice", "basic-and-bearer"],
)
async def test_repeated_authorization_header_is_ambiguous(headers: list[tuple[str, str]]) -> None:
    """Two Authorization headers: a 401 auth.ambiguous_credentials refusal, the app not asked."""
    verifier = Verifier()
    identity = await identify([*headers, ("cookie", "session=s1")], verifier)
    assert verifier.calls == []
    assert identity is not None
    assert isinstance(identity.error, Unauthorized)
    assert (identity.error.status, identity.error.code) == (401, "auth.ambiguous_credentials")
    assert identity.via == "header"
    assert identity.principal is None
    assert not identity.authenticated


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [("cookie", "session=victim; session=attacker")],
        [("cookie", "session=victim"), ("cookie", "session=attacker")],
        [("cookie", "access=a1; theme=x"), ("cookie", "access=a2")],
    ],
    ids=["one-header", "two-headers", "second-cookie-name"],
)
async def test_repeated_credential_cookie_is_ambiguous(headers: list[tuple[str, str]]) -> None:
    """A credential cookie sent twice (cookie tossing): ambiguous_credentials, app not asked."""
    verifier = Verifier()
    identity = await identify(headers, verifier)
    assert verifier.calls == []
    assert identity is not None
    assert identity.error is not None
    assert (identity.error.status, identity.error.code) == (401, "auth.ambiguous_credentials")
    assert identity.via == "cookie"


@pytest.mark.anyio
async def test_a_bearer_request_ignores_a_repeated_cookie() -> None:
    """With a bearer token the cookies are not looked at, so a tossed cookie is no refusal."""
    verifier = Verifier()
    identity = await identify(
        [("authorization", "Bearer tok"), ("cookie", "session=a; session=b")], verifier
    )
    assert verifier.calls == [Credentials(bearer="tok")]
    assert identity is not None
    assert identity.error is None
    assert identity.via == "header"


@pytest.mark.anyio
async def test_via_is_set_by_the_middleware_not_the_app() -> None:
    """An authenticate claiming via="header" for a cookie (and vice versa) is overridden."""
    liar = Verifier(Identity(principal="user:1", session="s1", via="header"))
    identity = await identify([("cookie", "session=s1")], liar)
    assert identity is not None
    assert identity.via == "cookie"
    assert identity.principal == "user:1"

    liar = Verifier(Identity(principal="key:1", via="cookie"))
    identity = await identify([("authorization", "Bearer tok")], liar)
    assert identity is not None
    assert identity.via == "header"


@pytest.mark.anyio
async def test_cookie_accepted_without_principal_or_session_is_not_cookie_authenticated() -> None:
    """The app returned neither principal nor session for a cookie: via None, whatever it said."""
    verifier = Verifier(Identity(tenant="t1", via="cookie"))
    identity = await identify([("cookie", "session=stale")], verifier)
    assert len(verifier.calls) == 1
    assert identity is not None
    assert identity.via is None
    assert identity.tenant == "t1"
    assert not identity.authenticated


@pytest.mark.anyio
async def test_cookie_with_a_session_but_no_principal_is_cookie_authenticated() -> None:
    """A pre-sign-in session the app recognised still makes the request cookie-authenticated."""
    verifier = Verifier(Identity(session="anon-session"))
    identity = await identify([("cookie", "session=anon-session")], verifier)
    assert identity is not None
    assert (identity.via, identity.session) == ("cookie", "anon-session")


@pytest.mark.anyio
async def test_refused_bearer_is_recorded_and_the_app_still_runs() -> None:
    """A HardenedError from authenticate is kept as the identity's error, via header; app runs."""
    refusal = Unauthorized(code="auth.token_expired")
    verifier = Verifier(refusal)
    identity = await identify([("authorization", "Bearer old")], verifier)
    assert len(verifier.calls) == 1
    assert identity is not None
    assert identity.error is refusal
    assert identity.via == "header"
    assert identity.principal is None
    assert not identity.authenticated


@pytest.mark.anyio
async def test_refused_cookie_is_recorded_with_no_via() -> None:
    """A cookie credential the app refused is recorded as error and is not cookie-authenticated."""
    refusal = DependencyUnavailable("session store down", retry_after=1)
    verifier = Verifier(refusal)
    identity = await identify([("cookie", "session=s1")], verifier)
    assert len(verifier.calls) == 1
    assert identity is not None
    assert identity.error is refusal
    assert identity.error.status == 503
    assert identity.via is None


@pytest.mark.anyio
async def test_a_non_hardened_exception_from_authenticate_propagates() -> None:
    """A bug in authenticate (not a HardenedError) is raised, and the app does not run."""
    downstream = Downstream()
    verifier = Verifier(LookupError("bug in the verifier"))
    middleware = IdentityMiddleware(downstream, authenticate=verifier, cookies=COOKIES)

    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent")

    scope: Scope = {"type": "http", "headers": [(b"authorization", b"Bearer tok")]}
    with pytest.raises(LookupError, match="bug in the verifier"):
        await middleware(scope, _receive, send)
    assert len(verifier.calls) == 1
    assert downstream.seen == []


@pytest.mark.anyio
async def test_authenticate_runs_exactly_once_per_request() -> None:
    """Every request, whatever its credential, costs one authenticate call and no more."""
    verifier = Verifier()
    downstream = Downstream()
    middleware = IdentityMiddleware(downstream, authenticate=verifier, cookies=COOKIES)

    async def send(message: Message) -> None:
        return None

    requests = [
        [(b"authorization", b"Bearer t1")],
        [(b"cookie", b"session=s1; access=a1")],
        [(b"authorization", b"Basic dTpw"), (b"cookie", b"access=a2")],
        [(b"authorization", b"Bearer t2"), (b"cookie", b"session=s2")],
    ]
    for headers in requests:
        await middleware({"type": "http", "headers": headers}, _receive, send)
    assert [c.bearer or dict(c.cookies) for c in verifier.calls] == [
        "t1",
        {"session": "s1", "access": "a1"},
        {"access": "a2"},
        "t2",
    ]
    assert [i.principal if i else None for i in downstream.seen] == [
        "key:1",
        "user:1",
        "user:1",
        "key:1",
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
async def test_websocket_and_lifespan_scopes_pass_through(kind: str) -> None:
    """Non-HTTP scopes reach the app untouched: no authenticate call, no identity recorded."""
    verifier = Verifier()
    downstream = Downstream()
    middleware = IdentityMiddleware(downstream, authenticate=verifier, cookies=COOKIES)

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": kind, "headers": [(b"authorization", b"Bearer tok")]}
    await middleware(scope, _receive, send)
    assert downstream.types == [kind]
    assert downstream.seen == [None]
    assert "state" not in scope
    assert verifier.calls == []


def test_identity_of_reads_only_what_the_step_recorded() -> None:
    """identity_of: None without state or identity, or for a foreign object; else the Identity."""
    who = Identity(principal="user:1")
    assert identity_of({"type": "http"}) is None
    assert identity_of({"type": "http", "state": {}}) is None
    assert identity_of({"type": "http", "state": {"identity": "user:1"}}) is None
    assert identity_of({"type": "http", "state": {"identity": who}}) is who


@pytest.mark.anyio
async def test_existing_state_is_kept() -> None:
    """The identity is added beside what earlier steps put in scope["state"], not over it."""
    downstream = Downstream()
    middleware = IdentityMiddleware(downstream, authenticate=Verifier(), cookies=COOKIES)

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": "http", "headers": [], "state": {"correlation_id": "c-1"}}
    await middleware(scope, _receive, send)
    assert scope["state"] == {"correlation_id": "c-1", "identity": ANONYMOUS}
