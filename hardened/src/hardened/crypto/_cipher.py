"""A tenant's unwrapped data keys and the per-column ciphers derived from them.

Each column gets its own AES-256-GCM key, HKDF-derived from the tenant's data
key with the table and column in the info, and each blind index its own HMAC
key the same way: one data key per tenant and version, independent keys per
purpose and column, nothing more to store or rotate.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from os import urandom
from types import MappingProxyType
from typing import TYPE_CHECKING

from hardened._extras import missing_extra
from hardened.crypto._errors import DecryptionFailed, KeyDestroyed, UnknownKey, refuse
from hardened.crypto._format import (
    HEADER_BYTES,
    NONCE_BYTES,
    OVERHEAD_BYTES,
    frame,
    pack_header,
    unpack_header,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.crypto", "crypto") from exc

__all__ = ["ColumnCipher", "TenantKeys"]

_FIELD_LABEL = b"hardened.crypto/field/v1"
_FIELD_KEY_LABEL = b"hardened.crypto/field-key/v1"
_INDEX_KEY_LABEL = b"hardened.crypto/blind-index-key/v1"
_ROW_ID_LENGTH = (16).to_bytes(4, "big")
_BODY = HEADER_BYTES + NONCE_BYTES


def _subkey(data_key: bytes, *info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=frame(*info)).derive(data_key)


@dataclass(slots=True, eq=False)
class TenantKeys:
    """Every data-key version of one tenant: bytes when live, None when destroyed.

    ``current`` is the version new values are written under (the highest live
    one), None when the tenant has no live key. A snapshot: load the keys again
    (next transaction) to see a rotation or a shred.
    """

    tenant: uuid.UUID
    versions: Mapping[int, bytes | None] = field(repr=False)
    current: int | None = field(init=False)
    live_versions: tuple[int, ...] = field(init=False)
    _columns: dict[tuple[str, str], ColumnCipher] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.versions = MappingProxyType(dict(self.versions))
        live = sorted((v for v, k in self.versions.items() if k is not None), reverse=True)
        self.live_versions = tuple(live)
        self.current = live[0] if live else None

    def key(self, version: int) -> bytes:
        """The data key of ``version``; `UnknownKey` or `KeyDestroyed` when there is none."""
        if version not in self.versions:
            raise refuse(
                UnknownKey, "no such data-key version", tenant=str(self.tenant), version=version
            )
        key = self.versions[version]
        if key is None:
            raise refuse(
                KeyDestroyed, "data key destroyed", tenant=str(self.tenant), version=version
            )
        return key

    def column(self, table: str, column: str) -> ColumnCipher:
        """The cipher of one column of this tenant (cached for the keys' lifetime)."""
        cipher = self._columns.get((table, column))
        if cipher is None:
            cipher = self._columns[(table, column)] = ColumnCipher(self, table, column)
        return cipher


class ColumnCipher:
    """Encrypts and decrypts one column's values, each bound to its row id."""

    __slots__ = ("_by_header", "_by_version", "_index_keys", "_prefix", "column", "keys", "table")

    def __init__(self, keys: TenantKeys, table: str, column: str) -> None:
        self.keys = keys
        self.table = table
        self.column = column
        self._prefix = frame(_FIELD_LABEL, keys.tenant.bytes, table.encode(), column.encode())
        # header bytes -> (AEAD of that version, associated data up to the row id)
        self._by_header: dict[bytes, tuple[AESGCM, bytes]] = {}
        self._by_version: dict[int, tuple[bytes, AESGCM, bytes]] = {}
        self._index_keys: dict[int, bytes] = {}

    def _version(self, version: int) -> tuple[bytes, AESGCM, bytes]:
        """(header, AEAD, associated data up to the row id) of ``version``, made once."""
        found = self._by_version.get(version)
        if found is None:
            header = pack_header(version)
            key = _subkey(
                self.keys.key(version), _FIELD_KEY_LABEL, self.table.encode(), self.column.encode()
            )
            # The row id is the last framed part: its 4-byte length (16) closes the prefix.
            aead, head = AESGCM(key), header + self._prefix + _ROW_ID_LENGTH
            self._by_header[header] = (aead, head)
            found = self._by_version[version] = (header, aead, head)
        return found

    def encrypt(self, plaintext: bytes, row_id: uuid.UUID, *, version: int | None = None) -> bytes:
        """``plaintext`` sealed for this column and ``row_id`` (current version by default)."""
        if version is None:
            version = self.keys.current
            if version is None:
                raise refuse(
                    KeyDestroyed, "tenant has no live data key", tenant=str(self.keys.tenant)
                )
        header, aead, head = self._by_version.get(version) or self._version(version)
        nonce = urandom(NONCE_BYTES)
        return header + nonce + aead.encrypt(nonce, plaintext, head + row_id.bytes)

    def decrypt(self, value: bytes, row_id: uuid.UUID) -> bytes:
        """The plaintext of ``value``; a typed `CryptoError` for anything else, never a fallback."""
        found = self._by_header.get(value[:HEADER_BYTES])
        if found is None or len(value) < OVERHEAD_BYTES:
            found = self._version(unpack_header(value))[1:]  # typed errors for bad headers
        aead, head = found
        try:
            return aead.decrypt(value[HEADER_BYTES:_BODY], value[_BODY:], head + row_id.bytes)
        except InvalidTag:
            raise refuse(
                DecryptionFailed,
                "tag mismatch: value altered or moved from another cell",
                table=self.table,
                column=self.column,
                row_id=str(row_id),
            ) from None

    def version_of(self, value: bytes) -> int:
        """The data-key version ``value`` was written under."""
        return unpack_header(value)

    def blind_index(self, normalised: bytes, bits: int, *, version: int | None = None) -> int:
        """The entry of ``normalised``: key version in the high bits, ``bits`` of HMAC below."""
        if version is None:
            version = self.keys.current
            if version is None:
                raise refuse(
                    KeyDestroyed, "tenant has no live data key", tenant=str(self.keys.tenant)
                )
        key = self._index_keys.get(version)
        if key is None:
            key = _subkey(
                self.keys.key(version), _INDEX_KEY_LABEL, self.table.encode(), self.column.encode()
            )
            self._index_keys[version] = key
        digest = hmac.digest(key, normalised, "sha256")
        return (version << 32) | (int.from_bytes(digest[:4], "big") >> (32 - bits))

    def blind_indexes(self, normalised: bytes, bits: int) -> list[int]:
        """The entries of ``normalised`` under every live version (lookups during a rotation)."""
        return [self.blind_index(normalised, bits, version=v) for v in self.keys.live_versions]
