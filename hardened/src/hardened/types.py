"""ASGI type aliases for code built on hardened (the guards themselves need no framework)."""

from hardened._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]
