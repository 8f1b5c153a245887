"""The stores' own scripts (counter with TTL on create, leases) and their twins.

Leases are built on `AtomicScripts` alone, so any backend that can run
scripts gets them, with one round trip per call. A lease on key ``K`` is a
hash ``K`` = ``{owner, token}`` expiring after the lease TTL, and a fence key
``K:fence`` holding the last token issued; both share ``K``'s hash tag, which
is why ``K`` must have one (build it with `tagged`).

Fencing tokens are ``max(last + 1, server time in ms)``. The fence outlives
the lease (``FENCE_RETENTION``, at least the lease TTL) and then expires, so a
lease per request or per idempotency key leaves no permanent key behind; the
time floor keeps tokens issued after the fence expired above every earlier
one (assuming the server clock does not step back by more than the
retention). Tokens are therefore large integers (about 1.7e12), not 1, 2, 3:
only their order means anything.

Re-acquiring a lease one already holds succeeds with a fresh, greater token
(and a fresh TTL): the earlier token is fenced off, so two code paths sharing
an owner id can never both write.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hardened.stores._contracts import Script, hash_tag, ttl_ms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.stores._contracts import AtomicScripts
    from hardened.stores._state import MemoryState

__all__ = [
    "COUNTER_INCR",
    "FENCE_RETENTION",
    "LEASE_ACQUIRE",
    "LEASE_RELEASE",
    "LEASE_RENEW",
    "ScriptLeases",
    "lease_keys",
]

#: Seconds a fence key lives after its last acquire/renew (at least the lease TTL).
FENCE_RETENTION = 3600.0


def _counter_incr(
    state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float
) -> int:
    created = not state.exists(keys[0])
    value = state.incrby(keys[0], int(args[0]))
    if created:
        state.pexpire(keys[0], int(args[1]))
    return value


def _lease_acquire(
    state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float
) -> int | None:
    lease, fence = keys
    owner, lease_ms, fence_ms = args[0], int(args[1]), int(args[2])
    holder = state.hget(lease, b"owner")
    if holder is not None and holder != owner:
        return None
    last = state.get(fence)
    token = max((0 if last is None else int(last)) + 1, math.floor(now * 1000))
    state.set(fence, b"%d" % token, px=fence_ms)
    state.hset(lease, {b"owner": owner, b"token": b"%d" % token})
    state.pexpire(lease, lease_ms)
    return token


def _holds(state: MemoryState, lease: str, owner: bytes, token: bytes) -> bool:
    return state.hget(lease, b"owner") == owner and state.hget(lease, b"token") == token


def _lease_renew(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    lease, fence = keys
    if not _holds(state, lease, args[0], args[1]):
        return 0
    state.pexpire(lease, int(args[2]))
    if not state.pexpire(fence, int(args[3])):
        state.set(fence, args[1], px=int(args[3]))
    return 1


def _lease_release(
    state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float
) -> int:
    if not _holds(state, keys[0], args[0], args[1]):
        return 0
    state.delete(keys[0])
    return 1


COUNTER_INCR = Script.load("counter_incr", _counter_incr)
LEASE_ACQUIRE = Script.load("lease_acquire", _lease_acquire)
LEASE_RENEW = Script.load("lease_renew", _lease_renew)
LEASE_RELEASE = Script.load("lease_release", _lease_release)


def lease_keys(key: str) -> tuple[str, str]:
    """The lease hash and fence keys for ``key``, which must carry a hash tag."""
    if hash_tag(key) is None:
        raise ValueError("a lease key needs a hash tag; build it with hardened.stores.tagged()")
    return key, f"{key}:fence"


def _owner(owner: str) -> str:
    if not owner:
        raise ValueError("owner must be a non-empty string")
    return owner


def _fence_ms(lease_ms: int) -> int:
    return max(lease_ms, ttl_ms(FENCE_RETENTION))


class ScriptLeases:
    """`Leases` for any store that implements `AtomicScripts` (both backends mix it in)."""

    async def acquire(self: AtomicScripts, key: str, owner: str, ttl: float) -> int | None:
        lease_ms = ttl_ms(ttl)
        token = await self.run(
            LEASE_ACQUIRE, lease_keys(key), (_owner(owner), lease_ms, _fence_ms(lease_ms))
        )
        return None if token is None else int(token)

    async def renew(self: AtomicScripts, key: str, owner: str, token: int, ttl: float) -> bool:
        lease_ms = ttl_ms(ttl)
        args = (_owner(owner), token, lease_ms, _fence_ms(lease_ms))
        return bool(await self.run(LEASE_RENEW, lease_keys(key), args))

    async def release(self: AtomicScripts, key: str, owner: str, token: int) -> bool:
        return bool(await self.run(LEASE_RELEASE, lease_keys(key), (_owner(owner), token)))
