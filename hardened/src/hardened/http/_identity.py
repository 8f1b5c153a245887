"""Who is calling: one pure-ASGI step that verifies the request's credential once.

Route authorization, CSRF, the idempotency scope, rate-limit keys and the
tenant session all need the caller. Each parsing the credential itself is how
they drift apart: two formats for one principal, a cookie that one of them
does not know about. So the caller is worked out here, once, and every other
component reads the `Identity` this step leaves in ``scope["state"]``.

Which credential
    ``Authorization: Bearer <token>`` wins. When it is present the cookies are
    not looked at: browsers never attach that header on their own, so such a
    request carries no ambient authority. Otherwise the configured credential
    cookies that are present are handed over together (an app may need two,
    e.g. an access-token cookie and the session cookie it belongs to). The
    header or a credential cookie sent twice is ambiguous (cookie tossing) and
    recorded as a refusal without asking the app.

What is recorded
    The app's ``authenticate`` turns `Credentials` into an `Identity`
    (principal, tenant, role, session). This step, not the app, sets ``via``:
    ``"header"`` for a bearer credential, ``"cookie"`` when the app accepted a
    cookie credential (a principal or a session came back). So the library
    knows for certain which requests are cookie-authenticated, whatever the app
    does, and `CSRFMiddleware` checks exactly those.

It never refuses
    No credential is `ANONYMOUS`. A credential the app refused (a
    `HardenedError` raised by ``authenticate``: bad token, revoked session, a
    lookup whose database is down) is recorded in ``Identity.error``; the
    route's dependency raises it (401, or 503 for a lookup that could not be
    made), and a public route simply runs. Anything else ``authenticate``
    raises is a bug and propagates. WebSocket and lifespan scopes pass through:
    sockets authenticate in their handshake (`hardened.auth.websockets`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from hardened._asgi import headers_named
from hardened.errors import HardenedError, Unauthorized

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hardened.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "ANONYMOUS",
    "IDENTITY_STATE_KEY",
    "Authenticate",
    "Credentials",
    "Identity",
    "IdentityMiddleware",
    "identity_of",
]

IDENTITY_STATE_KEY = "identity"

Via = Literal["header", "cookie"]


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of one request, as the identity step recorded it.

    ``principal`` names the caller across requests (``"user:<id>"``,
    ``"key:<id>"``: one format per kind of caller), ``kind`` says which kind
    (``"user"``, ``"api_key"``: the app's vocabulary), ``tenant`` the tenant
    the credential belongs to, ``role`` its role there. ``session`` is what a
    CSRF token is bound to (the sign-in session of a cookie credential).
    ``claims`` is the app's own detail (e.g. verified token claims). ``error``
    is set when a credential was presented and refused.
    """

    principal: str | None = None
    kind: str | None = None
    tenant: str | None = None
    role: str | None = None
    via: Via | None = None
    session: str | None = None
    claims: Any = field(default=None, compare=False)
    error: HardenedError | None = field(default=None, compare=False)

    @property
    def authenticated(self) -> bool:
        """Whether a credential was presented and accepted."""
        return self.principal is not None and self.error is None


ANONYMOUS = Identity()


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presented: a bearer token, or else its credential cookies."""

    bearer: str | None = None
    cookies: Mapping[str, str] = field(default_factory=dict)


Authenticate: TypeAlias = Callable[[Credentials], Awaitable[Identity]]
"""The app's verifier: credentials in, an `Identity` out (or a `HardenedError` raised)."""


def identity_of(scope: Scope) -> Identity | None:
    """The identity the step recorded for this request; None when no identity step ran."""
    state = scope.get("state")
    if not state:
        return None
    found = state.get(IDENTITY_STATE_KEY)
    return found if isinstance(found, Identity) else None


def _ambiguous(via: Via) -> Identity:
    return Identity(
        via=via,
        error=Unauthorized(
            "The request carries more than one credential of the same kind.",
            code="auth.ambiguous_credentials",
            context={"via": via},
        ),
    )


_CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie"})


def _presented(scope: Scope, cookie_names: frozenset[str]) -> Credentials | Identity | None:
    """The request's credentials; an `Identity` refusal when ambiguous; None when there are none."""
    sent = headers_named(scope, _CREDENTIAL_HEADERS)  # one pass for both
    authorization = [value for name, value in sent if name == b"authorization"]
    if authorization:
        if len(authorization) > 1:
            return _ambiguous("header")
        scheme, _, token = authorization[0].decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return Credentials(bearer=token.strip())
    found: dict[str, str] = {}
    cookies = [value for name, value in sent if name == b"cookie"] if cookie_names else []
    for header in cookies:
        for pair in header.decode("latin-1").split(";"):
            name, sep, value = pair.strip().partition("=")
            if not sep or name not in cookie_names or not value.strip():
                continue
            if name in found:
                return _ambiguous("cookie")
            found[name] = value.strip()
    return Credentials(cookies=found) if found else None


class IdentityMiddleware:
    """Record the request's `Identity` in ``scope["state"]`` (see the module docstring).

    ``authenticate`` is the app's verifier; ``cookies`` are the names of the
    cookies that carry credentials (none: header credentials only).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Authenticate,
        cookies: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.cookies = frozenset(cookies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[IDENTITY_STATE_KEY] = await self.identify(scope)
        await self.app(scope, receive, send)

    async def identify(self, scope: Scope) -> Identity:
        """The identity of one request (what the middleware records)."""
        presented = _presented(scope, self.cookies)
        if presented is None:
            return ANONYMOUS
        if isinstance(presented, Identity):
            return presented
        via: Via = "header" if presented.bearer is not None else "cookie"
        try:
            identity = await self.authenticate(presented)
        except HardenedError as refused:
            return Identity(via=via if via == "header" else None, error=refused)
        if via == "cookie" and identity.principal is None and identity.session is None:
            # The app did not act on any cookie: nothing here is cookie-authenticated.
            return replace(identity, via=None)
        return replace(identity, via=via)
