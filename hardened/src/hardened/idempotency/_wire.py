"""The stored form of a response: what a replay sends back, byte for byte.

Compact and versioned rather than JSON: a replay decodes it in one pass, with
no base64 of the body, and a record that is not one (a different version, a
truncated write) is refused instead of replayed wrongly.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["NOT_KEPT", "NOT_KEPT_SIZE", "STATUS", "decode_response", "encode_response"]

_MAGIC = b"\x01"
NOT_KEPT = b"\x02"
"""First byte of the marker stored for a response too large to keep (+ `STATUS`): it ran."""
STATUS = struct.Struct(">H")
NOT_KEPT_SIZE = len(NOT_KEPT) + STATUS.size
_HEAD = struct.Struct(">HH")  # status, header count
_PAIR = struct.Struct(">HH")  # name length, value length
_MAX_FIELD = 0xFFFF


def encode_response(status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A response as compact bytes: version, status, length-prefixed headers, then the body."""
    kept = [(n, v) for n, v in headers if len(n) <= _MAX_FIELD and len(v) <= _MAX_FIELD]
    out = [_MAGIC, _HEAD.pack(status, len(kept))]
    for name, value in kept:
        out.append(_PAIR.pack(len(name), len(value)))
        out.append(name)
        out.append(value)
    out.append(body)
    return b"".join(out)


def decode_response(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Inverse of `encode_response`; ValueError on anything else."""
    view = memoryview(data)
    if view[:1] != _MAGIC or len(view) < 1 + _HEAD.size:
        msg = "not an encoded response"
        raise ValueError(msg)
    status, count = _HEAD.unpack_from(view, 1)
    pos = 1 + _HEAD.size
    headers = []
    for _ in range(count):
        if pos + _PAIR.size > len(view):
            msg = "truncated encoded response"
            raise ValueError(msg)
        name_len, value_len = _PAIR.unpack_from(view, pos)
        pos += _PAIR.size
        end = pos + name_len + value_len
        if end > len(view):
            msg = "truncated encoded response"
            raise ValueError(msg)
        headers.append((bytes(view[pos : pos + name_len]), bytes(view[pos + name_len : end])))
        pos = end
    return status, headers, bytes(view[pos:])
