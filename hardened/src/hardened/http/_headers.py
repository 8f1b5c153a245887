"""Security response headers as a pure-ASGI middleware.

Browsers apply several protections only when the server asks for them:
HSTS pins HTTPS, ``nosniff`` stops MIME sniffing, ``frame-ancestors`` and
``X-Frame-Options`` stop click-jacking, COOP isolates the browsing context,
and a strict CSP stops injected markup from running scripts. An API serves
JSON, so the default CSP allows nothing at all. The interactive ``/docs`` page
needs scripts, styles and fetches of its own origin, so CSP is relaxed per path
prefix (`SecurityHeaders.csp_overrides`) instead of being weakened for the
whole service; it loads nothing from anywhere else (serve Swagger UI's files
locally, see `hardened.openapi`).

Headers the application already set win: the middleware only fills gaps and
never overrides a deliberate choice. HSTS is sent only when configured, and
then on every response whatever ``scope["scheme"]`` says, because TLS is
usually terminated by a proxy in front of the app. Browsers ignore the header
over plain HTTP, so sending it there does no harm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hardened.http._paths import PathMap

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "API_CSP",
    "HSTS",
    "SWAGGER_UI_CSP",
    "SecurityHeaders",
    "SecurityHeadersMiddleware",
    "swagger_ui_csp",
]

API_CSP = "default-src 'none'; frame-ancestors 'none'"
"""The default policy: a JSON API needs to load nothing and be framed by nobody."""


def swagger_ui_csp(script_hashes: Iterable[str] | None = None) -> str:
    """The CSP of a Swagger UI page whose files are served by the app itself.

    Nothing is loaded from another origin. FastAPI's page starts Swagger UI
    with one inline script: ``script_hashes`` (``'sha256-…'`` sources) allow
    exactly those inline scripts; None allows any (``'unsafe-inline'``).
    """
    inline = ["'unsafe-inline'"] if script_hashes is None else list(script_hashes)
    scripts = " ".join(["'self'", *inline])
    return (
        "default-src 'none'; "
        f"script-src {scripts}; "
        "style-src 'self'; "
        "img-src 'self' data:; "
        "connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


SWAGGER_UI_CSP = swagger_ui_csp()
"""What FastAPI's Swagger UI page needs with local assets: its own origin and its inline start."""

_ONE_YEAR = 31_536_000


def _check_value(name: str, value: str | None) -> None:
    if value is not None and ("\r" in value or "\n" in value or not value.isascii()):
        msg = f"{name} must be a single-line ASCII header value"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class HSTS:
    """``Strict-Transport-Security``: turn it on only once HTTPS works everywhere."""

    max_age: int = 2 * _ONE_YEAR
    include_subdomains: bool = True
    preload: bool = False

    def __post_init__(self) -> None:
        if self.max_age < 0:
            msg = "HSTS max_age must be >= 0"
            raise ValueError(msg)
        if self.preload and (self.max_age < _ONE_YEAR or not self.include_subdomains):
            # The preload list rejects anything weaker; fail at configuration time instead.
            msg = "HSTS preload requires max_age >= 1 year and include_subdomains"
            raise ValueError(msg)

    def header_value(self) -> str:
        """The header value, e.g. ``max-age=63072000; includeSubDomains``."""
        parts = [f"max-age={self.max_age}"]
        if self.include_subdomains:
            parts.append("includeSubDomains")
        if self.preload:
            parts.append("preload")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class SecurityHeaders:
    """Which security headers to add; ``None`` leaves a header out.

    ``csp_overrides`` maps a `PathPattern` spec (most specific wins, see
    `PathMap`) to the CSP for the paths it covers, or to ``None`` to send none
    there, e.g. ``{"/docs": SWAGGER_UI_CSP}``.
    """

    hsts: HSTS | None = None
    content_type_options: bool = True
    frame_options: str | None = "DENY"
    referrer_policy: str | None = "strict-origin-when-cross-origin"
    cross_origin_opener_policy: str | None = "same-origin"
    content_security_policy: str | None = API_CSP
    csp_overrides: Mapping[str, str | None] = field(default_factory=dict, hash=False)
    permissions_policy: str | None = None
    _csp_paths: PathMap[str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_value("frame_options", self.frame_options)
        _check_value("referrer_policy", self.referrer_policy)
        _check_value("cross_origin_opener_policy", self.cross_origin_opener_policy)
        _check_value("content_security_policy", self.content_security_policy)
        _check_value("permissions_policy", self.permissions_policy)
        # A private read-only copy, so the caller cannot change a "frozen" config later.
        paths = PathMap(self.csp_overrides, what="csp_overrides")
        for spec, csp in paths.items():
            _check_value(f"csp_overrides[{spec!r}]", csp)
        object.__setattr__(self, "csp_overrides", paths)
        object.__setattr__(self, "_csp_paths", paths)

    def base_headers(self) -> list[tuple[bytes, bytes]]:
        """Every configured header except CSP, which depends on the path."""
        pairs: list[tuple[str, str | None]] = [
            ("strict-transport-security", self.hsts.header_value() if self.hsts else None),
            ("x-content-type-options", "nosniff" if self.content_type_options else None),
            ("x-frame-options", self.frame_options),
            ("referrer-policy", self.referrer_policy),
            ("cross-origin-opener-policy", self.cross_origin_opener_policy),
            ("permissions-policy", self.permissions_policy),
        ]
        return [(name.encode(), value.encode()) for name, value in pairs if value is not None]

    def csp_for(self, path: str) -> str | None:
        """The CSP for ``path``: the most specific override covering it, else the default."""
        return self._csp_paths.lookup(path, self.content_security_policy)


class SecurityHeadersMiddleware:
    """Add the configured security headers to every HTTP response."""

    def __init__(self, app: ASGIApp, *, config: SecurityHeaders | None = None) -> None:
        self.app = app
        self.config = config if config is not None else SecurityHeaders()
        self._base = tuple(self.config.base_headers())

    def _headers_for(self, path: str) -> tuple[tuple[bytes, bytes], ...]:
        csp = self.config.csp_for(path)
        if csp is None:
            return self._base
        return (*self._base, (b"content-security-policy", csp.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._headers_for(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(name).lower() for name, _ in headers}
                headers.extend(pair for pair in extra if pair[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
