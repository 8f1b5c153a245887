"""The refusals of field encryption: all server-side faults, never client input.

A value that does not decrypt is never replaced by its ciphertext, an empty
string or ``None``: the caller gets one of these, with the reason in
``context`` (logs only) and never the value or a key.
"""

from __future__ import annotations

from typing import Any

from hardened.errors import HardenedError
from hardened.observability.metrics import counter

__all__ = [
    "CryptoError",
    "DecryptionFailed",
    "KeyDestroyed",
    "MalformedCiphertext",
    "PlaintextRefused",
    "UnknownKey",
    "refuse",
]

_FAILURES = counter(
    "crypto_failures_total", "Values that could not be decrypted or encrypted, by code", ["code"]
)


class CryptoError(HardenedError):
    """A value could not be encrypted or decrypted."""

    status = 500
    code = "crypto.error"
    title = "Internal Server Error"


class MalformedCiphertext(CryptoError):
    """The stored bytes are not a ciphertext of a known format version."""

    code = "crypto.malformed"


class UnknownKey(CryptoError):
    """The ciphertext names a key id (or data-key version) that is not in the keyring."""

    code = "crypto.unknown_key"


class KeyDestroyed(CryptoError):
    """The value's data key was destroyed (crypto-shredded): it is unreadable for good."""

    code = "crypto.key_destroyed"


class DecryptionFailed(CryptoError):
    """The authentication tag did not verify: the value was altered or moved to another cell."""

    code = "crypto.decryption_failed"


class PlaintextRefused(CryptoError):
    """A plaintext value reached an encrypted column without being encrypted."""

    code = "crypto.plaintext_refused"


def refuse(exc: type[CryptoError], reason: str, **context: Any) -> CryptoError:
    """``exc`` with ``reason`` for the logs (never rendered), counted by code."""
    _FAILURES.labels(exc.code).inc()
    return exc(context={"reason": reason, **context})
