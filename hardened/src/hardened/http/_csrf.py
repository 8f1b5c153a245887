"""CSRF for cookie-authenticated requests: a signed double-submit token, enforced.

Why a guard at all, and why this shape? A browser attaches the session cookie
to any request a hostile page makes, so a cookie alone cannot prove the user
meant the request. The seed report fixed exactly this by failing fast where
the client used to log a warning and carry on: here a missing or bad token is
always a 403 problem, never a warning.

The token is ``<nonce>.<signature>``, the signature an HMAC-SHA256 over the
length-prefixed session cookie value and the nonce. The server keeps no state:
the SPA reads the (non-HttpOnly) ``csrf_token`` cookie and echoes it in the
``X-CSRF-Token`` header. A cross-site page can neither read the cookie nor set
a custom header, and because the token is bound to the session, a token from
another session, or a cookie an attacker planted through a sibling subdomain
(cookie tossing), is worthless. Issue a fresh token whenever the session
cookie changes (login, refresh).

What is checked, for ``http`` scopes only:

* safe methods (``GET``, ``HEAD``, ``OPTIONS``, ``TRACE``) pass: they must
  not change state;
* paths under ``exempt_paths`` (whole-segment prefixes: ``/webhooks`` covers
  ``/webhooks/x`` but not ``/webhooksx``) pass: they authenticate otherwise,
  e.g. by a webhook signature;
* requests without the session cookie pass: they are not cookie-authenticated,
  so there is no ambient authority to abuse;
* requests with ``Authorization: Bearer …`` pass: browsers never attach that
  header on their own. The app must then authenticate such a request by the
  header alone, never fall back to the cookie;
* everything else needs the header, equal (constant time) to a ``csrf_token``
  cookie, with a valid signature for the session cookie value. A session
  cookie sent twice is ambiguous (cookie tossing) and refused.

A refusal is a 403 problem ``csrf.missing`` (no header or no cookie) or
``csrf.invalid``, logged once as ``csrf.refused`` (reason, path, method) and
counted in ``hardened_http_csrf_refused_total{reason}``. WebSocket scopes pass
through: ``hardened.auth.websockets`` authenticates them without cookies.
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

from hardened.errors import CsrfFailed
from hardened.http._problem import send_problem
from hardened.observability._metrics import counter

if TYPE_CHECKING:
    from hardened._types import ASGIApp, Receive, Scope, Send

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
    """Where the session and CSRF token live, and which requests are exempt."""

    secret: bytes = field(repr=False)
    session_cookie: str = "session"
    csrf_cookie: str = "csrf_token"
    header: str = "x-csrf-token"
    safe_methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
    exempt_paths: tuple[str, ...] = ()
    cookie_secure: bool = True
    cookie_samesite: str = "lax"

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < _MIN_SECRET_BYTES:
            msg = f"CSRF secret must be at least {_MIN_SECRET_BYTES} bytes"
            raise ValueError(msg)
        for name in ("session_cookie", "csrf_cookie"):
            if not _COOKIE_NAME.fullmatch(getattr(self, name)):
                msg = f"{name} is not a valid cookie name: {getattr(self, name)!r}"
                raise ValueError(msg)
        if self.session_cookie == self.csrf_cookie:
            raise ValueError("session_cookie and csrf_cookie must differ")
        header = self.header.strip().lower()
        if not _HEADER_NAME.fullmatch(header) or header in {"authorization", "cookie"}:
            raise ValueError(f"not a usable header name: {self.header!r}")
        samesite = self.cookie_samesite.lower()
        if samesite not in _SAMESITE:
            raise ValueError("cookie_samesite must be 'lax', 'strict' or 'none'")
        if samesite == "none" and not self.cookie_secure:
            raise ValueError("SameSite=None cookies must be Secure (browsers drop them otherwise)")
        prefixes = tuple(p.rstrip("/") for p in self.exempt_paths)
        if any(not p.startswith("/") for p in prefixes):
            raise ValueError("exempt_paths are absolute path prefixes other than '/'")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "cookie_samesite", samesite)
        object.__setattr__(self, "safe_methods", frozenset(m.upper() for m in self.safe_methods))
        object.__setattr__(self, "exempt_paths", prefixes)

    def is_exempt(self, path: str) -> bool:
        """Whether ``path`` equals an exempt prefix or lies below one (whole segments)."""
        return any(path == p or path.startswith(p + "/") for p in self.exempt_paths)


def _sign(policy: CSRFPolicy, session_value: str, nonce: str) -> str:
    session = session_value.encode("utf-8")
    message = _DOMAIN + len(session).to_bytes(4, "big") + session + nonce.encode("ascii")
    return _b64(hmac.new(policy.secret, message, hashlib.sha256).digest())


def issue_csrf_token(policy: CSRFPolicy, session_value: str) -> str:
    """A fresh ``nonce.signature`` token bound to the session cookie value (as sent back)."""
    nonce = _b64(secrets.token_bytes(18))
    return f"{nonce}.{_sign(policy, session_value, nonce)}"


def verify_csrf_token(policy: CSRFPolicy, session_value: str, token: str) -> bool:
    """Whether ``token`` was issued with ``policy`` for this session value (constant time)."""
    if not _TOKEN.fullmatch(token):
        return False
    nonce, _, signature = token.partition(".")
    expected = _sign(policy, session_value, nonce)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii"))


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


def _cookies(scope: Scope, *names: str) -> dict[str, list[str]]:
    """Every value of each cookie in ``names`` (a name may legitimately repeat)."""
    found: dict[str, list[str]] = {name: [] for name in names}
    for key, value in scope.get("headers", ()):
        if key != b"cookie":
            continue
        for pair in bytes(value).decode("latin-1").split(";"):
            name, sep, raw = pair.strip().partition("=")
            if sep and name in found:
                found[name].append(raw.strip())
    return found


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [bytes(v).decode("latin-1") for k, v in scope.get("headers", ()) if k == name]


def _is_bearer(scope: Scope) -> bool:
    values = _headers(scope, b"authorization")
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].strip().partition(" ")
    return scheme.lower() == "bearer" and bool(credentials.strip())


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
        cookies = _cookies(scope, policy.session_cookie, policy.csrf_cookie)
        sessions = cookies[policy.session_cookie]
        if not sessions or _is_bearer(scope):
            return None
        return self._token_refusal(
            _headers(scope, self._header), sessions, cookies[policy.csrf_cookie]
        )

    def _token_refusal(
        self, headers: list[str], sessions: list[str], csrf_cookies: list[str]
    ) -> str | None:
        if not headers or not headers[0].strip():
            return "missing_header"
        if not csrf_cookies:
            return "missing_cookie"
        if len(headers) > 1 or len(sessions) > 1:
            return "ambiguous"
        token = headers[0].strip()
        # Compare with every copy: a cookie tossed in beside ours must not lock the user out.
        raw = token.encode("latin-1")
        if not any(hmac.compare_digest(raw, c.encode("latin-1")) for c in csrf_cookies):
            return "mismatch"
        if not verify_csrf_token(self.policy, sessions[0], token):
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
