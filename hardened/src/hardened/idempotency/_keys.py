"""Keys and fingerprints: scoped, hashed, length-prefixed.

Why length prefixes: joining parts with a separator lets two different part
lists produce the same bytes (``"a:b" + "c"`` vs ``"a" + "b:c"``); an 8-byte
big-endian length before each part makes the encoding injective, so neither a
fingerprint nor a scoped key can be forged by moving bytes between parts.

Why hashes: a raw idempotency key is client data, sometimes an order number
or worse; the store and the logs only ever see hashes of it.

Why `fingerprints`: a stored record keeps the fingerprint its secret made.
When that secret is rotated, the retry of a stored request is fingerprinted
under the new secret first and matches only under the old one; the previous
secrets make the same parts' fingerprint again, one at a time, only when asked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from typing import TYPE_CHECKING

from hardened.idempotency._errors import IdempotencyKeyInvalid

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "MAX_KEY_LENGTH",
    "fingerprint",
    "fingerprints",
    "key_hash_for_logs",
    "scoped_key",
    "validate_key",
]

#: The IETF draft's practical bound; longer keys are refused, not truncated.
MAX_KEY_LENGTH = 255

_PRINTABLE = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}")
_ABSENT = b"\xff" * 8  # a length no real part can have: None differs from ""


_LENGTH = struct.Struct(">Q").pack


def _framed(parts: tuple[bytes | None, ...]) -> bytes:
    return b"".join([_ABSENT if part is None else _LENGTH(len(part)) + part for part in parts])


def fingerprint(secret: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over the length-prefixed ``parts`` (e.g. method, route, query, body).

    Keyed so a stored fingerprint reveals nothing about a low-entropy payload.
    """
    return hmac.digest(secret, _framed(parts), "sha256")


def fingerprints(secrets: Iterable[bytes], *parts: bytes) -> Iterator[bytes]:
    """`fingerprint` of ``parts`` under each secret in turn (current first), lazily."""
    framed = _framed(parts)
    for secret in secrets:
        yield hmac.digest(secret, framed, "sha256")


def scoped_key(
    *, tenant: str | None, principal: str | None, method: str, route: str, key: str
) -> str:
    """The store key for a client key: SHA-256 hex of the length-prefixed scope and key.

    The scope (tenant, principal, method, route template) keeps one client's
    key from ever meeting another's, or the same key on another route.
    """
    framed = _framed(
        (
            None if tenant is None else tenant.encode(),
            None if principal is None else principal.encode(),
            method.upper().encode(),
            route.encode(),
            key.encode(),
        )
    )
    return hashlib.sha256(framed).hexdigest()


def validate_key(raw: str) -> str:
    """Return ``raw`` if it is 1..255 printable ASCII characters; else `IdempotencyKeyInvalid`."""
    if _PRINTABLE.fullmatch(raw) is None:
        detail = f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters."
        raise IdempotencyKeyInvalid(detail, context={"length": len(raw)})
    return raw


def key_hash_for_logs(raw: str) -> str:
    """A short, stable hash of a key, safe to log and to search logs by."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]
