"""Values to bytes and back: JSON through pydantic-core, never pickle.

A namespace with a type (``type_=list[Plan]``) round-trips through a pydantic
`TypeAdapter`, so models, UUIDs, datetimes and decimals come back as they
went in; without one, plain JSON data does. ``bytes`` values are stored as
they are (a rendered response body). Payloads above ``compress_above`` bytes
are zlib-compressed (level 1: most of the gain for a fraction of the CPU).
The first byte says which: ``j`` JSON, ``b`` raw bytes, ``z``/``y`` their
compressed forms, so the threshold can change without flushing the cache.

Why pydantic-core rather than orjson or msgpack: it is already a dependency,
its JSON is Rust like orjson's, and it is what gives typed round trips for
pydantic models; a second serialiser would add a dependency for no gain.
"""

from __future__ import annotations

import zlib
from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import TypeAdapter

__all__ = ["Codec", "CodecError"]

T = TypeVar("T")

_JSON, _RAW, _ZJSON, _ZRAW = b"j"[0], b"b"[0], b"z"[0], b"y"[0]


class CodecError(ValueError):
    """A stored payload that cannot be read back (a changed type, a corrupt entry)."""


class Codec(Generic[T]):
    """Encode and decode one namespace's values."""

    __slots__ = ("_adapter", "_compress_above", "_raw")

    def __init__(self, type_: Any = None, *, compress_above: int | None = 4096) -> None:
        self._raw = type_ is bytes
        self._adapter: TypeAdapter[Any] | None = (
            None if type_ is None or self._raw else TypeAdapter(type_)
        )
        self._compress_above = compress_above

    def dumps(self, value: T) -> bytes:
        if self._raw:
            if not isinstance(value, bytes):
                raise TypeError(f"a bytes namespace stores bytes, got {type(value).__name__}")
            body: bytes = value
            plain, packed = b"b", b"y"
        else:
            adapter = self._adapter
            body = adapter.dump_json(value) if adapter else pydantic_core.to_json(value)
            plain, packed = b"j", b"z"
        limit = self._compress_above
        if limit is not None and len(body) > limit:
            return packed + zlib.compress(body, 1)
        return plain + body

    def loads(self, data: bytes) -> T:
        kind = data[0] if data else -1
        body = data[1:]
        try:
            if kind in (_ZJSON, _ZRAW):
                body = zlib.decompress(body)
            if kind in (_RAW, _ZRAW):
                if not self._raw:
                    raise CodecError("raw bytes stored in a typed namespace")
                return body  # type: ignore[return-value]
            if kind not in (_JSON, _ZJSON):
                raise CodecError(f"unknown payload kind {kind!r}")
            adapter = self._adapter
            value: T = adapter.validate_json(body) if adapter else pydantic_core.from_json(body)
        except (zlib.error, ValueError) as exc:
            if isinstance(exc, CodecError):
                raise
            raise CodecError(str(exc)) from exc
        return value
