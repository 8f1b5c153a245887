"""Request-scoped context shared by every component (correlation id, client IP).

Kept dependency-free so that `errors`, `logging` and the HTTP guards can all
read it without importing each other.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["client_ip_var", "correlation_id_var", "get_client_ip", "get_correlation_id"]

correlation_id_var: ContextVar[str | None] = ContextVar("hardened_correlation_id", default=None)
client_ip_var: ContextVar[str | None] = ContextVar("hardened_client_ip", default=None)


def get_correlation_id() -> str | None:
    """The correlation id of the request being served, if any."""
    return correlation_id_var.get()


def get_client_ip() -> str | None:
    """The client IP resolved by the trusted-proxy rule, if any."""
    return client_ip_var.get()
