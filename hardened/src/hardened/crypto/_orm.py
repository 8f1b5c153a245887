"""Encrypted model attributes for SQLAlchemy: a column type plus ORM events.

A bind processor alone cannot bind a value to its cell (it sees no row), so
the work happens in events with the whole object in hand:

* setting ``obj.national_id = "..."`` keeps the plaintext on the instance and
  marks the ciphertext column pending;
* ``before_flush`` gives a new row its UUID (row ids are known before insert),
  loads the tenant's data keys once per transaction, and seals every encrypted
  field of the row under the current data-key version, with the row's
  ``key_version`` and blind indexes;
* ``load`` / ``refresh`` decrypt at once, so a detached object still reads,
  and a value that does not decrypt fails the query with a typed error rather
  than surfacing later as something else.

The ciphertext column's type refuses anything but sealed bytes, so a
plaintext that bypassed the events (a session without `install_encryption`)
fails the statement instead of reaching the table.
"""

from __future__ import annotations

import hmac
import math
import uuid
import weakref
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from sqlalchemy import (
    BigInteger,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    Text,
    TypeDecorator,
    event,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, mapped_column, sessionmaker

from hardened.crypto._errors import CryptoError, PlaintextRefused, refuse
from hardened.db.tenancy import session_tenant
from hardened.errors import TenantContextMissing

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Column
    from sqlalchemy.orm import QueryContext, UOWTransaction

    from hardened.crypto._cipher import ColumnCipher, TenantKeys
    from hardened.crypto._crypto import Crypto

__all__ = [
    "BlindIndex",
    "Ciphertext",
    "Encrypted",
    "EncryptedField",
    "blind_index_bits",
    "crypto_for",
    "encrypted",
    "forget_keys",
    "install_encryption",
    "lookup",
    "session_keys",
]

_T = TypeVar("_T", bound="str | None")
_PLAIN = "_hardened_crypto_plain"
_DIRTY = "_hardened_crypto_dirty"
_KEYS = "hardened.crypto.keys"
_installed: weakref.WeakKeyDictionary[type[Session], Crypto] = weakref.WeakKeyDictionary()


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<pending encryption>"


_PENDING = _Pending()


class Ciphertext(TypeDecorator[bytes]):
    """Sealed bytes only: a plaintext (or an unsealed pending value) fails the statement."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        raise refuse(PlaintextRefused, "an unsealed value reached an encrypted column")

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else bytes(value)


def blind_index_bits(expected_rows: int) -> int:
    """Index width for ``expected_rows`` by CipherSweet's rule, within [1, 32].

    With ``L`` bits and ``N`` rows a lookup meets about ``N / 2**L`` rows of
    other values; the rule keeps that between 2 (so an index value never
    singles out one row, which would make the column a deterministic
    encryption) and ``sqrt(N)`` (so lookups stay cheap). The widest such ``L``
    is ``floor(log2(N / 2))``.
    """
    if expected_rows < 1:
        raise ValueError("expected_rows must be at least 1")
    return max(1, min(32, math.floor(math.log2(max(expected_rows, 2) / 2)) or 1))


def _identity(value: str) -> str:
    return value


@dataclass(frozen=True, slots=True)
class BlindIndex:
    """An equality index over an encrypted field: keyed HMAC of the normalised value, truncated.

    ``normalise`` maps equal values to one form (strip spaces, case-fold) before
    hashing; ``bits`` defaults to `blind_index_bits` of ``expected_rows``.
    """

    expected_rows: int
    normalise: Callable[[str], str] = _identity
    bits: int = 0

    def __post_init__(self) -> None:
        if self.bits == 0:
            object.__setattr__(self, "bits", blind_index_bits(self.expected_rows))
        if not 1 <= self.bits <= 32:
            raise ValueError("bits must be in [1, 32]")


class EncryptedField(Generic[_T]):
    """A plaintext attribute whose column holds only its ciphertext (see `encrypted`)."""

    __slots__ = ("blind_index", "name", "nullable", "owner", "plaintext_column")

    def __init__(
        self, *, nullable: bool, blind_index: BlindIndex | None, plaintext_column: str | None
    ) -> None:
        self.nullable = nullable
        self.blind_index = blind_index
        self.plaintext_column = plaintext_column
        self.name = ""
        self.owner: type[Any] | None = None

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name
        self.owner = owner

    @property
    def ciphertext_attr(self) -> str:
        return f"_{self.name}_ct"

    @property
    def index_attr(self) -> str:
        return f"_{self.name}_bidx"

    @property
    def plaintext_attr(self) -> str:
        return f"_{self.name}_plaintext"

    def sealed(
        self, cipher: ColumnCipher, value: str | None, row_id: uuid.UUID, version: int
    ) -> dict[str, Any]:
        """The field's column values for ``value`` under ``version``: ciphertext, index entry.

        Keyed by column name (the ORM attribute is the name with a leading underscore);
        the one place the ORM, re-encryption and migration seal a value.
        """
        columns: dict[str, Any] = {
            f"{self.name}_ct": None
            if value is None
            else cipher.encrypt(value.encode(), row_id, version=version)
        }
        if self.blind_index is not None:
            index = self.blind_index
            columns[f"{self.name}_bidx"] = (
                None
                if value is None
                else cipher.blind_index(
                    index.normalise(value).encode(), index.bits, version=version
                )
            )
        return columns

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> EncryptedField[_T]: ...
    @overload
    def __get__(self, instance: object, owner: type[Any]) -> _T: ...
    def __get__(self, instance: object | None, owner: type[Any]) -> EncryptedField[_T] | _T:
        if instance is None:
            return self
        plain = instance.__dict__.get(_PLAIN)
        if plain is None or self.name not in plain:
            # Expired or never loaded: reading the column loads it like any attribute,
            # and the refresh event decrypts it.
            getattr(instance, self.ciphertext_attr)
            plain = instance.__dict__.get(_PLAIN) or {}
        return plain.get(self.name)  # type: ignore[return-value]

    def __set__(self, instance: object, value: _T) -> None:
        if value is None and not self.nullable:
            raise ValueError(f"{self.name} is not nullable")
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{self.name} takes a str")
        instance.__dict__.setdefault(_PLAIN, {})[self.name] = value
        instance.__dict__.setdefault(_DIRTY, set()).add(self.name)
        setattr(instance, self.ciphertext_attr, _PENDING)


def encrypted(
    *,
    nullable: bool = False,
    blind_index: BlindIndex | None = None,
    plaintext_column: str | None = None,
) -> Any:
    """Declare an encrypted attribute on an `Encrypted` model.

    ``national_id: EncryptedField[str] = encrypted(blind_index=BlindIndex(10**6))``
    adds the column ``national_id_ct`` (and ``national_id_bidx`` with an index
    leading with the tenant); the attribute reads and writes plaintext.

    ``plaintext_column`` names the legacy plaintext column while a plaintext
    column is migrated (`hardened.crypto.migration`): writes go to both
    columns (dual write) and a row not yet backfilled reads from the
    plaintext. Remove it to switch reads to the ciphertext only.
    """
    return EncryptedField[Any](
        nullable=nullable or plaintext_column is not None,
        blind_index=blind_index,
        plaintext_column=plaintext_column,
    )


class Encrypted:
    """Mixin for models with `encrypted` fields (put it before the declarative base).

    The model needs a single UUID primary key (filled before insert when
    unset), the tenant in ``tenant_id`` (`hardened.db.tenancy.TenantScoped`)
    and gets ``key_version``: the data-key version its values are sealed under.
    """

    __encrypted_fields__: ClassVar[tuple[EncryptedField[Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        fields = tuple(v for v in vars(cls).values() if isinstance(v, EncryptedField))
        if fields:
            cls.__encrypted_fields__ = (*cls.__encrypted_fields__, *fields)
            for f in fields:
                setattr(
                    cls,
                    f.ciphertext_attr,
                    mapped_column(f"{f.name}_ct", Ciphertext(), nullable=f.nullable),
                )
                if f.blind_index is not None:
                    setattr(
                        cls,
                        f.index_attr,
                        mapped_column(f"{f.name}_bidx", BigInteger(), nullable=True),
                    )
                if f.plaintext_column is not None:
                    setattr(
                        cls,
                        f.plaintext_attr,
                        mapped_column(f.plaintext_column, Text(), nullable=True),
                    )
            if "key_version" not in vars(cls):
                cls.key_version = mapped_column(Integer(), nullable=True)  # type: ignore[attr-defined]
        super().__init_subclass__(**kwargs)
        table = getattr(cls, "__table__", None)
        if fields and table is not None:
            for f in fields:
                if f.blind_index is not None:
                    Index(
                        f"ix_{table.name}_{f.name}_bidx",
                        table.c.tenant_id,
                        table.c[f"{f.name}_bidx"],
                    )


def crypto_for(session: Session | AsyncSession) -> Crypto:
    """The `Crypto` installed on ``session``'s class; TypeError when none is."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    for klass in type(sync).__mro__:
        crypto = _installed.get(klass)
        if crypto is not None:
            return crypto
    raise TypeError(f"{type(sync).__name__} has no encryption installed: call install_encryption()")


def _keys(session: Session, tenant: uuid.UUID, *, create: bool) -> TenantKeys:
    cache: dict[uuid.UUID, TenantKeys] = session.info.setdefault(_KEYS, {})
    keys = cache.get(tenant)
    if keys is None or (create and keys.current is None):
        crypto = crypto_for(session)
        conn = session.connection()
        keys = crypto.store.ensure(conn, tenant) if create else crypto.store.load(conn, tenant)
        cache[tenant] = keys
    return keys


def session_keys(session: Session, tenant: uuid.UUID, *, create: bool = False) -> TenantKeys:
    """``tenant``'s keys for this transaction (loaded once; created on first write)."""
    return _keys(session, tenant, create=create)


def forget_keys(session: Session, tenant: uuid.UUID | None = None) -> None:
    """Drop cached keys (after a rotation or shred inside the same transaction)."""
    cache = session.info.get(_KEYS)
    if cache:
        if tenant is None:
            cache.clear()
        else:
            cache.pop(tenant, None)


def _row_id(obj: Any) -> uuid.UUID:
    mapper = obj.__mapper__
    (pk,) = mapper.primary_key
    attr = mapper.get_property_by_column(pk).key
    value = obj.__dict__.get(attr)
    if value is None:
        value = uuid.uuid4()
        setattr(obj, attr, value)
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"{type(obj).__name__}: an encrypted model needs a UUID primary key")
    return value


def _cipher(obj: Any, keys: TenantKeys, f: EncryptedField[Any]) -> ColumnCipher:
    return keys.column(obj.__tablename__, f.name)


def _seal(session: Session, obj: Any) -> None:
    tenant = obj.__dict__.get("tenant_id") or session_tenant(session)
    if tenant is None:
        raise TenantContextMissing(context={"reason": "encrypting without a tenant"})
    obj.tenant_id = tenant
    row_id = _row_id(obj)
    keys = _keys(session, tenant, create=True)
    version = keys.current
    plain = obj.__dict__.setdefault(_PLAIN, {})
    for f in type(obj).__encrypted_fields__:
        cipher = _cipher(obj, keys, f)
        if f.name not in plain:
            stored = obj.__dict__.get(f.ciphertext_attr)
            if stored is None or (
                isinstance(stored, bytes) and cipher.version_of(stored) == version
            ):
                continue
            raise refuse(CryptoError, "write every encrypted field of a row together", field=f.name)
        value = plain[f.name]
        if f.plaintext_column is not None:
            setattr(obj, f.plaintext_attr, value)  # dual write while migrating
        for column, sealed in f.sealed(cipher, value, row_id, version).items():
            setattr(obj, f"_{column}", sealed)
    obj.key_version = version
    obj.__dict__.pop(_DIRTY, None)


def _before_flush(session: Session, context: UOWTransaction, instances: object) -> None:
    for obj in chain(session.new, session.dirty):
        if obj.__dict__.get(_DIRTY):
            _seal(session, obj)


def _after_transaction_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_KEYS, None)


def _open(session: Session, obj: Any, attrs: Any = None) -> None:
    state = obj.__dict__
    plain = state.setdefault(_PLAIN, {})
    keys: TenantKeys | None = None
    for f in type(obj).__encrypted_fields__:
        if attrs is not None and f.ciphertext_attr not in attrs:
            continue
        if f.ciphertext_attr not in state:
            continue
        value = state[f.ciphertext_attr]
        if value is None or value is _PENDING:
            if value is None:
                # Not backfilled yet (while migrating): the legacy plaintext is the value.
                plain[f.name] = state.get(f.plaintext_attr) if f.plaintext_column else None
            continue
        if keys is None:
            keys = _keys(session, state["tenant_id"], create=False)
        plain[f.name] = _cipher(obj, keys, f).decrypt(value, _row_id(obj)).decode()


def _on_load(target: Any, context: QueryContext) -> None:
    _open(context.session, target)


def _on_refresh(target: Any, context: QueryContext, attrs: Any) -> None:
    _open(context.session, target, attrs)


def _on_expire(target: Any, attrs: Any) -> None:
    plain = target.__dict__.get(_PLAIN)
    if not plain:
        return
    dirty = target.__dict__.get(_DIRTY) or set()
    for f in type(target).__encrypted_fields__:
        if (attrs is None or f.ciphertext_attr in attrs) and f.name not in dirty:
            plain.pop(f.name, None)


event.listen(Encrypted, "load", _on_load, propagate=True)
event.listen(Encrypted, "refresh", _on_refresh, propagate=True)
event.listen(Encrypted, "expire", _on_expire, propagate=True)


def install_encryption(
    target: type[Session] | sessionmaker[Any] | async_sessionmaker[Any], crypto: Crypto
) -> None:
    """Encrypt and decrypt `Encrypted` models in sessions of ``target`` (a Session subclass)."""
    if isinstance(target, async_sessionmaker):
        klass = target.kw.get("sync_session_class") or Session
    elif isinstance(target, sessionmaker):
        klass = target.class_
    else:
        klass = target
    if klass is Session:
        raise TypeError("install on a Session subclass (e.g. TenantSession), not Session itself")
    if klass in _installed:
        _installed[klass] = crypto
        return
    _installed[klass] = crypto
    event.listen(klass, "before_flush", _before_flush)
    event.listen(klass, "after_transaction_end", _after_transaction_end)


async def lookup(session: AsyncSession, field: EncryptedField[Any], value: str) -> list[Any]:
    """Rows of the session's tenant whose ``field`` equals ``value``, by its blind index.

    The index narrows to a few candidates (the leakage budget guarantees some);
    each is decrypted and compared, so no false match is returned. During a
    data-key rotation the entries under every live version are searched.
    """
    index = field.blind_index
    model = field.owner
    if index is None or model is None:
        raise TypeError(f"{field.name} has no blind index")
    tenant = session_tenant(session)
    if tenant is None:
        raise TenantContextMissing(context={"reason": "blind-index lookup without a tenant"})
    normalised = index.normalise(value)
    cached = session.sync_session.info.get(_KEYS, {}).get(tenant)
    keys = cached or await session.run_sync(lambda s: _keys(s, tenant, create=False))
    if keys.current is None:
        return []
    column: Column[Any] = model.__table__.c[f"{field.name}_bidx"]
    entries = keys.column(model.__tablename__, field.name).blind_indexes(
        normalised.encode(), index.bits
    )
    matching = column == entries[0] if len(entries) == 1 else column.in_(entries)
    rows = (
        await session.execute(select(model).where(model.tenant_id == tenant, matching))
    ).scalars()
    wanted = normalised.encode()
    return [
        row
        for row in rows
        if hmac.compare_digest(index.normalise(getattr(row, field.name)).encode(), wanted)
    ]
