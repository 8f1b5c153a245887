"""Trusted ``Host`` header enforcement as a pure-ASGI middleware.

Applications build absolute URLs from the ``Host`` header: password-reset
links, redirects, OAuth callbacks, cache keys. If any Host is accepted, an
attacker can plant their own domain in those links (host-header injection)
or poison a shared cache. Only configured names are accepted: exact names,
and ``*.example.com`` for one or more labels under a domain (the bare domain
must be listed on its own). The port is ignored, case does not matter, and a
trailing dot is dropped. A missing, repeated or malformed Host is a 400
problem (``request.bad_host``); the lone ``"*"`` turns the check off.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hardened._asgi import header_values
from hardened.errors import BadRequest
from hardened.http._problem import send_problem

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hardened.types import ASGIApp, Receive, Scope, Send

__all__ = ["TrustedHostMiddleware", "TrustedHosts", "host_name"]

_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
_PORT = re.compile(r":\d{1,5}")
_WEBSOCKET_POLICY_VIOLATION = 1008


def host_name(value: str) -> str | None:
    """The host name of a ``Host`` header value (port, case and trailing dot dropped), or ``None``.

    The one parser of Host values: whatever else names a host by it (the
    idempotency scope's tenant) agrees with `TrustedHosts` on what is one host.
    """
    value = value.strip().lower()
    if value.startswith("["):  # "[::1]:8000"
        end = value.find("]")
        host, rest = value[: end + 1], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
        host = host.removesuffix(".")
        if len(host) > 253 or not _NAME.fullmatch(host):
            return None
    if rest and not _PORT.fullmatch(rest):
        return None
    return host


@dataclass(frozen=True, slots=True)
class TrustedHosts:
    """The host names a service answers to: ``"api.example.com"``, ``"*.example.com"``, ``"*"``."""

    allowed: tuple[str, ...]
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    @classmethod
    def from_strings(cls, hosts: Iterable[str]) -> TrustedHosts:
        """Build from strings such as a comma-split setting (blank entries ignored)."""
        return cls(tuple(h.strip() for h in hosts if h.strip()))

    def __post_init__(self) -> None:
        if not self.allowed:
            msg = "TrustedHosts needs at least one host (use '*' to allow any)"
            raise ValueError(msg)
        exact: set[str] = set()
        suffixes: list[str] = []
        for entry in self.allowed:
            if entry == "*":
                continue
            wildcard = entry.startswith("*.")
            name = (entry[2:] if wildcard else entry).strip().lower().removesuffix(".")
            host = host_name(name)
            if host is None or host != name:  # also refuses "example.com:8443": ports are ignored
                msg = f"invalid trusted host {entry!r}: expected a host name, '*.domain' or '*'"
                raise ValueError(msg)
            if wildcard:
                suffixes.append("." + host)
            else:
                exact.add(host)
        object.__setattr__(self, "_exact", frozenset(exact))
        object.__setattr__(self, "_suffixes", tuple(suffixes))

    @property
    def allow_any(self) -> bool:
        """Whether every host is accepted (``"*"``)."""
        return "*" in self.allowed

    def allows(self, host_header: str) -> bool:
        """Whether a ``Host`` header value names one of the trusted hosts."""
        if self.allow_any:
            return True
        host = host_name(host_header)
        if host is None:
            return False
        return host in self._exact or any(host.endswith(s) for s in self._suffixes)


class TrustedHostMiddleware:
    """Refuse requests whose ``Host`` is not trusted: 400 problem, or close the WebSocket."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], debug: bool = False) -> None:
        self.app = app
        self.trusted_hosts = TrustedHosts.from_strings(allowed_hosts)
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.trusted_hosts.allow_any:
            await self.app(scope, receive, send)
            return
        values = header_values(scope, b"host")
        if len(values) == 1 and self.trusted_hosts.allows(values[0].decode("latin-1")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Closing before accept makes the server refuse the handshake (HTTP 403).
            await send({"type": "websocket.close", "code": _WEBSOCKET_POLICY_VIOLATION})
            return
        refusal = BadRequest(
            "The Host header is missing or names a host this service does not serve.",
            code="request.bad_host",
            context={"host": values[0][:255].decode("latin-1") if values else None},
        )
        await send_problem(scope, send, refusal, debug=self.debug)
