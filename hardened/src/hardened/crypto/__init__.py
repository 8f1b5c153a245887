"""Field encryption: AES-256-GCM values bound to their cell, envelope keys, blind indexes.

``derive_key`` (HKDF per purpose) needs only ``cryptography``; the rest needs
SQLAlchemy too and is imported on first use.
"""

from typing import TYPE_CHECKING

from hardened._extras import lazy_exports
from hardened.crypto._kdf import derive_key

if TYPE_CHECKING:
    from hardened.crypto._batch import BatchConfig, Progress
    from hardened.crypto._cipher import ColumnCipher, TenantKeys
    from hardened.crypto._crypto import Crypto
    from hardened.crypto._datakeys import DataKeyStore, data_keys_table
    from hardened.crypto._errors import (
        CryptoError,
        DecryptionFailed,
        KeyDestroyed,
        MalformedCiphertext,
        PlaintextRefused,
        UnknownKey,
    )
    from hardened.crypto._keyring import (
        KeyProvider,
        Keyring,
        LocalKeyProvider,
        generate_keyring_entry,
    )
    from hardened.crypto._migration import MigrationStatus, PlaintextMigration
    from hardened.crypto._orm import (
        BlindIndex,
        Ciphertext,
        Encrypted,
        EncryptedField,
        blind_index_bits,
        crypto_for,
        encrypted,
        install_encryption,
        lookup,
        session_keys,
    )
    from hardened.crypto._rotation import (
        RotationReport,
        count_by_version,
        destroy_old_versions,
        reencrypt,
    )

__all__ = [
    "BatchConfig",
    "BlindIndex",
    "Ciphertext",
    "ColumnCipher",
    "Crypto",
    "CryptoError",
    "DataKeyStore",
    "DecryptionFailed",
    "Encrypted",
    "EncryptedField",
    "KeyDestroyed",
    "KeyProvider",
    "Keyring",
    "LocalKeyProvider",
    "MalformedCiphertext",
    "MigrationStatus",
    "PlaintextMigration",
    "PlaintextRefused",
    "Progress",
    "RotationReport",
    "TenantKeys",
    "UnknownKey",
    "blind_index_bits",
    "count_by_version",
    "crypto_for",
    "data_keys_table",
    "derive_key",
    "destroy_old_versions",
    "encrypted",
    "generate_keyring_entry",
    "install_encryption",
    "lookup",
    "reencrypt",
    "session_keys",
]

_EXPORTS = {
    "BatchConfig": "_batch",
    "Progress": "_batch",
    "MigrationStatus": "_migration",
    "PlaintextMigration": "_migration",
    "RotationReport": "_rotation",
    "count_by_version": "_rotation",
    "destroy_old_versions": "_rotation",
    "reencrypt": "_rotation",
    "ColumnCipher": "_cipher",
    "TenantKeys": "_cipher",
    "Crypto": "_crypto",
    "DataKeyStore": "_datakeys",
    "data_keys_table": "_datakeys",
    "CryptoError": "_errors",
    "DecryptionFailed": "_errors",
    "KeyDestroyed": "_errors",
    "MalformedCiphertext": "_errors",
    "PlaintextRefused": "_errors",
    "UnknownKey": "_errors",
    "KeyProvider": "_keyring",
    "Keyring": "_keyring",
    "LocalKeyProvider": "_keyring",
    "generate_keyring_entry": "_keyring",
    "BlindIndex": "_orm",
    "Ciphertext": "_orm",
    "Encrypted": "_orm",
    "EncryptedField": "_orm",
    "blind_index_bits": "_orm",
    "crypto_for": "_orm",
    "encrypted": "_orm",
    "install_encryption": "_orm",
    "lookup": "_orm",
    "session_keys": "_orm",
}
_load = lazy_exports(__name__, _EXPORTS)
# Only these need nothing beyond cryptography; the rest need SQLAlchemy (the crypto extra).
_CRYPTOGRAPHY_ONLY = frozenset({"_cipher", "_errors", "_keyring"})


def __getattr__(name: str) -> object:
    if _EXPORTS.get(name, "_cipher") not in _CRYPTOGRAPHY_ONLY:
        import hardened.crypto._sql  # noqa: F401, PLC0415 - names the extra when missing
    return _load(name)
