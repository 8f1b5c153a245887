"""Key-encryption keys: the keyring from the environment and the provider interface.

``ENCRYPTION_KEY`` holds one or more ``id:key`` entries separated by commas,
each key 32 random bytes in hex (64 digits) or base64 (standard or URL-safe
alphabet, padding optional). The first entry is the primary: it wraps new data keys; the others
only unwrap. Rotation is Tink's add → promote → retire:

1. add ``k2`` after ``k1`` on every instance (``k1:…,k2:…``): both unwrap, ``k1`` wraps;
2. promote ``k2`` (``k2:…,k1:…``) and run the rewrap command: every data key is
   rewrapped under ``k2``; no encrypted row is touched;
3. retire ``k1`` (``k2:…``) once the rewrap reports nothing left under it.

The key provider is the seam for a KMS: it wraps and unwraps data keys and
never hands out the key-encryption key. `LocalKeyProvider` keeps the keyring
in memory; a KMS provider would call the service instead (and should cache
unwrapped data keys, since unwrapping happens once per transaction and tenant).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hardened._extras import missing_extra
from hardened.config import secret_problem
from hardened.crypto._errors import DecryptionFailed, UnknownKey, refuse
from hardened.crypto._format import NONCE_BYTES

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.crypto", "crypto") from exc

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["KEY_BYTES", "KeyProvider", "Keyring", "LocalKeyProvider", "generate_keyring_entry"]

KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _decode_key(text: str) -> bytes | None:
    """32 bytes from 64 hex digits or strict base64 (either alphabet), else None."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    if not text or not re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", text):
        return None
    padded = text.rstrip("=")
    padded += "=" * (-len(padded) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_BYTES else None


def generate_keyring_entry(key_id: str) -> str:
    """A fresh ``id:key`` entry (32 bytes from the OS generator, URL-safe base64)."""
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError("a key id is 1-32 of A-Z a-z 0-9 _ -")
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode().rstrip('=')}"


@dataclass(frozen=True, slots=True)
class Keyring:
    """Key-encryption keys by id, one primary; keys never appear in the repr."""

    primary: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.primary not in self.keys:
            raise ValueError(f"primary key id {self.primary!r} is not in the keyring")
        seen: set[bytes] = set()
        for key_id, key in self.keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"key id {key_id!r} must be 1-32 of A-Z a-z 0-9 _ -")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {KEY_BYTES} bytes")
            if key in seen:
                raise ValueError(f"key {key_id!r} repeats another key of the keyring")
            seen.add(key)

    @classmethod
    def parse(cls, value: str) -> Keyring:
        """The keyring of an ``ENCRYPTION_KEY`` value; ValueError names the entry, never a key."""
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if not entries:
            raise ValueError("must hold at least one id:key entry")
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(entries, start=1):
            key_id, sep, text = entry.partition(":")
            key_id = key_id.strip()
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise ValueError(
                    f"entry {position} must be id:key with an id of 1-32 of A-Z a-z 0-9 _ -"
                )
            if key_id in keys:
                raise ValueError(f"key id {key_id!r} appears twice")
            if reason := secret_problem(text.strip()):
                raise ValueError(f"key {key_id!r} {reason}")
            raw = _decode_key(text)
            if raw is None:
                raise ValueError(f"key {key_id!r} must be {KEY_BYTES} bytes in hex or base64")
            keys[key_id] = raw
        return cls(primary=entries[0].partition(":")[0].strip(), keys=keys)


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps data keys under key-encryption keys it never reveals."""

    @property
    def primary_id(self) -> str:
        """The id of the key that wraps new data keys."""
        ...

    def key_ids(self) -> frozenset[str]:
        """Every id that can still unwrap."""
        ...

    def wrap(self, data_key: bytes, associated: bytes) -> tuple[str, bytes]:
        """``data_key`` wrapped under the primary key: (key id, wrapped bytes)."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes, associated: bytes) -> bytes:
        """The data key; `UnknownKey` or `DecryptionFailed` when it cannot be."""
        ...


class LocalKeyProvider:
    """A provider over an in-memory `Keyring` (AES-256-GCM key wrapping, random nonce)."""

    __slots__ = ("_aead", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._aead = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    @classmethod
    def from_env(
        cls, name: str = "ENCRYPTION_KEY", environ: Mapping[str, str] | None = None
    ) -> LocalKeyProvider:
        """The provider of the keyring in variable ``name``; ValueError names the variable."""
        value = (os.environ if environ is None else environ).get(name)
        if not value:
            raise ValueError(f"{name} is not set (id:key entries, first is primary)")
        try:
            return cls(Keyring.parse(value))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    @property
    def primary_id(self) -> str:
        return self._keyring.primary

    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keyring.keys)

    def wrap(self, data_key: bytes, associated: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        key_id = self._keyring.primary
        return key_id, nonce + self._aead[key_id].encrypt(nonce, data_key, associated)

    def unwrap(self, key_id: str, wrapped: bytes, associated: bytes) -> bytes:
        aead = self._aead.get(key_id)
        if aead is None:
            raise refuse(UnknownKey, "key-encryption key not in the keyring", kek_id=key_id)
        try:
            return aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], associated)
        except InvalidTag:
            raise refuse(DecryptionFailed, "data key does not unwrap", kek_id=key_id) from None

    def __repr__(self) -> str:
        return f"LocalKeyProvider(primary={self.primary_id!r}, ids={sorted(self.key_ids())!r})"
