"""Cryptographic helpers; field encryption arrives with the KYC issue."""

from hardened.crypto._kdf import derive_key

__all__ = ["derive_key"]
