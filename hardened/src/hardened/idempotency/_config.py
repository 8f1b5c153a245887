"""What the idempotency middleware guards, stores, replays and how it scopes keys.

Frozen and checked at construction: a rule or a header list that would replay
a credential, or a lease that would lapse between its heartbeats, fails when
the app is built, not on a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hardened.http import DEFAULT_MAX_BODY_BYTES, PathPattern
from hardened.idempotency._lease import LeaseConfig
from hardened.idempotency._request import scope_from_credentials

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hardened.idempotency._request import ScopeOf

__all__ = ["DEFAULT_REPLAY_HEADERS", "HttpIdempotencyConfig", "IdempotentRoute"]

DEFAULT_REPLAY_HEADERS = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-location",
        "content-type",
        "etag",
        "expires",
        "last-modified",
        "link",
        "location",
        "preference-applied",
        "vary",
    }
)

# Credentials, per-connection framing and per-request values: never replayed to anyone.
_NEVER_REPLAYED = frozenset(
    {
        "authorization",
        "connection",
        "content-length",
        "idempotent-replayed",
        "proxy-authenticate",
        "proxy-authorization",
        "set-cookie",
        "set-cookie2",
        "transfer-encoding",
        "www-authenticate",
    }
)


@dataclass(frozen=True, slots=True)
class IdempotentRoute:
    """Requests whose method and path match are guarded.

    ``path`` matches like `hardened.ratelimit.Rule` (`hardened.http.PathPattern`):
    a prefix on whole segments (``/orders`` matches ``/orders`` and ``/orders/7``,
    not ``/ordersx``), exact with a trailing ``$``. A ``{name}`` segment matches
    any one segment, and then the path is the route template used for scoping. ``required`` refuses
    requests without a key (400); otherwise they pass unguarded. ``wait`` (in
    seconds) lets a duplicate wait for the first request's result instead of
    getting a 409 at once. ``fingerprint_fields`` (dotted paths into a JSON
    object body) replaces the raw body in the fingerprint.
    """

    path: str
    methods: frozenset[str] = frozenset({"POST", "PATCH"})
    required: bool = True
    wait: float = 0.0
    fingerprint_fields: tuple[str, ...] | None = None
    _pattern: PathPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", PathPattern(self.path))
        if self.wait < 0:
            msg = f"wait must be >= 0, got {self.wait}"
            raise ValueError(msg)
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        if self.fingerprint_fields is not None:
            object.__setattr__(self, "fingerprint_fields", tuple(self.fingerprint_fields))

    def matches(self, method: str, path: str) -> bool:
        """Whether this route guards ``method`` ``path``."""
        return method.upper() in self.methods and self._pattern.matches(path)

    def template(self, path: str) -> str:
        """The route template that scopes keys for ``path``.

        The rule's own path when it names one (``{param}`` segments, or exact with
        ``$``); under a plain prefix rule, the request path.
        """
        template = self._pattern.template
        return template if template is not None else path


def _check_replay_headers(names: Iterable[str]) -> frozenset[str]:
    lowered = frozenset(n.lower() for n in names)
    forbidden = sorted(lowered & _NEVER_REPLAYED)
    if forbidden:
        msg = f"these headers must never be replayed: {', '.join(forbidden)}"
        raise ValueError(msg)
    return lowered


@dataclass(frozen=True, slots=True)
class HttpIdempotencyConfig(LeaseConfig):
    """`LeaseConfig` (lease, heartbeat, retention, complete retries) plus what is kept.

    Statuses below 500 are stored, except 401, 403 and ``transient_statuses``
    (nothing happened, a retry may succeed); ``store_server_errors`` stores 5xx
    and exceptions too. A response over ``max_stored_bytes`` is not kept (its
    retries get a 410). Only ``replay_headers`` are replayed; credential and
    framing headers are refused here. Any of ``key_headers`` carries the key
    (two different keys are a 400); ``scope_of`` gives a request's (tenant,
    principal).
    """

    store_server_errors: bool = False
    transient_statuses: frozenset[int] = frozenset({408, 409, 425, 429})
    key_headers: tuple[str, ...] = ("idempotency-key", "x-idempotency-key")
    replay_headers: frozenset[str] = DEFAULT_REPLAY_HEADERS
    max_stored_bytes: int = 1024 * 1024
    max_request_bytes: int = DEFAULT_MAX_BODY_BYTES
    scope_of: ScopeOf = scope_from_credentials
    debug: bool = False

    def __post_init__(self) -> None:
        LeaseConfig.__post_init__(self)  # zero-argument super() fails in a slots dataclass
        if not self.key_headers:
            msg = "key_headers must name at least one header"
            raise ValueError(msg)
        object.__setattr__(self, "key_headers", tuple(h.lower() for h in self.key_headers))
        object.__setattr__(self, "replay_headers", _check_replay_headers(self.replay_headers))
