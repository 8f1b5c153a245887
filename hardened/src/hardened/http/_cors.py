"""CORS as a pure-ASGI middleware, with an exact allow-list and anchored patterns.

Why not reflect any origin, or match with ``endswith``/unanchored regexes? The
seed reports show both mistakes: ``https://a.myshopify.com.evil.com`` passes a
suffix check made without the leading dot, and an unanchored pattern also
accepts ``https://evil.com/x.myshopify.com``. Here an origin is allowed only
if it equals an allow-listed origin, or fully matches an explicit pattern
whose ``*`` stands for exactly one DNS label (``[a-z0-9-]``) in the left-most
position.

A blocked origin gets no CORS headers at all. A blocked preflight is answered
403 (``cors.origin_blocked``). A blocked simple request still reaches the app,
because CORS protects only the response and the browser withholds it. Every
block is logged once (``cors.blocked``) and counted
(``hardened_http_cors_blocked_total{kind}``). ``Vary: Origin`` is added to
every response, requests without ``Origin`` included: the Fetch standard
(section "CORS protocol and HTTP caches") asks for that whenever the answer
depends on the origin, so a shared cache never serves one origin's response to
another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from hardened._asgi import first_header
from hardened.errors import Forbidden
from hardened.http._problem import send_problem
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CORSMiddleware", "CORSPolicy"]

_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([^/:?#]+)(?::(\d{1,5}|\*))?", re.ASCII)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_WILDCARD_LABEL = r"[a-z0-9-]{1,63}"


def _parse_origin(value: str, *, pattern: bool) -> tuple[str, list[str], str | None]:
    match = _ORIGIN.fullmatch(value)
    if match is None:
        msg = f"invalid origin {value!r}: expected scheme://host[:port], lowercase, no path"
        raise ValueError(msg)
    scheme, host, port = match.groups()
    labels = host.split(".")
    for i, label in enumerate(labels):
        if label == "*" and pattern and i == 0 and len(labels) >= 3:
            continue
        if not _LABEL.fullmatch(label):
            hint = " ('*' only as the left-most label, before >= 2 labels)" if "*" in label else ""
            msg = f"invalid origin {value!r}: bad host label {label!r}{hint}"
            raise ValueError(msg)
    if port == "*" and not pattern:
        msg = f"invalid origin {value!r}: a wildcard port belongs in allow_origin_patterns"
        raise ValueError(msg)
    return scheme, labels, port


def _compile_pattern(value: str) -> re.Pattern[str]:
    scheme, labels, port = _parse_origin(value, pattern=True)
    host = r"\.".join(_WILDCARD_LABEL if label == "*" else re.escape(label) for label in labels)
    port_re = "" if port is None else (r":\d{1,5}" if port == "*" else ":" + port)
    return re.compile(re.escape(scheme) + "://" + host + port_re, re.ASCII)


@dataclass(frozen=True, slots=True)
class CORSPolicy:
    """Who may read responses cross-origin, and how.

    ``allow_origins`` holds exact origins (or the lone ``"*"``, which allows any
    origin and cannot be combined with credentials). ``allow_origin_patterns``
    holds explicit patterns such as ``"https://*.myshopify.com"`` (or
    ``"http://localhost:*"`` for any port). In ``allow_methods`` and
    ``allow_headers``, ``"*"`` reflects what the preflight asked for.
    """

    allow_origins: tuple[str, ...] = ()
    allow_origin_patterns: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: tuple[str, ...] = (
        "authorization",
        "content-type",
        "idempotency-key",
        "x-request-id",
    )
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 600
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        star_in = [
            name
            for name in ("allow_origins", "allow_methods", "allow_headers", "expose_headers")
            if "*" in getattr(self, name)
        ]
        if self.allow_credentials and star_in:
            msg = f"allow_credentials cannot be combined with '*' in {', '.join(star_in)}"
            raise ValueError(msg)
        if self.max_age < 0:
            msg = "max_age must be >= 0"
            raise ValueError(msg)
        exact = {origin.lower().rstrip("/") for origin in self.allow_origins if origin != "*"}
        for origin in exact:
            if origin == "null":
                msg = "the 'null' origin (sandboxed frames, file://) must never be allowed"
                raise ValueError(msg)
            _parse_origin(origin, pattern=False)
        object.__setattr__(self, "_exact", frozenset(exact))
        patterns = tuple(
            _compile_pattern(p.lower().rstrip("/")) for p in self.allow_origin_patterns
        )
        object.__setattr__(self, "_patterns", patterns)
        object.__setattr__(self, "allow_methods", tuple(m.upper() for m in self.allow_methods))
        object.__setattr__(self, "allow_headers", tuple(h.lower() for h in self.allow_headers))

    @property
    def allow_all(self) -> bool:
        """Whether any origin is allowed (``"*"``)."""
        return "*" in self.allow_origins

    def allows(self, origin: str) -> bool:
        """Whether ``origin`` (an ``Origin`` header value) may read responses."""
        if self.allow_all:
            return True
        normalised = origin.lower()
        return normalised in self._exact or any(p.fullmatch(normalised) for p in self._patterns)


def _with_vary(headers: list[tuple[bytes, bytes]], *tokens: str) -> list[tuple[bytes, bytes]]:
    """Merge ``tokens`` into a single ``Vary`` header, keeping what the app set."""
    current = [
        part.strip()
        for name, value in headers
        if name.lower() == b"vary"
        for part in value.decode("latin-1").split(",")
        if part.strip()
    ]
    if "*" in current:
        return headers
    seen = {part.lower() for part in current}
    merged = current + [t for t in tokens if t.lower() not in seen]
    rest = [(name, value) for name, value in headers if name.lower() != b"vary"]
    return [*rest, (b"vary", ", ".join(merged).encode("latin-1"))]


class CORSMiddleware:
    """Answer preflights and decorate responses per a `CORSPolicy`."""

    def __init__(self, app: ASGIApp, *, policy: CORSPolicy, debug: bool = False) -> None:
        self.app = app
        self.policy = policy
        self.debug = debug
        self._blocked = counter(
            "http_cors_blocked_total",
            "Cross-origin requests whose Origin is not allowed (kind: preflight or simple).",
            ["kind"],
        )
        self._simple_headers: list[tuple[bytes, bytes]] = []
        if policy.allow_credentials:
            self._simple_headers.append((b"access-control-allow-credentials", b"true"))
        if policy.expose_headers:
            exposed = ", ".join(policy.expose_headers).encode("latin-1")
            self._simple_headers.append((b"access-control-expose-headers", exposed))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = first_header(scope, b"origin")
        is_preflight = (
            scope["method"] == "OPTIONS"
            and origin is not None
            and first_header(scope, b"access-control-request-method") is not None
        )
        allowed = origin is not None and self.policy.allows(origin)
        if origin is not None and not allowed:
            self._record_block(scope, origin, "preflight" if is_preflight else "simple")
        if is_preflight:
            await self._preflight(scope, send, origin if allowed else None)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if origin is not None:
                    # The middleware owns these headers: drop whatever the app set.
                    headers = [
                        h for h in headers if not h[0].lower().startswith(b"access-control-")
                    ]
                if allowed and origin is not None:
                    headers.append((b"access-control-allow-origin", self._allow_origin(origin)))
                    headers.extend(self._simple_headers)
                message = {**message, "headers": _with_vary(headers, "Origin")}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allow_origin(self, origin: str) -> bytes:
        if self.policy.allow_all and not self.policy.allow_credentials:
            return b"*"
        return origin.encode("latin-1")

    def _record_block(self, scope: Scope, origin: str, kind: str) -> None:
        self._blocked.labels(kind=kind).inc()
        # Looked up per event (a rare path) so test capture and late configuration both apply.
        structlog.get_logger("hardened.http").warning(
            "cors.blocked",
            origin=origin[:256],
            path=scope.get("path", ""),
            method=scope.get("method"),
            kind=kind,
        )

    async def _preflight(self, scope: Scope, send: Send, origin: str | None) -> None:
        if origin is None:
            refusal = Forbidden(
                "This origin may not make cross-origin requests to this service.",
                code="cors.origin_blocked",
                headers={"vary": "Origin"},
            )
            await send_problem(scope, send, refusal, debug=self.debug)
            return
        policy = self.policy
        requested_method = first_header(scope, b"access-control-request-method") or ""
        requested_headers = first_header(scope, b"access-control-request-headers")
        vary = ["Origin"]
        headers = [(b"access-control-allow-origin", self._allow_origin(origin))]
        methods = (
            requested_method if "*" in policy.allow_methods else ", ".join(policy.allow_methods)
        )
        headers.append((b"access-control-allow-methods", methods.encode("latin-1")))
        if "*" in policy.allow_headers:
            vary.append("Access-Control-Request-Headers")
            if requested_headers:
                headers.append(
                    (b"access-control-allow-headers", requested_headers.encode("latin-1"))
                )
        elif policy.allow_headers:
            allowed = ", ".join(policy.allow_headers).encode("latin-1")
            headers.append((b"access-control-allow-headers", allowed))
        if policy.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        headers.append((b"access-control-max-age", str(policy.max_age).encode()))
        # A disallowed method or header still gets 204: the browser compares the lists and
        # reports the mismatch to the developer precisely; the origin itself is trusted.
        await send(
            {"type": "http.response.start", "status": 204, "headers": _with_vary(headers, *vary)}
        )
        await send({"type": "http.response.body", "body": b""})
