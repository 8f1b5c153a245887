"""Reading a guarded request: its key, whose key it is, and what it asks for.

Middleware runs before routing and before FastAPI dependencies, so everything
here works from the raw ASGI scope and body. Headers are read through
`hardened._asgi`, like every other middleware's, so names compare
case-insensitively everywhere. What each part means for clients (which
headers, how scope and fingerprint are formed) is in the idempotency
middleware guide.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hardened._asgi import headers_named
from hardened.errors import PayloadTooLarge
from hardened.http import host_name, identity_of
from hardened.idempotency._errors import IdempotencyKeyInvalid
from hardened.types import Scope

if TYPE_CHECKING:
    from hardened.types import Receive

__all__ = [
    "Disconnected",
    "ScopeOf",
    "fingerprint_payload",
    "raw_key",
    "read_body",
    "scope_from_credentials",
    "sorted_query",
]

_CREDENTIAL_HEADERS = frozenset({b"host", b"authorization", b"x-api-key", b"cookie"})

ScopeOf = Callable[[Scope], tuple[str | None, str | None]]
"""(tenant, principal) of a raw request; None where there is none."""


# -- whose key: tenant and principal -------------------------------------------------------


@functools.lru_cache(maxsize=256)  # a deployment answers to a few host names
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
    keeps the same credential: a refreshed token is a new principal, whose
    retry runs again.
    """
    identity = identity_of(scope)
    if identity is not None:
        return identity.tenant, identity.principal if identity.error is None else None
    host: bytes | None = None
    auth: bytes | None = None
    api_key: bytes | None = None
    cookies: list[bytes] = []
    for name, value in headers_named(scope, _CREDENTIAL_HEADERS):
        if name == b"host":
            host = value if host is None else host
        elif name == b"authorization":
            auth = value if auth is None else auth
        elif name == b"x-api-key":
            api_key = value if api_key is None else api_key
        else:
            cookies.append(value)
    tenant = _tenant_of_host(host.decode("latin-1")) if host is not None else None
    if auth is None and api_key is None and not cookies:
        return tenant, None
    fields = [auth or b"", api_key or b""]
    if cookies:
        # Appended only when present: header-credential principals, and so their
        # stored records, are the same as before cookies counted.
        fields.append(b"; ".join(cookies))
    digest = hashlib.sha256()
    for raw in fields:
        digest.update(len(raw).to_bytes(4, "big") + raw)
    return tenant, digest.hexdigest()


# -- the key -------------------------------------------------------------------------------


def _unquote_sf_string(value: str) -> str:
    # The draft defines the field as an sf-string ("..."); bare values are accepted too.
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if re.search(r'(?<!\\)"|\\(?!["\\])', inner.replace("\\\\", "")):
            raise IdempotencyKeyInvalid("The Idempotency-Key is not a valid string.")
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def raw_key(scope: Scope, names: tuple[bytes, ...]) -> str | None:
    """The key sent under any of ``names`` (lower case), unvalidated; None when there is none.

    The same header twice, or two of ``names`` with different keys, is ambiguous:
    `IdempotencyKeyInvalid`.
    """
    sent = headers_named(scope, names)
    if not sent:
        return None
    if len(sent) == 1:  # the usual request: one key, under one name
        return _unquote_sf_string(sent[0][1].decode("latin-1").strip())
    found = [values for name in names if (values := [v for n, v in sent if n == name])]
    if not found:
        return None
    if len(found) > 1 or len(found[0]) > 1:
        if any(len(values) > 1 for values in found):
            raise IdempotencyKeyInvalid("The idempotency key header is repeated.")
        if len({_unquote_sf_string(v[0].decode("latin-1").strip()) for v in found}) > 1:
            raise IdempotencyKeyInvalid("The request carries two different idempotency keys.")
    return _unquote_sf_string(found[0][0].decode("latin-1").strip())


# -- what it asks for: the fingerprint's parts ---------------------------------------------


def _query_name(pair: bytes) -> bytes:
    return pair.partition(b"=")[0]


def sorted_query(raw: bytes) -> bytes:
    """The query string with its pairs stably sorted by name.

    Names may come in any order, but the values of one name keep theirs
    (``?amount=1&amount=100`` is not ``?amount=100&amount=1``).
    """
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


def fingerprint_payload(body: bytes, fields: tuple[str, ...] | None) -> tuple[bytes, bytes]:
    """(mode, bytes) the fingerprint covers: the raw body, or canonical JSON of ``fields``.

    A body that is not a JSON object, or nests too deep to parse, falls back to
    the raw bytes; the mode keeps the two from ever meeting.
    """
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


# -- the body ------------------------------------------------------------------------------


class Disconnected(Exception):
    """The client left before its body arrived: nothing was claimed."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body (the fingerprint needs it before the app runs)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
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
