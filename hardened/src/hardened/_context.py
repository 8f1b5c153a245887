"""Request-scoped context shared by every component (correlation id, client IP, tenant).

Kept dependency-free so that `errors`, `logging` and the HTTP guards can all
read it without importing each other.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uuid

__all__ = [
    "client_ip_var",
    "correlation_id_var",
    "get_client_ip",
    "get_correlation_id",
    "tenant_id_var",
]

correlation_id_var: ContextVar[str | None] = ContextVar("hardened_correlation_id", default=None)
client_ip_var: ContextVar[str | None] = ContextVar("hardened_client_ip", default=None)
#: The tenant being served; set by ``hardened.db.tenant_context``, read by tenancy and the cache.
tenant_id_var: ContextVar[uuid.UUID | None] = ContextVar("hardened_tenant_id", default=None)


def get_correlation_id() -> str | None:
    """The correlation id of the request being served, if any."""
    return correlation_id_var.get()


def get_client_ip() -> str | None:
    """The client IP resolved by the trusted-proxy rule, if any."""
    return client_ip_var.get()
