"""Which peer addresses may speak for the client (``X-Forwarded-For``, ``X-Request-ID``).

A forwarded header is believed only when the TCP peer is a configured trusted
proxy; otherwise anyone could spoof their IP past a rate limit or inject log
correlation ids. The client IP is the right-most address in the
``X-Forwarded-For`` chain that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hardened._asgi import header_strings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hardened.types import Scope

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip('"')
    if value.startswith("["):  # "[::1]:443"
        value = value[1 : value.find("]")]
    elif value.count(":") == 1:  # "1.2.3.4:5678"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The networks whose forwarded headers are believed (empty: believe none)."""

    networks: tuple[_Network, ...] = field(default=())

    @classmethod
    def from_strings(cls, cidrs: Iterable[str]) -> TrustedProxies:
        """Build from CIDRs or addresses (``"10.0.0.0/8"``, ``"127.0.0.1"``)."""
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()))

    def is_trusted(self, address: str | None) -> bool:
        """Whether a peer address belongs to a trusted proxy."""
        if not address or not self.networks:
            return False
        ip = _parse_ip(address)
        return ip is not None and any(ip in net for net in self.networks)

    def peer_is_trusted(self, scope: Scope) -> bool:
        """Whether the TCP peer of this connection is a trusted proxy."""
        client = scope.get("client")
        return client is not None and self.is_trusted(client[0])

    def client_ip(self, scope: Scope) -> str | None:
        """The client address after walking trusted hops of ``X-Forwarded-For``."""
        client = scope.get("client")
        peer = client[0] if client else None
        if not self.is_trusted(peer):
            return peer
        chain: list[str] = []
        for value in header_strings(scope, b"x-forwarded-for"):
            chain.extend(value.split(","))
        for hop in reversed(chain):
            ip = _parse_ip(hop)
            if ip is None:
                return peer  # a garbled chain is not evidence of anything
            if not any(ip in net for net in self.networks):
                return str(ip)
        return peer
