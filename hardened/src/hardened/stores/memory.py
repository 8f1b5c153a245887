"""`MemoryStore`: every store contract in process, for a single process.

It runs the same semantics as `RedisStore` (the contract suite proves it): the
same TTL rounding, the same scripts through their Python twins, the same
errors. It is for one process on one event loop: tests, development and
single-worker deployments. State is not shared between workers, so a limit or
a lease held here binds only this process.

Atomicity: no operation awaits between reading and writing, so on one event
loop each call (and each script twin) runs without interleaving, as a Lua
script does on Redis. Do not share an instance across threads or loops.

Clock: one injected clock (``time.monotonic`` by default) drives everything.
TTL deadlines are on it directly, so wall-clock steps never expire or revive
keys. Scripts get ``now`` as Unix-epoch seconds: the clock plus an offset
fixed at construction (wall time minus clock), so ``now`` is comparable with
``redis.call('TIME')`` yet never jumps backwards and advances exactly as TTLs
do. Tests inject a fake clock and advance it.

Memory: expired keys go lazily on read and through a bounded sweep (see
`MemoryState`) run every ``SWEEP_EVERY`` writes with that many batches of
budget: the same reclaim rate as a batch per write, so keys nobody reads again
do not pile up, without paying the sweep's clock read and call on every write
(they were a tenth of a rate-limit decision). One write in ``SWEEP_EVERY``
does at most ``SWEEP_EVERY * sweep_batch`` removals.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hardened.errors import StoreUnavailable
from hardened.observability.metrics import counter
from hardened.stores._contracts import ScriptArg, encode_args, ttl_ms
from hardened.stores._scripts import COUNTER_INCR, ScriptLeases
from hardened.stores._state import MemoryDataError, MemoryState

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from hardened.stores._contracts import Script

__all__ = ["SWEEP_EVERY", "MemoryStore"]

_BACKEND = "memory"
#: Writes between two sweeps (each with this many ``sweep_batch`` of budget).
SWEEP_EVERY = 8


_ERRORS = counter("store_errors_total", "Store operations that failed", ["backend", "operation"])


class MemoryStore(ScriptLeases):
    """In-process `Store` (`KeyValue`, `Counters`, `AtomicScripts`, `Leases`, `Lifecycle`)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, sweep_batch: int = 64
    ) -> None:
        self._clock = clock
        self._epoch = time.time() - clock()
        self.state = MemoryState(clock, sweep_batch=sweep_batch)
        self._writes = 0
        self._encoded: tuple[bytes, ...] | None = None

    def now(self) -> float:
        """The ``now`` scripts see: Unix-epoch seconds on the injected clock."""
        return self._epoch + self._clock()

    def _sweep(self) -> None:
        self._writes += 1
        if self._writes >= SWEEP_EVERY:
            self._writes = 0
            self.state.sweep(SWEEP_EVERY * self.state.sweep_batch)

    def _unavailable(self, operation: str, exc: MemoryDataError) -> StoreUnavailable:
        _ERRORS.labels(_BACKEND, operation).inc()
        context = {"backend": _BACKEND, "operation": operation, "error": str(exc)}
        return StoreUnavailable(context=context)

    # -- KeyValue ----------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        try:
            return self.state.get(key)
        except MemoryDataError as exc:
            raise self._unavailable("get", exc) from exc

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        if not isinstance(value, bytes):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        px = None if ttl is None else ttl_ms(ttl)
        self._sweep()
        return self.state.set(key, value, px=px, nx=only_if_absent)

    async def delete(self, *keys: str) -> int:
        return self.state.delete(*keys)

    async def ttl(self, key: str) -> float | None:
        return self.state.remaining(key)

    # -- Counters ----------------------------------------------------------

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError("amount must be an int")
        if ttl is not None:
            return int(await self.run(COUNTER_INCR, (key,), (amount, ttl_ms(ttl))))
        self._sweep()
        try:
            return self.state.incrby(key, amount)
        except MemoryDataError as exc:
            raise self._unavailable("incr", exc) from exc

    # -- AtomicScripts -----------------------------------------------------

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        # A tuple found all-bytes stays so: the same pre-encoded ARGV tuple (a rate-limit
        # policy's, on every decision) is checked once, then recognised by identity.
        if args is self._encoded:
            encoded: Sequence[bytes] = args
        else:
            encoded = encode_args(args)
            if encoded is args and args.__class__ is tuple:
                self._encoded = args
        self._writes += 1  # _sweep(), inlined: this is the rate limiter's hot path
        if self._writes >= SWEEP_EVERY:
            self._writes = 0
            self.state.sweep(SWEEP_EVERY * self.state.sweep_batch)
        try:
            return script.memory(self.state, keys, encoded, self._epoch + self._clock())
        except MemoryDataError as exc:
            raise self._unavailable(script.name, exc) from exc

    # -- Lifecycle ---------------------------------------------------------

    async def ping(self) -> None:
        """Always answers: the state lives in this process."""

    async def aclose(self) -> None:
        """Nothing to release; the state stays readable until garbage-collected."""
