"""HTTP front of idempotency: a pure-ASGI middleware and a FastAPI dependency.

Follows draft-ietf-httpapi-idempotency-key-header. Per guarded request the
middleware makes one backend call to claim (a replay needs nothing more) and one
to store the result, and nothing is logged on those two paths.

Which key
    ``Idempotency-Key`` (an sf-string; clients that send the value bare are
    accepted as well) or, for the seed's clients, ``X-Idempotency-Key``. Two
    different values, or the same header twice, are ambiguous and get a 400.

Scope
    The stored record is keyed by tenant + principal + method + route template +
    key, hashed (`scoped_key`). Middleware runs before routing and before
    FastAPI dependencies, so it cannot see a tenant that an auth dependency
    resolves. ``HttpIdempotencyConfig.scope_of`` supplies (tenant, principal)
    from the raw request. The default `scope_from_credentials` reads the
    `hardened.http.Identity` that `IdentityMiddleware` recorded (a refused or
    anonymous caller has no principal). Without that step it takes the
    ``Host`` name (parsed as `TrustedHosts` does: no port, case or trailing
    dot) for the tenant and a hash of the ``Authorization``, ``X-Api-Key`` and
    ``Cookie`` values for the principal. That fallback is only correct while a
    client keeps every one of those values: a refreshed access token, or any
    cookie that changed between two tries, is a new principal and its retry
    runs again. Run the identity step (or pass a ``scope_of``) to scope by the
    verified caller. Anonymous requests share one scope (per host without the
    identity step), so keys must be unguessable (UUIDs, as the draft recommends).

    The route template is the matching `IdempotentRoute`'s own path when it
    names one (``{param}`` segments, or exact with ``$``); under a plain prefix
    rule it is the request path. The fingerprint covers the concrete path, so a
    key reused on ``/orders/2/cancel`` after ``/orders/1/cancel`` gets a 422.
    It never replays the other order's result.

Fingerprint
    HMAC (`fingerprint`) over method, path, the query string with its pairs
    stably sorted by name (names may move; the values of one name keep their
    order, which the handler sees), and the raw body. A route with
    ``fingerprint_fields`` uses the canonical JSON of just those fields
    instead, so key order, whitespace and undeclared fields do not count. A
    body that is not a JSON object (or nests too deep to parse) falls back to
    the raw bytes.

Outcomes
    Key missing on a required route → 400 ``idempotency.key_missing``. Invalid
    key → 400. Another fingerprint → 422 ``idempotency.key_reused``. Held by a
    live lease → 409 with ``Retry-After``, unless the route sets ``wait``: then
    it polls until the holder finishes (and returns that result), releases it
    (and runs itself), or the wait ends (409). Done → the stored status,
    safe-listed headers and body with ``Idempotent-Replayed: true``. Claimed →
    the app runs. A heartbeat extends the lease if the app is still running
    after ``heartbeat`` seconds. The response streams to the client while a
    copy is buffered. The last body chunk is held back until the result is
    stored, so a client that has the whole answer gets a replay on retry,
    not a 409. The exception is a result the backend could not store at once:
    the client is not held back for it. It is stored in the background while
    the lease is renewed, so a retry gets the 409 (with ``Retry-After``) until
    it lands, then the replay, never a second run (see "Fail closed"). The
    default lease is 5 s, so a crashed holder's key is free again within
    seconds (the config's docstring has the trade-off).

What is stored
    Statuses below 500 are stored, except 401 and 403 (a refused credential did nothing; the
    caller's retry after a fresh login must run) and ``transient_statuses`` (408, 409, 425,
    429), which mean that nothing happened and a retry may succeed. Those, 5xx and exceptions
    release the claim so a retry runs again. A release the backend could not answer is retried
    in the background until the lease would have lapsed; the response does not wait. With
    ``store_server_errors`` (Stripe's "store once execution began") 5xx is stored too, and an
    exception is stored as a 500 problem. A result larger than ``max_stored_bytes`` is not
    kept, but it did run: a "done, response not kept" marker is stored (``not_stored`` is
    counted and logged), and retries get a 410 ``idempotency.response_not_kept`` with
    ``Idempotent-Replayed: true``, never a second run. A client that disconnects mid-response
    does not change the outcome: once the body was delivered the app is not told of the
    disconnect until the outcome is recorded (a framework would cancel the response), it
    finishes into a send that drops the data, and the result is stored for the retry. If the
    lease was lost (the holder stalled past it and someone took over), the fenced ``complete``
    refuses. That is logged and counted, and the client still gets its own response.

Fail closed
    If the backend is unreachable at the claim the answer is a 503
    ``store.unavailable`` and the app does not run. A money route never runs
    without its guard. If it fails when the result is stored, after the app
    ran, the client still gets its response (``idempotency.complete_failed``
    is logged, ``unavailable`` counted) and the store is retried in the
    background with backoff, the lease renewed meanwhile, for up to
    ``complete_retry_for`` (300 s). Then it is given up
    (``idempotency.complete_abandoned`` at error level, counted in
    ``hardened_idempotency_complete_abandoned_total``) and the lease lapses: a
    retry after that runs the app again. So may the first retry to reach a
    backend that was away for longer than the lease (the lease lapsed on its
    clock); that holder's late store is then refused and counted as lease
    lost. On a `SqlBackend`, a handler that wrote a recovery point in its own
    transaction (``checkpoint_in``) finds it in that second run and need not
    repeat its effect; any other handler does.

Replayed headers
    Only ``replay_headers`` (content-type, content-language, content-encoding,
    content-location, location, etag, last-modified, cache-control, expires,
    link, vary, content-disposition, preference-applied). ``Set-Cookie``,
    ``Authorization``, ``WWW-Authenticate`` and the like are refused at
    configuration time. Per-request headers such as ``X-Request-Id`` and
    ``RateLimit`` belong to the retry and come from outer middleware.

Metrics and logs
    ``hardened_idempotency_requests_total{outcome}``: executed, replayed,
    in_flight, mismatch, missing, invalid, released, not_stored, lease_lost,
    unavailable (a failed claim, or a result not stored at once); and
    ``hardened_idempotency_complete_abandoned_total``. Logs carry
    `key_hash_for_logs` of the key, never the key itself.

The FastAPI dependency `idempotency_key` checks the key early (400) and
exposes it to the handler, for example as the ledger's operation key. Claim and
replay stay in the middleware, the only place that can capture and replay a
whole response. ``idempotency_key(guarded=True)`` answers 500 if the
middleware did not guard the request. That catches a money route that was
left out of the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from hardened._types import Scope
from hardened.errors import HardenedError, PayloadTooLarge, StoreUnavailable, problem_for
from hardened.http._body import DEFAULT_MAX_BODY_BYTES
from hardened.http._hosts import host_name
from hardened.http._identity import identity_of
from hardened.http._paths import PathPattern
from hardened.http._problem import send_problem
from hardened.idempotency._contracts import Claimed, Completed, InFlight, Mismatch
from hardened.idempotency._errors import (
    IdempotencyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyResponseNotKept,
)
from hardened.idempotency._keys import (
    MAX_KEY_LENGTH,
    fingerprint,
    key_hash_for_logs,
    scoped_key,
    validate_key,
)
from hardened.idempotency._lease import DEFAULT_COMPLETE_RETRY_FOR, HeldLease
from hardened.observability._metrics import counter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Sequence

    from hardened._types import ASGIApp, Message, Receive, Send
    from hardened.idempotency._contracts import Claim, IdempotencyBackend

__all__ = [
    "DEFAULT_REPLAY_HEADERS",
    "HttpIdempotencyConfig",
    "IdempotencyKey",
    "IdempotencyMiddleware",
    "IdempotencyUnguarded",
    "IdempotentRoute",
    "ScopeOf",
    "decode_response",
    "encode_response",
    "idempotency_key",
    "scope_from_credentials",
]

ScopeOf = Callable[[Scope], tuple[str | None, str | None]]
"""(tenant, principal) of a raw request; None where there is none."""

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

_STATE_KEY = "idempotency"
# A refused credential did nothing; storing it would replay the refusal after a fresh login.
_NEVER_STORED = frozenset({401, 403})
_REPLAYED_HEADER = (b"idempotent-replayed", b"true")
_MAX_POLL = 0.5
_FIRST_POLL = 0.02

_log = structlog.get_logger("hardened.idempotency")
_requests = counter(
    "idempotency_requests_total",
    "Idempotency-guarded HTTP requests by outcome.",
    ["outcome"],
)
_OUTCOMES = (
    "executed",
    "replayed",
    "in_flight",
    "mismatch",
    "missing",
    "invalid",
    "released",
    "not_stored",
    "lease_lost",
    "unavailable",
)
_count = {outcome: _requests.labels(outcome).inc for outcome in _OUTCOMES}


class IdempotencyUnguarded(HardenedError):
    """A route declared ``idempotency_key(guarded=True)`` but no middleware rule covered it."""

    code = "idempotency.unguarded"
    title = "Idempotency guard missing"


# -- scope ---------------------------------------------------------------------------------


def _headers(scope: Scope, name: bytes) -> list[bytes]:
    return [bytes(value) for key, value in scope.get("headers", ()) if key == name]


def _tenant_of_host(value: str) -> str:
    # The port says which worker or listener answered, not which tenant is asking.
    # A malformed value (never past TrustedHostMiddleware) stays apart from every host name.
    name = host_name(value)
    return name if name is not None else value.strip().lower()


def scope_from_credentials(scope: Scope) -> tuple[str | None, str | None]:
    """The default ``scope_of``: the identity step's caller, else Host and a credential hash.

    With `hardened.http.IdentityMiddleware` in front, (tenant, principal) are the
    `Identity`'s (a refused or anonymous caller has no principal). Without it,
    the tenant is the Host's name and the principal a hash over ``Authorization``,
    ``X-Api-Key`` and ``Cookie``, which stays the same only while the client
    keeps the same credential (see the module docstring).
    """
    identity = identity_of(scope)
    if identity is not None:
        return identity.tenant, identity.principal if identity.error is None else None
    hosts = _headers(scope, b"host")
    tenant = _tenant_of_host(hosts[0].decode("latin-1")) if hosts else None
    auth = _headers(scope, b"authorization")
    api_key = _headers(scope, b"x-api-key")
    cookies = _headers(scope, b"cookie")
    if not (auth or api_key or cookies):
        return tenant, None
    fields = [auth[0] if auth else b"", api_key[0] if api_key else b""]
    if cookies:
        # Appended only when present: header-credential principals, and so their
        # stored records, are the same as before cookies counted.
        fields.append(b"; ".join(cookies))
    digest = hashlib.sha256()
    for raw in fields:
        digest.update(len(raw).to_bytes(4, "big") + raw)
    return tenant, digest.hexdigest()


# -- configuration -------------------------------------------------------------------------


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
        """The route template that scopes keys for ``path`` (see the module docstring)."""
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
class HttpIdempotencyConfig:
    """How long claims and results live, what is stored, replayed and scoped.

    ``lease`` (5 s) is how soon a crashed holder's key can be retried; the
    heartbeat renews it every third of it (``heartbeat``), so two beats can
    fail before a slow request loses its claim. The trade-off: a holder whose
    event loop stalls longer than the lease loses its claim to a retry. Fencing
    then stops it from storing its result, and in the transactional mode
    (`SqlBackend.complete_in`) from committing its effect; an effect outside
    the database (a provider call) could be done twice. Raise the lease for
    handlers that make such calls on a loop that may stall.

    ``complete_retry_for`` (300 s) bounds the background retries of a result
    the backend could not store (see "Fail closed" in the module docstring):
    long enough to ride out a failover or a database restart, short enough
    that a long outage does not keep results (up to ``max_stored_bytes``
    each) and tasks in memory without end. 0 gives up at once.
    """

    lease: float = 5.0
    heartbeat: float | None = None
    retention: float = 86_400.0
    store_server_errors: bool = False
    transient_statuses: frozenset[int] = frozenset({408, 409, 425, 429})
    key_headers: tuple[str, ...] = ("idempotency-key", "x-idempotency-key")
    replay_headers: frozenset[str] = DEFAULT_REPLAY_HEADERS
    max_stored_bytes: int = 1024 * 1024
    max_request_bytes: int = DEFAULT_MAX_BODY_BYTES
    scope_of: ScopeOf = scope_from_credentials
    debug: bool = False
    complete_retry_for: float = DEFAULT_COMPLETE_RETRY_FOR

    def __post_init__(self) -> None:
        if not all(v > 0 and math.isfinite(v) for v in (self.lease, self.retention)):
            # inf or nan would pass a "> 0" check and then fail in every request's TTL.
            msg = "lease and retention must be positive finite seconds"
            raise ValueError(msg)
        if not (self.complete_retry_for >= 0 and math.isfinite(self.complete_retry_for)):
            msg = f"complete_retry_for must be >= 0 finite seconds, got {self.complete_retry_for}"
            raise ValueError(msg)
        if self.heartbeat is None:
            object.__setattr__(self, "heartbeat", self.lease / 3)
        elif not 0 < self.heartbeat < self.lease:
            msg = f"heartbeat must be in (0, lease), got {self.heartbeat}"
            raise ValueError(msg)
        if not self.key_headers:
            msg = "key_headers must name at least one header"
            raise ValueError(msg)
        object.__setattr__(self, "key_headers", tuple(h.lower() for h in self.key_headers))
        object.__setattr__(self, "replay_headers", _check_replay_headers(self.replay_headers))

    @property
    def heartbeat_interval(self) -> float:
        """``heartbeat`` after defaulting (always set)."""
        return self.heartbeat if self.heartbeat is not None else self.lease / 3


# -- the stored response -------------------------------------------------------------------

_MAGIC = b"\x01"
_NOT_KEPT = b"\x02"  # + status: executed, response too large to keep (never a response)
_STATUS = struct.Struct(">H")
_HEAD = struct.Struct(">HH")  # status, header count
_PAIR = struct.Struct(">HH")  # name length, value length
_MAX_FIELD = 0xFFFF


def encode_response(status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A response as compact bytes: version, status, length-prefixed headers, then the body."""
    kept = [(n, v) for n, v in headers if len(n) <= _MAX_FIELD and len(v) <= _MAX_FIELD]
    out = [_MAGIC, _HEAD.pack(status, len(kept))]
    for name, value in kept:
        out.append(_PAIR.pack(len(name), len(value)))
        out.append(name)
        out.append(value)
    out.append(body)
    return b"".join(out)


def decode_response(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Inverse of `encode_response`; ValueError on anything else."""
    view = memoryview(data)
    if view[:1] != _MAGIC or len(view) < 1 + _HEAD.size:
        msg = "not an encoded response"
        raise ValueError(msg)
    status, count = _HEAD.unpack_from(view, 1)
    pos = 1 + _HEAD.size
    headers = []
    for _ in range(count):
        if pos + _PAIR.size > len(view):
            msg = "truncated encoded response"
            raise ValueError(msg)
        name_len, value_len = _PAIR.unpack_from(view, pos)
        pos += _PAIR.size
        end = pos + name_len + value_len
        if end > len(view):
            msg = "truncated encoded response"
            raise ValueError(msg)
        headers.append((bytes(view[pos : pos + name_len]), bytes(view[pos + name_len : end])))
        pos = end
    return status, headers, bytes(view[pos:])


# -- request parsing -----------------------------------------------------------------------


def _unquote_sf_string(value: str) -> str:
    # The draft defines the field as an sf-string ("..."); bare values are accepted too.
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if re.search(r'(?<!\\)"|\\(?!["\\])', inner.replace("\\\\", "")):
            raise IdempotencyKeyInvalid("The Idempotency-Key is not a valid string.")
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def _raw_key(scope: Scope, names: tuple[bytes, ...]) -> str | None:
    found = [(key, bytes(value)) for key, value in scope.get("headers", ()) if key in names]
    if not found:
        return None
    if len(found) > 1:
        if len({key for key, _ in found}) < len(found):
            raise IdempotencyKeyInvalid("The idempotency key header is repeated.")
        if len({_unquote_sf_string(v.decode("latin-1").strip()) for _, v in found}) > 1:
            raise IdempotencyKeyInvalid("The request carries two different idempotency keys.")
    return _unquote_sf_string(found[0][1].decode("latin-1").strip())


def _query_name(pair: bytes) -> bytes:
    return pair.partition(b"=")[0]


def _sorted_query(raw: bytes) -> bytes:
    # A stable sort by name only: names may come in any order, but the values of
    # one name keep theirs (?amount=1&amount=100 is not ?amount=100&amount=1).
    if not raw:
        return b""
    pairs = [p for p in raw.split(b"&") if p]
    pairs.sort(key=_query_name)
    return b"&".join(pairs)


_ABSENT = object()


def _select(document: Any, dotted: str) -> Any:
    node = document
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _payload(body: bytes, fields: tuple[str, ...] | None) -> tuple[bytes, bytes]:
    if fields is None:
        return b"body", body
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return b"body", body
    if not isinstance(document, dict):
        return b"body", body
    chosen = {}
    for name in fields:
        value = _select(document, name)
        if value is not _ABSENT:
            chosen[name] = value
    try:
        canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        return b"body", body
    # surrogatepass: total for the lone surrogates JSON escapes can carry ("\ud800"),
    # and the same bytes as UTF-8 for every other string, so fingerprints stay as they were.
    return b"fields", canonical.encode("utf-8", "surrogatepass")


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        if message["type"] != "http.request":
            continue
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- the middleware ------------------------------------------------------------------------


@dataclass(slots=True)
class _Guarded:
    """What the executing request captured so far."""

    raw_key: str
    scoped: str
    token: int
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    storable: bool = True
    settled: bool = False
    client_gone: bool = False
    done: bool = False  # the outcome is stored or released
    disconnect: Message | None = None  # held back from the app until done
    waiter: asyncio.Event | None = None

    def finish(self) -> None:
        self.done = True
        if self.waiter is not None:
            self.waiter.set()


def _holding_disconnect(receive: Receive, g: _Guarded) -> Receive:
    """``receive`` that answers ``http.disconnect`` only once the outcome is recorded.

    Frameworks cancel a response when the client leaves (Starlette's
    `StreamingResponse` does). The handler has done its work by then, so the
    app is left to finish into a send that drops the data, and the result is
    stored for the retry instead of released.
    """

    async def hold() -> Message:
        held = g.disconnect
        if held is None:
            message = await receive()
            if message["type"] != "http.disconnect" or g.done:
                return message
            held = g.disconnect = message
            g.client_gone = True
        if not g.done:
            if g.waiter is None:
                g.waiter = asyncio.Event()
            await g.waiter.wait()
        return held

    return hold


@dataclass(frozen=True, slots=True)
class _Admitted:
    key: str
    scoped: str
    body: bytes
    claim: Claim


class _Refusal(Exception):
    def __init__(self, problem: HardenedError) -> None:
        super().__init__(problem.code)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """The validated key of a request, and whether the middleware holds its claim.

    When guarded, ``record`` and ``token`` name the claim, so a handler on a
    `SqlBackend` can write a recovery point in its own transaction
    (``checkpoint_in(session, record, token, phase, data)``); after a crash
    the retry finds it in ``phase``/``data`` and finishes instead of redoing.
    """

    value: str
    guarded: bool = False
    record: str | None = None
    token: int | None = None
    phase: str | None = None
    data: bytes | None = None


class IdempotencyMiddleware:
    """Pure-ASGI Idempotency-Key guard (see the module docstring); other traffic passes through.

    The first rule matching a request decides; ``rules`` None guards every
    POST and PATCH, honouring a key when one is sent and requiring none.
    ``secret`` keys the fingerprint HMAC; keep it stable across workers and
    deploys, or in-flight keys will mismatch.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        backend: IdempotencyBackend,
        secret: bytes,
        rules: Sequence[IdempotentRoute] | None = None,
        config: HttpIdempotencyConfig | None = None,
    ) -> None:
        self.app = app
        self.backend = backend
        self.secret = secret
        self.rules = tuple(rules) if rules is not None else (IdempotentRoute("/", required=False),)
        self.config = config if config is not None else HttpIdempotencyConfig()
        self._names = tuple(h.encode("latin-1") for h in self.config.key_headers)
        self._replay_names = frozenset(h.encode("latin-1") for h in self.config.replay_headers)
        self._methods = frozenset(m for rule in self.rules for m in rule.methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in self._methods:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope.get("path", "")
        route = next((r for r in self.rules if r.matches(method, path)), None)
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            admitted = await self._admit(scope, receive, route)
        except _Refusal as refusal:
            await send_problem(scope, send, refusal.problem, debug=self.config.debug)
            return
        except _Disconnected:
            return  # nothing was claimed; the client is gone
        if admitted is None:
            await self.app(scope, receive, send)
            return
        await self._dispatch(scope, _replaying(admitted.body, receive), send, route, admitted)

    async def _admit(
        self, scope: Scope, receive: Receive, route: IdempotentRoute
    ) -> _Admitted | None:
        """Key, body, fingerprint and claim; None when an optional key is absent."""
        try:
            raw = _raw_key(scope, self._names)
            key = None if raw is None else validate_key(raw)
        except IdempotencyKeyInvalid as invalid:
            _count["invalid"]()
            raise _Refusal(invalid) from None
        if key is None:
            if not route.required:
                return None
            _count["missing"]()
            raise _Refusal(
                IdempotencyKeyMissing("This request requires an Idempotency-Key header.")
            )
        try:
            body = await _read_body(receive, self.config.max_request_bytes)
        except PayloadTooLarge as too_large:
            raise _Refusal(too_large) from None
        method, path = scope["method"], scope.get("path", "")
        tenant, principal = self.config.scope_of(scope)
        scoped = scoped_key(
            tenant=tenant, principal=principal, method=method, route=route.template(path), key=key
        )
        mode, payload = _payload(body, route.fingerprint_fields)
        query = _sorted_query(scope.get("query_string", b""))
        digest = fingerprint(self.secret, method.encode(), path.encode(), query, mode, payload)
        try:
            claim = await self._claim(scoped, digest, route)
        except StoreUnavailable as failure:
            _count["unavailable"]()
            _log.warning("idempotency.store_unavailable", key_hash=key_hash_for_logs(key))
            raise _Refusal(
                StoreUnavailable(
                    "Idempotency records are temporarily unavailable; retry later.",
                    retry_after=1,
                    context=failure.context,
                )
            ) from None
        return _Admitted(key, scoped, body, claim)

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, route: IdempotentRoute, a: _Admitted
    ) -> None:
        claim = a.claim
        if isinstance(claim, Completed):
            await self._replay(scope, send, claim.result, a.key)
            return
        if isinstance(claim, Claimed):
            scope.setdefault("state", {})[_STATE_KEY] = IdempotencyKey(
                a.key,
                guarded=True,
                record=a.scoped,
                token=claim.token,
                phase=claim.phase,
                data=claim.data,
            )
            await self._execute(scope, receive, send, _Guarded(a.key, a.scoped, claim.token))
            return
        refusal: HardenedError
        if isinstance(claim, Mismatch):
            _count["mismatch"]()
            _log.info(
                "idempotency.mismatch", key_hash=key_hash_for_logs(a.key), path=scope.get("path")
            )
            refusal = IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different request."
            )
        else:
            _count["in_flight"]()
            refusal = IdempotencyInFlight(
                "A request with this Idempotency-Key is still being processed; retry later.",
                retry_after=claim.retry_after,
            )
        await send_problem(scope, send, refusal, debug=self.config.debug)

    async def _claim(self, scoped: str, digest: bytes, route: IdempotentRoute) -> Claim:
        config = self.config
        claim = await self.backend.claim(
            scoped, digest, lease=config.lease, retention=config.retention
        )
        if not isinstance(claim, InFlight) or route.wait <= 0:
            return claim
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.wait
        delay = _FIRST_POLL
        while isinstance(claim, InFlight):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining, max(claim.retry_after, _FIRST_POLL)))
            delay = min(delay * 2, _MAX_POLL)
            claim = await self.backend.claim(
                scoped, digest, lease=config.lease, retention=config.retention
            )
        return claim

    async def _replay(self, scope: Scope, send: Send, result: bytes, key: str) -> None:
        if result[:1] == _NOT_KEPT and len(result) == 1 + _STATUS.size:
            _count["replayed"]()
            (original,) = _STATUS.unpack_from(result, 1)
            gone = IdempotencyResponseNotKept(
                f"The request with this Idempotency-Key was executed (status {original}), but "
                "its response was too large to keep, so it cannot be replayed.",
                original_status=original,
                headers={"idempotent-replayed": "true"},
            )
            await send_problem(scope, send, gone, debug=self.config.debug)
            return
        try:
            status, headers, body = decode_response(result)
        except ValueError:
            _log.error("idempotency.corrupt_record", key_hash=key_hash_for_logs(key))
            await send_problem(scope, send, HardenedError(), debug=self.config.debug)
            return
        _count["replayed"]()
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append(_REPLAYED_HEADER)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _execute(self, scope: Scope, receive: Receive, send: Send, g: _Guarded) -> None:
        config = self.config
        beat = HeldLease(
            self.backend,
            g.scoped,
            g.token,
            lease=config.lease,
            interval=config.heartbeat_interval,
            log_key=g.raw_key,
        )
        replay_names = self._replay_names
        limit = config.max_stored_bytes

        async def forward(message: Message) -> None:
            if g.client_gone:
                return
            try:
                await send(message)
            except OSError:
                # The client left; the result is still stored for its retry.
                g.client_gone = True

        async def capture(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                g.status = message["status"]
                g.headers = [
                    (bytes(n), bytes(v))
                    for n, v in message.get("headers", ())
                    if bytes(n).lower() in replay_names
                ]
            elif kind == "http.response.body" and not g.settled:
                chunk = message.get("body", b"")
                if g.storable and chunk:
                    g.size += len(chunk)
                    if g.size > limit:
                        g.storable = False
                        g.chunks.clear()
                    else:
                        g.chunks.append(chunk)
                if not message.get("more_body", False):
                    await beat.stop()
                    await self._settle(g, beat)
                    g.finish()
            await forward(message)

        try:
            await self.app(scope, _holding_disconnect(receive, g), capture)
        except BaseException:
            if not g.settled:
                # Shielded: a cancelled request (server shutdown) still releases its claim.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._settle_failure(scope, g, beat))
            raise
        finally:
            g.finish()
        if not g.settled:
            # The app returned without finishing a response: nothing trustworthy to store.
            await beat.stop()
            await self._release(g, beat, "incomplete")

    async def _settle(self, g: _Guarded, beat: HeldLease) -> None:
        g.settled = True
        status = g.status
        if (
            status in _NEVER_STORED
            or status in self.config.transient_statuses
            or (status >= 500 and not self.config.store_server_errors)
        ):
            await self._release(g, beat, "status")
            return
        if not g.storable:
            _count["not_stored"]()
            _log.warning(
                "idempotency.not_stored",
                key_hash=key_hash_for_logs(g.raw_key),
                size=g.size,
                limit=self.config.max_stored_bytes,
            )
            # It ran: a retry must not run it again, so a marker is stored instead.
            await self._complete(g, _NOT_KEPT + _STATUS.pack(status), beat, count=False)
            return
        body = g.chunks[0] if len(g.chunks) == 1 else b"".join(g.chunks)
        await self._complete(g, encode_response(status, g.headers, body), beat)

    async def _settle_failure(self, scope: Scope, g: _Guarded, beat: HeldLease) -> None:
        g.settled = True
        await beat.stop()
        if not self.config.store_server_errors:
            await self._release(g, beat, "exception")
            return
        problem = problem_for(HardenedError(), instance=scope.get("path"))
        body = problem.body()
        headers = [(n, v) for n, v in problem.header_list() if n in self._replay_names]
        await self._complete(g, encode_response(problem.status, headers, body), beat)

    async def _complete(
        self, g: _Guarded, result: bytes, beat: HeldLease, *, count: bool = True
    ) -> None:
        config = self.config
        stored = await beat.complete(
            result, retention=config.retention, retry_for=config.complete_retry_for
        )
        if stored is None:
            _count["unavailable"]()  # logged by the lease, which retries it in the background
        elif not stored:
            _count["lease_lost"]()  # marked and logged by the lease
        elif count:
            _count["executed"]()

    async def _release(
        self, g: _Guarded, beat: HeldLease, reason: str, *, count: bool = True
    ) -> None:
        if count:
            _count["released"]()
        released = await beat.release()
        if released is None:
            return  # logged by the lease, which retries it in the background
        _log.info(
            "idempotency.released",
            key_hash=key_hash_for_logs(g.raw_key),
            reason=reason,
            status=g.status or None,
            lease_lost=not released,
        )


# -- FastAPI -------------------------------------------------------------------------------


def idempotency_key(
    *,
    required: bool = True,
    guarded: bool = False,
    headers: Sequence[str] = ("idempotency-key", "x-idempotency-key"),
) -> Callable[..., Awaitable[IdempotencyKey | None]]:
    """A FastAPI dependency: the request's validated `IdempotencyKey` (None if optional and absent).

    Missing on a required route → 400 ``idempotency.key_missing``; malformed →
    400. It does not claim or replay; `IdempotencyMiddleware` does. With
    ``guarded=True`` a request that the middleware did not guard is a 500
    ``idempotency.unguarded``: the route would otherwise run without its
    exactly-once protection. The first of ``headers`` is declared in the route's
    OpenAPI (optional there, so a missing key gets this 400, not FastAPI's 422).
    """
    from fastapi import Header  # noqa: PLC0415 - fastapi stays optional
    from starlette.requests import Request  # noqa: PLC0415

    names = tuple(h.lower().encode("latin-1") for h in headers)
    need = "Required" if required else "Optional"
    declared = Header(
        None,
        alias="-".join(part.capitalize() for part in headers[0].split("-")),
        description=f"{need}: 1-{MAX_KEY_LENGTH} visible ASCII characters (a UUID), one per "
        "operation; a retry with the same key gets the first answer.",
    )

    async def dependency(request: Request, key: str | None = None) -> IdempotencyKey | None:
        state = request.scope.get("state") or {}
        found = state.get(_STATE_KEY)
        if isinstance(found, IdempotencyKey):
            return found
        raw = _raw_key(request.scope, names)
        if raw is None and required:
            raise IdempotencyKeyMissing("This request requires an Idempotency-Key header.")
        if guarded:
            raise IdempotencyUnguarded(context={"path": request.url.path})
        return None if raw is None else IdempotencyKey(validate_key(raw), guarded=False)

    params = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter(
            "key",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=declared,
        ),
    ]
    dependency.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return dependency
