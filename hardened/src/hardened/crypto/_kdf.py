"""Per-purpose keys from one configured secret (HKDF-SHA256, RFC 5869).

Using a secret directly for several jobs (hashing refresh tokens, signing CSRF
tokens, hashing reset tokens) couples them: a leak or a rotation of one
affects all. HKDF gives each purpose its own independent key from the same
input, so purposes stay separate without more variables to configure.
"""

from __future__ import annotations

from hardened._extras import missing_extra

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.crypto", "crypto", "auth") from exc

__all__ = ["derive_key"]


def derive_key(secret: str | bytes, purpose: str, *, length: int = 32) -> bytes:
    """A ``length``-byte key for ``purpose`` derived from ``secret``."""
    if not purpose:
        msg = "purpose must name what the key is for"
        raise ValueError(msg)
    material = secret.encode() if isinstance(secret, str) else secret
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode())
    return hkdf.derive(material)
