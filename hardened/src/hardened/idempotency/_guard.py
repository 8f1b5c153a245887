"""Exactly-once internal operations: ``Idempotent.operation()`` and ``@idempotent``.

Job handlers and provider calls are retried by queues, by users and by crash
recovery; each must run once per key. `Idempotent` gives them the HTTP
layer's semantics over any `IdempotencyBackend`::

    idem = Idempotent(StoreBackend(store), IdempotencyConfig(lease=30.0))

    async with idem.operation(f"activate:{order_id}", fingerprint) as run:
        if run.replayed:
            return decode(run.result)
        if run.phase is None:
            await provider.activate(...)
            await run.checkpoint("activated", data)
        ...
        await run.complete(encode(result))

* A claimed operation holds a lease renewed by a background heartbeat (every
  ``heartbeat`` seconds, default a third of the lease), so a body slower than
  the lease is not duplicated. A crashed holder's lease lapses and the next
  claim takes over, resuming from the last checkpoint (``run.phase``,
  ``run.data``).
* Writes are fenced: once another holder took over, ``checkpoint`` and
  ``complete`` raise `LeaseLost` (a heartbeat that finds the lease gone marks
  the operation, so they raise without asking the store).
* A ``complete`` the backend could not answer returns as if stored (the
  operation ran, and its caller has the result) and is not released: it is
  retried in the background, the lease renewed meanwhile, for up to
  ``complete_retry_for``, so a concurrent claim gets `IdempotencyInFlight`,
  then the replay. Given up (logged as ``idempotency.complete_abandoned``,
  counted in ``hardened_idempotency_complete_abandoned_total``), the lease
  lapses and the operation may run again (see `HeldLease`).
* Leaving the block by an exception, or without ``complete()``, releases the
  claim (fenced) so a retry runs again (from its checkpoint, if any); the
  exception propagates. Internal operations have no "failed result" to store
  (the HTTP layer's ``store_server_errors`` has no counterpart here).
* Another payload under the key → `IdempotencyKeyReused`; a live holder →
  wait up to ``wait`` seconds (polling with backoff) for its result, then
  `IdempotencyInFlight` with ``Retry-After``.

Keys are hashed with their scope (`scoped_key`) before they reach the store,
and logged only as `key_hash_for_logs`. Metrics:
``hardened_idempotency_claims_total{outcome}`` (claimed, resumed, replayed,
in_flight, mismatch), ``hardened_idempotency_lease_lost_total`` and
``hardened_idempotency_complete_abandoned_total``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import structlog

from hardened.idempotency._contracts import Claimed, Completed, InFlight, Mismatch
from hardened.idempotency._errors import IdempotencyInFlight, IdempotencyKeyReused, LeaseLost
from hardened.idempotency._keys import key_hash_for_logs, scoped_key
from hardened.idempotency._lease import FIRST_POLL, MAX_POLL, HeldLease, LeaseConfig
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from hardened.idempotency._contracts import Claim, IdempotencyBackend

__all__ = [
    "IdempotencyConfig",
    "Idempotent",
    "IdempotentRun",
    "current_operation",
    "idempotent",
]

P = ParamSpec("P")
R = TypeVar("R")

_CLAIMS = counter("idempotency_claims_total", "Idempotency claims by outcome.", ["outcome"])
_OUTCOMES = {
    outcome: _CLAIMS.labels(outcome)  # labels() locks on every call: resolve once
    for outcome in ("claimed", "resumed", "replayed", "in_flight", "mismatch")
}
_CURRENT: contextvars.ContextVar[IdempotentRun | None] = contextvars.ContextVar(
    "hardened_idempotency_operation", default=None
)


def _log() -> Any:
    return structlog.get_logger("hardened.idempotency")  # per event: later configuration applies


@dataclass(frozen=True, slots=True)
class IdempotencyConfig(LeaseConfig):
    """`LeaseConfig` (lease, heartbeat, retention, complete retries) plus ``wait``.

    ``wait`` is how long a caller waits for a live holder's result before
    `IdempotencyInFlight` (0: refuse at once). Internal operations always
    release on exceptions; give operations that call providers a longer lease
    (see `LeaseConfig`).
    """

    wait: float = 0.0

    def __post_init__(self) -> None:
        LeaseConfig.__post_init__(self)  # zero-argument super() fails in a slots dataclass
        if not (self.wait >= 0 and math.isfinite(self.wait)):
            raise ValueError(f"wait must be >= 0 seconds, got {self.wait!r}")


class IdempotentRun:
    """One run of a keyed operation: claimed (or replayed); use as ``async with``.

    `Idempotent.operation()` makes it; `current_operation` finds it inside.
    """

    __slots__ = (
        "_entered",
        "_finished",
        "_held",
        "_idem",
        "_key",
        "_key_hash",
        "_reset",
        "_store_key",
        "data",
        "fingerprint",
        "phase",
        "replayed",
        "result",
        "token",
    )

    def __init__(self, idem: Idempotent, key: str, fingerprint: bytes) -> None:
        self._idem = idem
        self._key = key
        self._store_key = idem.store_key(key)
        self._key_hash = key_hash_for_logs(key)
        self.fingerprint = fingerprint
        self.replayed = False
        self.result: bytes | None = None
        self.phase: str | None = None
        self.data: bytes | None = None
        self.token: int | None = None
        self._entered = self._finished = False
        self._held: HeldLease | None = None
        self._reset: contextvars.Token[IdempotentRun | None] | None = None

    @property
    def lease_lost(self) -> bool:
        """Whether another holder took over: nothing this run does will be published."""
        return self._held is not None and self._held.lost

    # -- entering: claim, wait, decide ------------------------------------------

    async def _claim(self) -> Claim:
        config, backend = self._idem.config, self._idem.backend
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.wait
        delay = FIRST_POLL
        while True:
            claim = await backend.claim(
                self._store_key, self.fingerprint, lease=config.lease, retention=config.retention
            )
            left = deadline - loop.time()
            if not isinstance(claim, InFlight) or left <= 0:
                return claim
            pause = min(delay, left, claim.retry_after) * (0.5 + random.random() / 2)  # noqa: S311
            await asyncio.sleep(max(pause, 0.001))
            delay = min(delay * 2, MAX_POLL)

    async def __aenter__(self) -> IdempotentRun:
        if self._entered:
            raise RuntimeError("an IdempotentRun can be entered only once")
        self._entered = True
        claim = await self._claim()
        log = _log().bind(key_hash=self._key_hash)
        if isinstance(claim, Mismatch):
            _OUTCOMES["mismatch"].inc()
            log.warning("idempotency.key_reused")
            raise IdempotencyKeyReused(
                "This idempotency key was already used with a different payload.",
                context={"key_hash": self._key_hash},
            )
        if isinstance(claim, InFlight):
            _OUTCOMES["in_flight"].inc()
            log.info("idempotency.in_flight", retry_after=claim.retry_after)
            raise IdempotencyInFlight(
                "An operation with this idempotency key is in progress.",
                retry_after=claim.retry_after,
                context={"key_hash": self._key_hash},
            )
        if isinstance(claim, Completed):
            _OUTCOMES["replayed"].inc()
            log.debug("idempotency.replayed")
            self.replayed, self.result = True, claim.result
        else:
            self._start(claim)
            if claim.phase is None:
                _OUTCOMES["claimed"].inc()
            else:
                _OUTCOMES["resumed"].inc()
                log.info("idempotency.resumed", phase=claim.phase)
        self._reset = _CURRENT.set(self)
        return self

    def _start(self, claim: Claimed) -> None:
        self.token, self.phase, self.data = claim.token, claim.phase, claim.data
        config = self._idem.config
        self._held = HeldLease(
            self._idem.backend,
            self._store_key,
            claim.token,
            lease=config.lease,
            interval=config.heartbeat_interval,
            log_key=self._key,
        )

    # -- holding: checkpoint, complete ----------------------------------------------

    def _lease_lost(self) -> LeaseLost:
        return LeaseLost(
            "Another holder took over this idempotency key; this run must not publish.",
            context={"key_hash": self._key_hash},
        )

    def _holding(self) -> HeldLease:
        held = self._held
        if held is None or self._finished:
            state = "replayed" if self.replayed else "not held"
            raise RuntimeError(f"this operation is {state}; it cannot be written")
        if held.lost:
            raise self._lease_lost()
        return held

    async def checkpoint(self, phase: str, data: bytes = b"") -> None:
        """Record ``phase`` as done (recovery point): a retry resumes after it with ``data``."""
        held = self._holding()
        if not await self._idem.backend.checkpoint(held.key, held.token, phase, data):
            held.mark_lost("checkpoint")
            raise self._lease_lost()
        self.phase, self.data = phase, data

    async def complete(self, result: bytes) -> None:
        """Store ``result`` for replays and end the lease; `LeaseLost` if taken over.

        A backend failure does not raise: the store is retried in the background.
        """
        held = self._holding()
        config = self._idem.config
        stored = await held.complete(
            result, retention=config.retention, retry_for=config.complete_retry_for
        )
        if stored is False:
            raise self._lease_lost()
        self._finished, self.result = True, result

    # -- leaving: release unless completed -----------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reset is not None:
            _CURRENT.reset(self._reset)
            self._reset = None
        held = self._held
        if held is None or self._finished:
            return
        self._finished = True
        await held.stop()
        reason = "not_completed" if exc_type is None else "exception"
        _log().info("idempotency.released", key_hash=self._key_hash, reason=reason)
        # Shielded inside: a cancelled caller (timeouts, shutdown) still releases.
        await held.release()


class Idempotent:
    """Runs internal operations once per key on ``backend``; see the module docstring."""

    __slots__ = ("_backend", "_config", "_scope")

    def __init__(
        self,
        backend: IdempotencyBackend,
        config: IdempotencyConfig | None = None,
        *,
        scope: str = "internal",
    ) -> None:
        self._backend = backend
        self._config = config if config is not None else IdempotencyConfig()
        self._scope = scope

    @property
    def backend(self) -> IdempotencyBackend:
        return self._backend

    @property
    def config(self) -> IdempotencyConfig:
        return self._config

    def store_key(self, key: str) -> str:
        """The hashed, scoped key the backend sees for ``key``."""
        scope = self._scope
        return scoped_key(tenant=None, principal=None, method="INTERNAL", route=scope, key=key)

    def operation(self, key: str, fingerprint: bytes = b"") -> IdempotentRun:
        """An ``async with`` block claiming ``key`` (``fingerprint``: the payload, b"" for none)."""
        return IdempotentRun(self, key, fingerprint)


def current_operation() -> IdempotentRun:
    """The innermost operation of this task (lets an ``@idempotent`` function checkpoint)."""
    run = _CURRENT.get()
    if run is None:
        raise LookupError("no idempotent operation is running in this context")
    return run


def _encode_json(value: Any) -> bytes:
    # ASCII escapes: total (a lone surrogate cannot be UTF-8 encoded) and decodes as before.
    return json.dumps(value, separators=(",", ":")).encode()


def _decode_json(raw: bytes) -> Any:
    return json.loads(raw)


def idempotent(
    idem: Idempotent,
    *,
    key: Callable[..., str],
    encode: Callable[[Any], bytes] = _encode_json,
    decode: Callable[[bytes], Any] = _decode_json,
    fingerprint: Callable[..., bytes] | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run the decorated async function once per ``key(*args, **kwargs)``.

    Later calls get the first call's return value back through
    ``decode(encode(value))`` (JSON by default: a tuple comes back a list);
    the first call gets its value as returned. ``fingerprint(*args,
    **kwargs)`` binds the key to its arguments (a reuse with other arguments
    raises `IdempotencyKeyReused`); without it any arguments replay. Inside
    the function, `current_operation` gives the operation for checkpoints.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def run_once(*args: P.args, **kwargs: P.kwargs) -> R:
            payload = b"" if fingerprint is None else fingerprint(*args, **kwargs)
            async with idem.operation(key(*args, **kwargs), payload) as run:
                if run.replayed:
                    return cast("R", decode(run.result or b""))
                value = await fn(*args, **kwargs)
                await run.complete(encode(value))
                return value

        return run_once

    return decorate
