"""Hostname normalisation for tenant domains (seed 003: shops auto-created with invalid domains).

A shop domain is accepted only as a bare hostname: no scheme, port, path or
user info, no IP literal, each label 1-63 of ``[a-z0-9-]`` not starting or
ending with ``-``, at most 253 characters, under one of the configured
suffixes with at least one label of its own. Unicode names are stored in
IDNA (punycode) form, lower-cased, without a trailing dot, so one shop has
exactly one spelling and a unique index can enforce it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["normalize_hostname", "normalize_tenant_domain"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_HOSTNAME = 253


def normalize_hostname(value: str) -> str:
    """Return the canonical form of ``value`` or raise ValueError saying what is wrong."""
    host = value.strip()
    if not host:
        msg = "must not be empty"
        raise ValueError(msg)
    if any(ch in host for ch in "/:@?#[] \t\\"):
        msg = "must be a bare hostname (no scheme, port, path or spaces)"
        raise ValueError(msg)
    host = host.rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        msg = "must be a hostname, not an IP address"
        raise ValueError(msg)
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        msg = "is not a valid internationalised hostname"
        raise ValueError(msg) from exc
    if len(host) > _MAX_HOSTNAME:
        msg = f"must be at most {_MAX_HOSTNAME} characters"
        raise ValueError(msg)
    labels = host.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        msg = "must be dot-separated labels of letters, digits and inner hyphens"
        raise ValueError(msg)
    return host


def normalize_tenant_domain(value: str, suffixes: Iterable[str]) -> str:
    """Normalise ``value`` and require it to sit strictly under one of ``suffixes``."""
    host = normalize_hostname(value)
    allowed = [normalize_hostname(s) for s in suffixes]
    if allowed and not any(host.endswith("." + suffix) for suffix in allowed):
        msg = "must be a subdomain of " + " or ".join(allowed)
        raise ValueError(msg)
    return host
