"""The ENCRYPTION_KEY keyring: parsing, validation that names entries (never keys), wrapping."""

from __future__ import annotations

import os
import uuid

import pytest
from crypto_models import K1, K2

from hardened.crypto import (
    DecryptionFailed,
    Keyring,
    LocalKeyProvider,
    TenantKeys,
    UnknownKey,
    blind_index_bits,
    generate_keyring_entry,
)

HEX = "k3:" + os.urandom(32).hex()


def test_the_first_entry_is_primary_and_hex_or_base64_keys_parse() -> None:
    """``k2:…,k1:…`` makes k2 primary; 64 hex digits and base64 both give 32 bytes."""
    ring = Keyring.parse(f"{K2}, {K1},{HEX}")
    assert ring.primary == "k2"
    assert set(ring.keys) == {"k1", "k2", "k3"}
    assert all(len(k) == 32 for k in ring.keys.values())
    assert Keyring.parse(generate_keyring_entry("fresh")).primary == "fresh"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "at least one"),
        ("nokey", "entry 1 must be id:key"),
        ("k1:" + "QUFB" * 8, "does not look random"),
        ("k1:" + os.urandom(16).hex(), "32 bytes"),
        (f"{K1},{K1}", "appears twice"),
        (f"{K1},k9:{K1[3:]}", "repeats another key"),
        ("bad id!:" + os.urandom(32).hex(), "entry 1"),
        ("k1:changeme" + os.urandom(30).hex(), "placeholder"),
    ],
    ids=[
        "empty",
        "no-id",
        "low-entropy",
        "short",
        "duplicate-id",
        "same-key",
        "bad-id",
        "placeholder",
    ],
)
def test_a_bad_keyring_is_refused_naming_the_entry_never_the_key(value: str, message: str) -> None:
    """Every malformed keyring is a ValueError whose message carries no key material."""
    with pytest.raises(ValueError, match=message) as caught:
        Keyring.parse(value)
    for entry in value.split(","):
        secret = entry.partition(":")[2]
        if len(secret) > 8:
            assert secret not in str(caught.value)


def test_from_env_names_the_variable() -> None:
    """A missing or bad variable is reported by its name."""
    with pytest.raises(ValueError, match="ENCRYPTION_KEY is not set"):
        LocalKeyProvider.from_env(environ={})
    with pytest.raises(ValueError, match="ENCRYPTION_KEY: entry 1"):
        LocalKeyProvider.from_env(environ={"ENCRYPTION_KEY": "junk"})
    assert "k1" in repr(LocalKeyProvider.from_env(environ={"ENCRYPTION_KEY": K1}))
    assert K1[3:] not in repr(LocalKeyProvider.from_env(environ={"ENCRYPTION_KEY": K1}))


def test_wrapped_keys_are_bound_to_their_associated_data_and_kek() -> None:
    """A wrapped key unwraps only with its KEK id and associated data."""
    provider = LocalKeyProvider(Keyring.parse(f"{K1},{K2}"))
    kek, wrapped = provider.wrap(b"k" * 32, b"tenant-a")
    assert kek == "k1"
    assert provider.unwrap(kek, wrapped, b"tenant-a") == b"k" * 32
    with pytest.raises(DecryptionFailed):
        provider.unwrap(kek, wrapped, b"tenant-b")
    with pytest.raises(DecryptionFailed):
        provider.unwrap("k2", wrapped, b"tenant-a")
    with pytest.raises(UnknownKey):
        provider.unwrap("k7", wrapped, b"tenant-a")


def test_the_same_plaintext_seals_to_a_different_ciphertext_every_time() -> None:
    """A fresh 96-bit nonce per value: 1,000 seals of one value are 1,000 distinct ciphertexts."""
    cipher = TenantKeys(uuid.uuid4(), {1: os.urandom(32)}).column("t", "c")
    row = uuid.uuid4()
    sealed = {cipher.encrypt(b"same value", row) for _ in range(1000)}
    assert len(sealed) == 1000
    assert {len(s) for s in sealed} == {33 + len(b"same value")}
    assert {cipher.decrypt(s, row) for s in sealed} == {b"same value"}


@pytest.mark.parametrize(
    ("rows", "bits"), [(1, 1), (4, 1), (100, 5), (100_000, 15), (1_000_000, 18), (10**12, 32)]
)
def test_blind_index_width_follows_the_coincidence_rule(rows: int, bits: int) -> None:
    """floor(log2(N / 2)) bits, within [1, 32]: at least two rows share each index value."""
    assert blind_index_bits(rows) == bits
    if 4 <= rows <= 2**33:
        assert 2 <= rows / 2**bits <= rows**0.5
