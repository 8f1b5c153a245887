"""A small WebSocket app over `hardened.auth.websockets`, in process or as a worker process.

The tests import `build_app` and serve it with uvicorn in process (memory bus),
and run this file as a script to start separate worker processes that share
only Redis (``--redis-url``, ``--channel``): the cross-worker revocation proof.

Access tokens here are a stand-in for the real verifier: ``valid~<user>~<session>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hardened.auth.websockets import (
    BEARER_SUBPROTOCOL,
    TICKET_SUBPROTOCOL,
    MemoryRevocationBus,
    MessageRateLimit,
    RedisRevocationBus,
    RevocationBus,
    SocketRegistry,
    SocketRevocation,
    TicketStore,
    close_rate_limited,
    error_frame,
    listening,
    reject,
    websocket_credentials,
    websocket_ticket,
)
from hardened.stores import MemoryStore, RedisStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request


def principal(token: str) -> tuple[str, str] | None:
    """The (user, session) of a stand-in access token, or None if it is not valid."""
    parts = token.split("~")
    if len(parts) == 3 and parts[0] == "valid" and all(parts[1:]):
        return parts[1], parts[2]
    return None


@dataclass
class State:
    """What one worker holds: its registry, bus, ticket store and per-socket limits."""

    bus: RevocationBus = field(default_factory=MemoryRevocationBus)
    registry: SocketRegistry = field(default_factory=SocketRegistry)
    tickets: TicketStore = field(default_factory=lambda: TicketStore(MemoryStore()))
    rate: float = 1.0
    burst: int = 100
    accepted: int = 0
    refused: int = 0


async def _authenticate(state: State, websocket: WebSocket) -> tuple[str, str, str] | None:
    token = websocket_credentials(websocket.scope)
    if token is not None:
        who = principal(token)
        return None if who is None else (*who, BEARER_SUBPROTOCOL)
    ticket = websocket_ticket(websocket.scope)
    payload = None if ticket is None else await state.tickets.redeem(ticket)
    if payload is None:
        return None
    return payload["user_id"], payload["session_id"], TICKET_SUBPROTOCOL


def build_app(state: State, lifespan: Any = None) -> Starlette:
    """The Starlette app: ``/ws`` (echo), ``/ready`` and ``POST /revoke``."""

    async def socket(websocket: WebSocket) -> None:
        who = await _authenticate(state, websocket)
        if who is None:
            state.refused += 1
            await reject(websocket.send)
            return
        user, session, subprotocol = who
        await websocket.accept(subprotocol=subprotocol)
        state.accepted += 1

        async def closer(code: int, reason: str) -> None:
            await websocket.close(code, reason)

        handle = state.registry.register(user, session, closer)
        limit = MessageRateLimit(state.rate, state.burst)
        try:
            while True:
                text = await websocket.receive_text()
                if not limit.allow():
                    await close_rate_limited(websocket.send)
                    return
                if text == "boom":
                    await websocket.send_text(error_frame("ws.bad_message", "unknown command"))
                    continue
                await websocket.send_text(json.dumps({"echo": text, "user": user}))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left, or a revocation closed the socket under us
        finally:
            state.registry.unregister(handle)

    async def ready(request: Request) -> Response:
        subscribed = getattr(state.bus, "subscribed", True)
        return Response(status_code=200 if subscribed else 503)

    async def revoke(request: Request) -> Response:
        body = await request.json()
        await state.bus.publish(SocketRevocation(body["user_id"], body.get("session_id")))
        return Response(status_code=204)

    async def sockets(request: Request) -> Response:
        return JSONResponse({"count": state.registry.count(request.query_params["user"])})

    routes = [
        WebSocketRoute("/ws", socket),
        Route("/ready", ready),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/sockets", sockets),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def redis_worker(redis_url: str, channel: str) -> Starlette:
    """The worker app: a `RedisRevocationBus` subscribed for the app's lifetime."""
    store = RedisStore.from_url(redis_url)
    state = State(bus=RedisRevocationBus(store.client, channel), tickets=TicketStore(store))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with listening(state.bus, state.registry):
            yield
        await store.aclose()

    return build_app(state, lifespan)


def main() -> None:
    """Serve one worker on 127.0.0.1:<port> until terminated."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", required=True)
    args = parser.parse_args()
    app = redis_worker(args.redis_url, args.channel)
    uvicorn.run(app, host="127.0.0.1", port=args.port, ws="websockets", log_level="warning")


if __name__ == "__main__":
    main()
