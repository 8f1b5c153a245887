"""Cryptographic helpers: key derivation (HKDF) for per-purpose keys from one secret."""

from hardened.crypto._kdf import derive_key

__all__ = ["derive_key"]
