import pytest

from hardened.crypto import derive_key


def test_keys_differ_per_purpose_and_are_stable() -> None:
    """One secret gives a stable, distinct key per purpose."""
    secret = "s" * 48
    assert derive_key(secret, "refresh") == derive_key(secret.encode(), "refresh")
    assert derive_key(secret, "refresh") != derive_key(secret, "csrf")
    assert derive_key(secret, "refresh") != derive_key("t" * 48, "refresh")
    assert len(derive_key(secret, "x", length=64)) == 64


def test_a_purpose_is_required() -> None:
    """An empty purpose is refused rather than silently sharing keys."""
    with pytest.raises(ValueError, match="purpose"):
        derive_key("s" * 48, "")
