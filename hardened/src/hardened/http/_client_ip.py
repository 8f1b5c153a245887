"""Resolve the real client IP once per request, from trusted proxies only.

Rate limits, audit logs and abuse detection all key on the client IP. Behind a
load balancer the TCP peer is the balancer, and ``X-Forwarded-For`` names the
client, but anyone can send that header. `TrustedProxies.client_ip` believes
the chain only when the peer is a configured proxy. This middleware runs that
rule exactly once and publishes the answer in three places:

* ``hardened._context.client_ip_var`` for code without the scope (logging,
  rate-limit keys); it is reset when the request ends;
* ``scope["state"]["client_ip"]``, which Starlette shows as
  ``request.state.client_ip``;
* ``scope["client"]``, rewritten in place when the peer is trusted, so the
  framework, access logs and anything else reading the scope see the client
  and not the proxy. That is the same choice uvicorn's proxy-headers
  middleware makes. The port of the real client is unknown, so it is 0.

Put it outermost, before anything that reads the client address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened._context import client_ip_var

if TYPE_CHECKING:
    from hardened.http._proxy import TrustedProxies
    from hardened.types import ASGIApp, Receive, Scope, Send

__all__ = ["ClientIPMiddleware"]


class ClientIPMiddleware:
    """Publish the client IP computed by `TrustedProxies` for every HTTP/WebSocket request."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: TrustedProxies) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client_ip = self.trusted_proxies.client_ip(scope)
        peer = scope.get("client")
        if client_ip is not None and peer and client_ip != peer[0]:
            # client_ip differs from the peer only when the peer is a trusted proxy.
            scope["client"] = (client_ip, 0)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["client_ip"] = client_ip
        token = client_ip_var.set(client_ip)
        try:
            await self.app(scope, receive, send)
        finally:
            client_ip_var.reset(token)
