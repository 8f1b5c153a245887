"""The cache's scripts (``lua/cache_*.lua``) and their Python twins.

Entries are hashes ``{v: payload, ver: versions, fresh: server ms, load: ms}``
kept for fresh + grace; ``ver`` is the comma-joined values of the scope's
generation counter and the entry's tag counters when its load began. See the
Lua files for the reply shapes; each twin returns the same.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hardened.stores import Script

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.stores import MemoryState

__all__ = ["BUMP", "READ", "RELEASE", "WRITE"]

_FIELDS = (b"v", b"ver", b"fresh", b"load")


def _versions(state: MemoryState, keys: Sequence[str], stamp: bytes | None) -> bytes | None:
    """Current counter values joined by commas; missing ones created at ``stamp`` (or None)."""
    found: list[bytes] = []
    for key in keys:
        value = state.get(key)
        if value is None:
            if stamp is None:
                return None
            state.set(key, stamp)
            value = stamp
        found.append(value)
    return b",".join(found)


def _read(
    state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float
) -> list[int | bytes | None]:
    now_ms = math.floor(now * 1000)
    current = _versions(state, keys[2:], b"%d" % now_ms)
    payload, ver, fresh, load = state.hmget(keys[0], *_FIELDS)
    status, value, left, took = 0, None, 0, 0
    if payload is not None and ver == current:
        left = int(fresh or b"0") - now_ms
        took = int(load or b"0")
        value = payload
        if left > 0:
            if args[0] != b"2":
                return [1, value, left, took]
            status = 1
        else:
            status = 2
    held = 0
    if args[0] != b"0":
        lease = keys[1]
        if state.set(lease, args[1], px=int(args[2]), nx=True) or state.get(lease) == args[1]:
            held = 1
    return [status, value, left, took, current, held]


def _write(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    expected, payload, fresh_ms, keep_ms, load_ms, owner = args
    if owner and state.get(keys[1]) == owner:
        state.delete(keys[1])
    if _versions(state, keys[2:], None) != expected:
        return 0
    fresh = math.floor(now * 1000) + int(fresh_ms)
    state.hset(
        keys[0], dict(zip(_FIELDS, (payload, expected, b"%d" % fresh, load_ms), strict=True))
    )
    state.pexpire(keys[0], int(keep_ms))
    return 1


def _release(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    if state.get(keys[0]) != args[0]:
        return 0
    keep = int(args[1])
    if keep > 0:
        state.set(keys[0], b"failed", px=keep)
    else:
        state.delete(keys[0])
    return 1


def _bump(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    value = state.incrby(keys[0], 1)
    if value == 1:
        value = math.floor(now * 1000)
        state.set(keys[0], b"%d" % value)
    return value


READ = Script.load("cache_read", _read, package=__package__)
WRITE = Script.load("cache_write", _write, package=__package__)
RELEASE = Script.load("cache_release", _release, package=__package__)
BUMP = Script.load("cache_bump", _bump, package=__package__)
