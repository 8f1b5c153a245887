"""The ciphertext format and the associated data binding a value to its cell.

A stored value is ``version (1 byte) | key version (4 bytes, big-endian) |
nonce (12 bytes) | AES-256-GCM ciphertext and tag``. The header is
authenticated (it is part of the associated data), so the key version cannot
be edited to steer decryption, and it names the key, so decryption never tries
keys one after another.

The associated data is the header followed by length-prefixed parts:
the format label, the tenant, the table, the column and the row id. A
length prefix per part makes the encoding injective (``("ab", "c")`` and
``("a", "bc")`` differ), so a value copied to another row, column or tenant
fails its tag check.
"""

from __future__ import annotations

import struct
from typing import Final

from hardened.crypto._errors import MalformedCiphertext, refuse

__all__ = [
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "NONCE_BYTES",
    "OVERHEAD_BYTES",
    "frame",
    "pack_header",
    "unpack_header",
]

FORMAT_VERSION: Final = 1
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
HEADER_BYTES: Final = 5
OVERHEAD_BYTES: Final = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
_HEADER = struct.Struct(">BI")
_LENGTH = struct.Struct(">I")
MAX_KEY_VERSION: Final = 2**31 - 1


def frame(*parts: bytes) -> bytes:
    """``parts`` as one unambiguous byte string (4-byte length before each)."""
    return b"".join(_LENGTH.pack(len(part)) + part for part in parts)


def pack_header(key_version: int) -> bytes:
    """The 5-byte header naming the format and the data-key version."""
    return _HEADER.pack(FORMAT_VERSION, key_version)


def unpack_header(value: bytes) -> int:
    """The key version of a stored value; `MalformedCiphertext` if it is not one."""
    if len(value) < OVERHEAD_BYTES:
        raise refuse(MalformedCiphertext, "too short to be a ciphertext", length=len(value))
    version, key_version = _HEADER.unpack_from(value)
    if version != FORMAT_VERSION:
        raise refuse(MalformedCiphertext, "unknown format version", format_version=version)
    return int(key_version)
