"""The in-process keyspace behind `MemoryStore`, with Redis command semantics.

`MemoryState` is what a script's Python twin works on: its methods are named
after the Redis commands a Lua script calls (``GET``, ``SET … PX … NX``,
``INCRBY``, ``HSET``, ``SADD``, ``LPUSH``, ``ZADD``, ``PEXPIRE``…) and behave
like them, down to the details twins rely on: ``SET`` without a TTL clears the
old one, ``HSET`` and ``INCRBY`` keep it, an emptied hash, set, list or sorted
set disappears, a value of the wrong type or a non-integer under ``INCRBY``
fails, ranges take Redis's inclusive, negative-from-the-end indices. So a twin
reads line by line like its Lua file.

Expiry is lazy (a read of an expired key deletes it) plus a bounded sweep: a
min-heap of deadlines from which `sweep` pops at most ``sweep_batch`` (or a
given limit) expired entries; `MemoryStore` runs it as writes go, so keys
nobody reads again do not accumulate. Stale heap
entries (a key re-set with a new deadline) are skipped when popped, and the
heap is rebuilt when it outgrows the live deadlines, so it stays bounded too.

Deadlines are on the injected clock (monotonic by default). Nothing here
awaits, so an operation runs atomically on one event loop; the state is not
thread-safe and is not shared between processes.
"""

from __future__ import annotations

import re
from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["MemoryDataError", "MemoryState"]

_Members = set[bytes]  # aliased: inside MemoryState, ``set`` is the SET command
_List = list[bytes]


class _Sorted:
    """A sorted set: member -> score (ordered on read by score, then member bytes)."""

    __slots__ = ("scores",)

    def __init__(self) -> None:
        self.scores: dict[bytes, float] = {}

    def ranked(self) -> list[tuple[bytes, float]]:
        return sorted(self.scores.items(), key=lambda item: (item[1], item[0]))


_Value = bytes | dict[bytes, bytes] | _Members | _List | _Sorted

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_HEAP_SLACK = 1024


class MemoryDataError(Exception):
    """The memory twin of a Redis command error (``WRONGTYPE``, not an integer).

    `MemoryStore` maps it to `StoreUnavailable` at its boundary, as
    `RedisStore` maps a Redis ``ResponseError``.
    """


def _parse_int(raw: bytes) -> int:
    """Parse like Redis ``string2ll``: no sign but ``-``, no spaces, no leading zeros."""
    if _INTEGER.fullmatch(raw) is None:
        raise MemoryDataError("ERR value is not an integer or out of range")
    value = int(raw)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise MemoryDataError("ERR value is not an integer or out of range")
    return value


def _span(length: int, start: int, stop: int) -> slice:
    """Redis ``start``/``stop`` (inclusive, negative from the end) as a Python slice."""
    first = max(start + length if start < 0 else start, 0)
    last = min(stop + length if stop < 0 else stop, length - 1)
    return slice(first, max(first, last + 1))


def _wrong_type() -> MemoryDataError:
    return MemoryDataError("WRONGTYPE Operation against a key holding the wrong kind of value")


class MemoryState:
    """A keyspace of strings, hashes, sets, lists and sorted sets with millisecond TTLs."""

    __slots__ = ("_clock", "_data", "_expires", "_heap", "sweep_batch")

    def __init__(self, clock: Callable[[], float], *, sweep_batch: int = 64) -> None:
        self._clock = clock
        self._data: dict[str, _Value] = {}
        self._expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self.sweep_batch = sweep_batch

    def __len__(self) -> int:
        """Keys held, including expired ones the sweep has not reached yet."""
        return len(self._data)

    # -- expiry ------------------------------------------------------------

    def _lookup(self, key: str) -> _Value | None:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self._clock():
            self._remove(key)
            return None
        return self._data.get(key)

    def _remove(self, key: str) -> bool:
        self._expires.pop(key, None)
        return self._data.pop(key, None) is not None

    def _expire_at(self, key: str, deadline: float) -> None:
        self._expires[key] = deadline
        heappush(self._heap, (deadline, key))
        if len(self._heap) > 2 * len(self._expires) + _HEAP_SLACK:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(d, k) for k, d in self._expires.items()]
        heapify(self._heap)

    def sweep(self, limit: int | None = None) -> int:
        """Delete up to ``limit`` (default ``sweep_batch``) expired keys; return how many."""
        budget = self.sweep_batch if limit is None else limit
        now = self._clock()
        heap, expires, data, removed = self._heap, self._expires, self._data, 0
        while budget > 0 and heap and heap[0][0] <= now:
            deadline, key = heappop(heap)
            budget -= 1
            if expires.get(key) == deadline:  # not a stale entry: _remove(), inlined
                del expires[key]
                data.pop(key, None)
                removed += 1
        return removed

    # -- keys --------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return self._lookup(key) is not None

    def delete(self, *keys: str) -> int:
        return sum(self._lookup(key) is not None and self._remove(key) for key in keys)

    def pexpire(self, key: str, ms: int) -> bool:
        """Set a TTL in milliseconds on an existing key (``ms <= 0`` deletes it)."""
        if self._lookup(key) is None:
            return False
        if ms <= 0:
            return self._remove(key)
        self._expire_at(key, self._clock() + ms / 1000)
        return True

    def pttl(self, key: str) -> int:
        """Milliseconds left; ``-2`` when the key is absent, ``-1`` when it has no TTL."""
        remaining = self.remaining(key)
        if remaining is None:
            return -2 if key not in self._data else -1
        return round(remaining * 1000)

    def remaining(self, key: str) -> float | None:
        """Seconds left before expiry in whole milliseconds (as ``PTTL``), or None."""
        if self._lookup(key) is None:
            return None
        deadline = self._expires.get(key)
        if deadline is None:
            return None
        return max(0, round((deadline - self._clock()) * 1000)) / 1000

    # -- strings -----------------------------------------------------------

    def _string(self, key: str) -> bytes | None:
        value = self._lookup(key)
        if value is None or isinstance(value, bytes):
            return value
        raise _wrong_type()

    def get(self, key: str) -> bytes | None:
        # _string() and _lookup() inlined: GET is on every rate-limit decision.
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self._clock():
            self._remove(key)
            return None
        value = self._data.get(key)
        if value is None or isinstance(value, bytes):
            return value
        raise _wrong_type()

    def set(self, key: str, value: bytes, *, px: int | None = None, nx: bool = False) -> bool:
        """``SET key value [PX ms] [NX]``: without ``px`` any previous TTL is cleared."""
        if nx and self._lookup(key) is not None:
            return False
        self._data[key] = value
        if px is None:
            self._expires.pop(key, None)
            return True
        # _expire_at(), inlined: SET PX is on every admitted rate-limit decision.
        deadline = self._expires[key] = self._clock() + px / 1000
        heap = self._heap
        heappush(heap, (deadline, key))
        if len(heap) > 2 * len(self._expires) + _HEAP_SLACK:
            self._rebuild_heap()
        return True

    def incrby(self, key: str, amount: int) -> int:
        """``INCRBY``: a missing key counts from 0; the TTL, if any, is kept."""
        current = self._string(key)
        value = (0 if current is None else _parse_int(current)) + amount
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise MemoryDataError("ERR increment or decrement would overflow")
        self._data[key] = b"%d" % value
        return value

    # -- hashes ------------------------------------------------------------

    def _hash(self, key: str) -> dict[bytes, bytes] | None:
        value = self._lookup(key)
        if value is None or isinstance(value, dict):
            return value
        raise _wrong_type()

    def _hash_for_write(self, key: str) -> dict[bytes, bytes]:
        fields = self._hash(key)
        if fields is None:
            fields = self._data[key] = {}
        return fields

    def hget(self, key: str, field: bytes) -> bytes | None:
        fields = self._hash(key)
        return None if fields is None else fields.get(field)

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self._hash(key) or {})

    def hmget(self, key: str, *names: bytes) -> list[bytes | None]:
        fields = self._hash(key) or {}
        return [fields.get(name) for name in names]

    def hset(self, key: str, mapping: Mapping[bytes, bytes]) -> int:
        """``HSET key f v …``; returns the number of new fields."""
        if not mapping:
            return 0
        fields = self._hash_for_write(key)
        added = sum(name not in fields for name in mapping)
        fields.update(mapping)
        return added

    def hincrby(self, key: str, field: bytes, amount: int) -> int:
        fields = self._hash_for_write(key)
        current = fields.get(field)
        value = (0 if current is None else _parse_int(current)) + amount
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise MemoryDataError("ERR increment or decrement would overflow")
        fields[field] = b"%d" % value
        return value

    def hdel(self, key: str, *names: bytes) -> int:
        fields = self._hash(key)
        if fields is None:
            return 0
        removed = sum(fields.pop(name, None) is not None for name in names)
        if not fields:
            self._remove(key)
        return removed

    # -- sets --------------------------------------------------------------

    def _set(self, key: str) -> _Members | None:
        value = self._lookup(key)
        if value is None or isinstance(value, set):
            return value
        raise _wrong_type()

    def sadd(self, key: str, *members: bytes) -> int:
        if not members:
            return 0
        current = self._set(key)
        if current is None:
            current = self._data[key] = _Members()
        before = len(current)
        current.update(members)
        return len(current) - before

    def srem(self, key: str, *members: bytes) -> int:
        current = self._set(key)
        if current is None:
            return 0
        before = len(current)
        current.difference_update(members)
        if not current:
            self._remove(key)
        return before - len(current)

    def smembers(self, key: str) -> _Members:
        return _Members(self._set(key) or ())

    def sismember(self, key: str, member: bytes) -> bool:
        current = self._set(key)
        return current is not None and member in current

    # -- lists -------------------------------------------------------------

    def _list(self, key: str) -> _List | None:
        value = self._lookup(key)
        if value is None or isinstance(value, list):
            return value
        raise _wrong_type()

    def lpush(self, key: str, *values: bytes) -> int:
        """``LPUSH key v1 v2 …``: each value goes to the head in turn (v2 before v1)."""
        current = self._list(key)
        if not values:
            return 0 if current is None else len(current)
        if current is None:
            current = self._data[key] = _List()
        current[:0] = reversed(values)
        return len(current)

    def ltrim(self, key: str, start: int, stop: int) -> None:
        """Keep only the elements from ``start`` to ``stop`` (inclusive)."""
        current = self._list(key)
        if current is None:
            return
        current[:] = current[_span(len(current), start, stop)]
        if not current:
            self._remove(key)

    def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        current = self._list(key) or _List()
        return current[_span(len(current), start, stop)]

    def llen(self, key: str) -> int:
        return len(self._list(key) or ())

    def lpos(self, key: str, value: bytes) -> int | None:
        """Index of the first element equal to ``value``, or None (``LPOS`` without options)."""
        current = self._list(key) or _List()
        return current.index(value) if value in current else None

    # -- sorted sets -------------------------------------------------------

    def _sorted(self, key: str) -> _Sorted | None:
        value = self._lookup(key)
        if value is None or isinstance(value, _Sorted):
            return value
        raise _wrong_type()

    def zadd(self, key: str, mapping: Mapping[bytes, float]) -> int:
        """``ZADD key score member …``; returns the number of new members."""
        if not mapping:
            return 0
        current = self._sorted(key)
        if current is None:
            current = self._data[key] = _Sorted()
        added = sum(member not in current.scores for member in mapping)
        current.scores.update({member: float(score) for member, score in mapping.items()})
        return added

    def zrem(self, key: str, *members: bytes) -> int:
        current = self._sorted(key)
        if current is None:
            return 0
        removed = sum(current.scores.pop(member, None) is not None for member in members)
        if not current.scores:
            self._remove(key)
        return removed

    def zcard(self, key: str) -> int:
        current = self._sorted(key)
        return 0 if current is None else len(current.scores)

    def zscore(self, key: str, member: bytes) -> float | None:
        current = self._sorted(key)
        return None if current is None else current.scores.get(member)

    def zrange(self, key: str, start: int, stop: int) -> list[tuple[bytes, float]]:
        """``ZRANGE key start stop WITHSCORES`` by rank, lowest score first."""
        current = self._sorted(key)
        if current is None:
            return []
        ranked = current.ranked()
        return ranked[_span(len(ranked), start, stop)]

    def zpopmin(self, key: str, count: int = 1) -> list[tuple[bytes, float]]:
        """Remove and return up to ``count`` lowest-ranked members with their scores."""
        popped = self.zrange(key, 0, count - 1) if count > 0 else []
        if popped:
            self.zrem(key, *(member for member, _ in popped))
        return popped
