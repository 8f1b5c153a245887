"""CSRF for cookie-authenticated requests: a signed double-submit token, enforced.

Why a guard at all, and why this shape? A browser attaches cookies to any
request a hostile page makes, so a cookie alone cannot prove the user meant
the request. The seed report fixed exactly this by failing fast where the
client used to log a warning and carry on: here a missing or bad token is
always a 403 problem, never a warning.

Which requests: exactly those the app authenticated from a cookie, as the
identity step (`hardened.http.IdentityMiddleware`, which must run first)
recorded them (``Identity.via == "cookie"``). Deciding by the name of one
session cookie, as this guard once did, let a request carrying only another
credential cookie (an access-token cookie that outlived the session cookie)
through unchecked; the identity step knows every credential the app accepts,
so nothing here has to. Also passing:

* safe methods (``GET``, ``HEAD``, ``OPTIONS``, ``TRACE``): they must not
  change state;
* paths covered by ``exempt_paths`` (`PathPattern` specs: ``/webhooks`` covers
  ``/webhooks/x`` but not ``/webhooksx``): they authenticate otherwise, e.g.
  by a webhook signature;
* requests authenticated by ``Authorization: Bearer`` (browsers never attach
  it on their own) or not authenticated at all (no ambient authority).

The token is ``<nonce>.<signature>``, the signature an HMAC-SHA256 over the
length-prefixed session the identity step recorded (``Identity.session``, a
sign-in session id) and the nonce. The server keeps no state: the SPA reads
the (non-HttpOnly) ``csrf_token`` cookie and echoes it in the ``X-CSRF-Token``
header, which must equal (constant time) a ``csrf_token`` cookie and carry a
valid signature for the caller's session. A cross-site page can neither read
the cookie nor set a custom header, and because the token is bound to the
session, a token of another session, or one planted through a sibling
subdomain (cookie tossing), is worthless. A session id survives token
refreshes, so one token lasts the whole sign-in.

Rotating the secret: put the old value in ``previous_secrets`` (for as long
as a sign-in lasts, i.e. the refresh-token lifetime, or accept that older
tokens are refused and the SPA reloads one). A token verifies under the
current secret or a previous one; new tokens are always signed with the
current secret.

A refusal is a 403 problem ``csrf.missing`` (no header or no cookie) or
``csrf.invalid`` (including a cookie identity without a session to bind to),
logged once as ``csrf.refused`` (reason, path, method) and counted in
``hardened_http_csrf_refused_total{reason}``. WebSocket scopes pass through:
``hardened.auth.websockets`` authenticates them without cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from hardened._asgi import cookie_values, header_strings
from hardened.errors import CsrfFailed
from hardened.http._identity import identity_of
from hardened.http._paths import PathMap
from hardened.http._problem import send_problem
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from hardened.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "CSRFMiddleware",
    "CSRFPolicy",
    "issue_csrf_token",
    "set_csrf_cookie_header",
    "verify_csrf_token",
]

_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 6265 token
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}\.[A-Za-z0-9_-]{43}")
_DOMAIN = b"hardened.csrf.v1\x00"  # domain separation: the secret may serve other MACs
_MIN_SECRET_BYTES = 32
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class CSRFPolicy:
    """Where the CSRF token lives, and which requests are exempt.

    ``previous_secrets`` still verify tokens (never sign them) during a rotation.
    """

    secret: bytes = field(repr=False)
    previous_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    csrf_cookie: str = "csrf_token"
    header: str = "x-csrf-token"
    safe_methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
    exempt_paths: tuple[str, ...] = ()
    cookie_secure: bool = True
    cookie_samesite: str = "lax"
    _exempt: PathMap[bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < _MIN_SECRET_BYTES:
            msg = f"CSRF secret must be at least {_MIN_SECRET_BYTES} bytes"
            raise ValueError(msg)
        previous = tuple(self.previous_secrets)
        for old in previous:
            if not isinstance(old, bytes) or len(old) < _MIN_SECRET_BYTES:
                msg = f"CSRF previous_secrets must each be at least {_MIN_SECRET_BYTES} bytes"
                raise ValueError(msg)
            if hmac.compare_digest(old, self.secret):
                raise ValueError("CSRF previous_secrets must not repeat the current secret")
        if not _COOKIE_NAME.fullmatch(self.csrf_cookie):
            raise ValueError(f"csrf_cookie is not a valid cookie name: {self.csrf_cookie!r}")
        header = self.header.strip().lower()
        if not _HEADER_NAME.fullmatch(header) or header in {"authorization", "cookie"}:
            raise ValueError(f"not a usable header name: {self.header!r}")
        samesite = self.cookie_samesite.lower()
        if samesite not in _SAMESITE:
            raise ValueError("cookie_samesite must be 'lax', 'strict' or 'none'")
        if samesite == "none" and not self.cookie_secure:
            raise ValueError("SameSite=None cookies must be Secure (browsers drop them otherwise)")
        exempt = PathMap(dict.fromkeys(self.exempt_paths, True), what="exempt_paths")
        if exempt.covers("/") and exempt.covers("/any/path"):
            raise ValueError("exempt_paths must not cover every path")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "cookie_samesite", samesite)
        object.__setattr__(self, "safe_methods", frozenset(m.upper() for m in self.safe_methods))
        object.__setattr__(self, "exempt_paths", tuple(self.exempt_paths))
        object.__setattr__(self, "previous_secrets", previous)
        object.__setattr__(self, "_exempt", exempt)

    def is_exempt(self, path: str) -> bool:
        """Whether an ``exempt_paths`` spec (`PathPattern` syntax) covers ``path``."""
        return self._exempt.covers(path)


def _sign(secret: bytes, session_id: str, nonce: str) -> str:
    session = session_id.encode("utf-8")
    message = _DOMAIN + len(session).to_bytes(4, "big") + session + nonce.encode("ascii")
    return _b64(hmac.new(secret, message, hashlib.sha256).digest())


def issue_csrf_token(policy: CSRFPolicy, session_id: str) -> str:
    """A fresh ``nonce.signature`` token bound to a sign-in session (``Identity.session``)."""
    nonce = _b64(secrets.token_bytes(18))
    return f"{nonce}.{_sign(policy.secret, session_id, nonce)}"


def verify_csrf_token(policy: CSRFPolicy, session_id: str, token: str) -> bool:
    """Whether ``token`` was issued for this session under the current or a previous secret.

    Each comparison is constant time; which secret matched is no secret.
    """
    if not _TOKEN.fullmatch(token):
        return False
    nonce, _, signature = token.partition(".")
    presented = signature.encode("ascii")
    return any(
        hmac.compare_digest(_sign(secret, session_id, nonce).encode("ascii"), presented)
        for secret in (policy.secret, *policy.previous_secrets)
    )


def set_csrf_cookie_header(policy: CSRFPolicy, token: str) -> tuple[bytes, bytes]:
    """The ``Set-Cookie`` header carrying ``token``; readable by scripts (not HttpOnly)."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("not a CSRF token issued by issue_csrf_token")
    parts = [
        f"{policy.csrf_cookie}={token}",
        "Path=/",
        f"SameSite={_SAMESITE[policy.cookie_samesite]}",
    ]
    if policy.cookie_secure:
        parts.append("Secure")
    return b"set-cookie", "; ".join(parts).encode("ascii")


class CSRFMiddleware:
    """Refuse unsafe cookie-authenticated requests without a valid CSRF token."""

    def __init__(self, app: ASGIApp, *, policy: CSRFPolicy, debug: bool = False) -> None:
        self.app = app
        self.policy = policy
        self.debug = debug
        self._header = policy.header.encode("latin-1")
        self._refused = counter(
            "http_csrf_refused_total",
            "Unsafe cookie-authenticated requests refused for their CSRF token, by reason.",
            ["reason"],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = self._refusal(scope)
            if reason is not None:
                await self._refuse(scope, send, reason)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        """Why this request is refused, or ``None`` when it may proceed."""
        policy = self.policy
        if scope["method"] in policy.safe_methods or policy.is_exempt(scope.get("path", "")):
            return None
        identity = identity_of(scope)
        if identity is None:
            msg = "CSRFMiddleware needs hardened.http.IdentityMiddleware to run before it"
            raise RuntimeError(msg)
        return self._token_refusal(scope, identity.session) if identity.via == "cookie" else None

    def _token_refusal(self, scope: Scope, session: str | None) -> str | None:
        policy = self.policy
        headers = header_strings(scope, self._header)
        if not headers or not headers[0].strip():
            return "missing_header"
        csrf_cookies = cookie_values(scope, policy.csrf_cookie)
        if not csrf_cookies:
            return "missing_cookie"
        if len(headers) > 1 or session is None:
            return "ambiguous" if session is not None else "unbound"
        token = headers[0].strip()
        # Compare with every copy: a cookie tossed in beside ours must not lock the user out.
        raw = token.encode("latin-1")
        if not any(hmac.compare_digest(raw, c.encode("latin-1")) for c in csrf_cookies):
            return "mismatch"
        if not verify_csrf_token(policy, session, token):
            return "bad_signature"
        return None

    async def _refuse(self, scope: Scope, send: Send, reason: str) -> None:
        self._refused.labels(reason=reason).inc()
        structlog.get_logger("hardened.http").warning(
            "csrf.refused", reason=reason, path=scope.get("path", ""), method=scope.get("method")
        )
        if reason.startswith("missing"):
            error = CsrfFailed(
                "The CSRF token is missing. Reload the page to get a new one, then retry.",
                code="csrf.missing",
            )
        else:
            error = CsrfFailed(
                "The CSRF token is invalid for this session. Reload the page, then retry.",
                code="csrf.invalid",
            )
        await send_problem(scope, send, error, debug=self.debug)
