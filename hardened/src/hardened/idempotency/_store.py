"""`StoreBackend`: idempotency records over the stores' atomic scripts.

Why scripts: every operation reads the record, judges the lease on the server
clock and writes, so each must be atomic and, on Redis, one round trip. Each
operation is one script (``lua/idem_*.lua``) with a Python twin over
`MemoryState`, so `MemoryStore` and `RedisStore` give the same answers (one
contract suite runs against both). A claim is one ``EVALSHA`` whatever it
answers, so a replay costs exactly one round trip.

Record: one hash per scoped key, ``tagged(namespace, key)`` (one Redis Cluster
slot), with the fields ``fingerprint``, ``state`` (``running`` or ``done``),
``token``, ``lease_until`` (server time in ms), ``keep`` (retention in ms),
``phase``, ``data`` and ``result``.

Times: the lease is judged by ``lease_until`` against the server's ``TIME``,
never by the key's TTL, so a lapsed lease keeps its checkpoint for whoever
takes over. TTLs only bound memory: a running record lives until its lease
end plus the retention given to `claim` (a crashed operation's recovery point
survives as long as its result would have), a done record for the retention
given to `complete`, a released record with a checkpoint for the claim's
retention from the release.

Tokens are ``max(last + 1, server time in ms)`` (large integers; only their
order means anything), so a record forgotten and created again never reissues
the token of a holder whose lease was taken over (it is at least a lease
older). `release` moves the token on when it keeps a checkpoint, fencing the
releaser off too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hardened.idempotency._contracts import Claim, Claimed, Completed, InFlight, Mismatch
from hardened.stores import Script, tagged, ttl_ms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.stores import AtomicScripts, MemoryState

__all__ = [
    "CHECKPOINT",
    "CLAIM",
    "COMPLETE",
    "HEARTBEAT",
    "RELEASE",
    "StoreBackend",
]

_FIELDS = (b"fingerprint", b"state", b"token", b"lease_until", b"phase", b"data", b"result")
_RUNNING, _DONE = b"running", b"done"
_CLAIMED, _IN_FLIGHT, _COMPLETED, _MISMATCH = 1, 2, 3, 4


# -- the scripts' Python twins (read each beside its Lua file) -----------------------


def _ms(now: float) -> int:
    return math.floor(now * 1000)


def _claim(
    state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float
) -> list[object]:
    key = keys[0]
    fp, status, token, until, phase, data, result = state.hmget(key, *_FIELDS)
    if fp is not None and fp != args[0]:
        return [_MISMATCH]
    if status == _DONE:
        return [_COMPLETED, result]
    now_ms, lease, keep = _ms(now), int(args[1]), int(args[2])
    new_token = now_ms
    if fp is not None:
        left = int(until or b"0") - now_ms
        if left > 0:
            return [_IN_FLIGHT, left]
        new_token = max(int(token or b"0") + 1, now_ms)
    state.hset(
        key,
        {
            b"fingerprint": args[0],
            b"state": _RUNNING,
            b"token": b"%d" % new_token,
            b"lease_until": b"%d" % (now_ms + lease),
            b"keep": args[2],
        },
    )
    state.pexpire(key, lease + keep)
    return [_CLAIMED, new_token, phase, data]


def _holds(state: MemoryState, key: str, token: bytes) -> bool:
    status, current = state.hmget(key, b"state", b"token")
    return status == _RUNNING and current == token


def _heartbeat(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    key = keys[0]
    if not _holds(state, key, args[0]):
        return 0
    lease = int(args[1])
    state.hset(key, {b"lease_until": b"%d" % (_ms(now) + lease)})
    state.pexpire(key, lease + int(state.hget(key, b"keep") or b"0"))
    return 1


def _checkpoint(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    if not _holds(state, keys[0], args[0]):
        return 0
    state.hset(keys[0], {b"phase": args[1], b"data": args[2]})
    return 1


def _complete(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    key = keys[0]
    if not _holds(state, key, args[0]):
        return 0
    state.hdel(key, b"token", b"lease_until", b"keep", b"phase", b"data")
    state.hset(key, {b"state": _DONE, b"result": args[1]})
    state.pexpire(key, int(args[2]))
    return 1


def _release(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> int:
    key = keys[0]
    if not _holds(state, key, args[0]):
        return 0
    keep, phase = state.hmget(key, b"keep", b"phase")
    if phase is None:
        state.delete(key)
        return 1
    state.hset(key, {b"token": b"%d" % (int(args[0]) + 1), b"lease_until": b"0"})
    state.pexpire(key, int(keep or b"0"))
    return 1


CLAIM = Script.load("idem_claim", _claim, package=__package__)
HEARTBEAT = Script.load("idem_heartbeat", _heartbeat, package=__package__)
CHECKPOINT = Script.load("idem_checkpoint", _checkpoint, package=__package__)
COMPLETE = Script.load("idem_complete", _complete, package=__package__)
RELEASE = Script.load("idem_release", _release, package=__package__)


# -- the backend ---------------------------------------------------------------------


_MS_ARGS: dict[float, bytes] = {}


def _ms_arg(seconds: float) -> bytes:
    # Leases and retentions come from config: a handful of values, encoded once.
    # All-bytes arguments also pass through `encode_args` without a copy.
    encoded = _MS_ARGS.get(seconds)
    if encoded is None:
        encoded = b"%d" % ttl_ms(seconds)
        if len(_MS_ARGS) < 64:
            _MS_ARGS[seconds] = encoded
    return encoded


class StoreBackend:
    """`IdempotencyBackend` on `MemoryStore`, `RedisStore` or any `AtomicScripts`."""

    __slots__ = ("_head", "_namespace", "_store")

    def __init__(self, store: AtomicScripts, *, namespace: str = "idem") -> None:
        # tagged() refuses an empty namespace now, not on the first request.
        self._head = tagged(namespace).removesuffix("}") + ":"
        self._store = store
        self._namespace = namespace

    def record_key(self, key: str) -> str:
        """The store key holding ``key``'s record (for inspection and tests)."""
        # Scoped keys are hex digests: nothing to escape, so the tagged() key is built directly.
        return self._head + key + "}" if key.isalnum() else tagged(self._namespace, key)

    async def claim(self, key: str, fingerprint: bytes, *, lease: float, retention: float) -> Claim:
        args = (fingerprint, _ms_arg(lease), _ms_arg(retention))
        reply = await self._store.run(CLAIM, (self.record_key(key),), args)
        kind = reply[0]
        if kind == _CLAIMED:
            phase: bytes | None = reply[2]
            if phase is None:
                return Claimed(int(reply[1]))
            return Claimed(int(reply[1]), phase.decode(), reply[3] or b"")
        if kind == _IN_FLIGHT:
            return InFlight(int(reply[1]) / 1000)
        if kind == _COMPLETED:
            return Completed(reply[1] or b"")
        return Mismatch()

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        args = (b"%d" % token, _ms_arg(lease))
        return bool(await self._store.run(HEARTBEAT, (self.record_key(key),), args))

    async def checkpoint(self, key: str, token: int, phase: str, data: bytes) -> bool:
        if not phase:
            raise ValueError("phase must be a non-empty string")
        args = (token, phase, data)
        return bool(await self._store.run(CHECKPOINT, (self.record_key(key),), args))

    async def complete(self, key: str, token: int, result: bytes, *, retention: float) -> bool:
        args = (b"%d" % token, result, _ms_arg(retention))
        return bool(await self._store.run(COMPLETE, (self.record_key(key),), args))

    async def release(self, key: str, token: int) -> bool:
        return bool(await self._store.run(RELEASE, (self.record_key(key),), (b"%d" % token,)))
