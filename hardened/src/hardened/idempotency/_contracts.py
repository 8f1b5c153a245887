"""The idempotency backend contract: claim, heartbeat, checkpoint, complete, release.

One record per scoped key. A record is either *running* (held by a lease with a
fencing token) or *done* (holding an opaque result until its retention ends).
Every backend (the store backend over `MemoryStore` or `RedisStore`, and the
SQL backend over PostgreSQL or SQLite) implements this contract with the same
semantics, proven by one contract suite.

``claim`` is the only entry point and answers in one step (one Redis round
trip):

* no record → a new running record: `Claimed`;
* a record with another fingerprint → `Mismatch` (whatever its state);
* done → `Completed` with the stored result;
* running with a live lease → `InFlight` with the lease's remaining seconds;
* running with an expired lease (its holder crashed or stalled) → taken over:
  the token is incremented and the last checkpoint (recovery point) is handed
  to the new holder: `Claimed` with ``phase``/``data`` set.

``heartbeat``, ``checkpoint``, ``complete`` and ``release`` are fenced: they act
only if ``token`` is still the record's token and it is still running, and
return ``False`` otherwise (the caller lost its lease and must not publish
anything). A lease that lapsed but was not taken over still holds: its token
is unchanged, so its holder may still heartbeat or finish. Times are the
backend's clock (Redis ``TIME``, the database's ``now()``), never the caller's.

Tokens are ``max(last + 1, backend time in ms)`` (large integers whose order
alone means anything), not a counter from 1: a holder whose lease was taken
over stays fenced off for good, even after the record was forgotten and made
again, because its token predates the takeover by at least a lease.
``release`` with a checkpoint moves the token on, fencing off the releaser.

Results are opaque bytes: the HTTP layer stores an encoded response, internal
operations an encoded return value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeAlias

__all__ = [
    "Claim",
    "Claimed",
    "Completed",
    "IdempotencyBackend",
    "InFlight",
    "Mismatch",
]


@dataclass(frozen=True, slots=True)
class Claimed:
    """The caller now holds the key; resume after ``phase`` when it is set."""

    token: int
    phase: str | None = None
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class InFlight:
    """Another holder's lease is live for ``retry_after`` more seconds."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Completed:
    """The operation finished; ``result`` is what its holder stored."""

    result: bytes


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was first used with a different fingerprint (another payload)."""


Claim: TypeAlias = Claimed | InFlight | Completed | Mismatch


class IdempotencyBackend(Protocol):
    """Where idempotency records live; ``key`` is already scoped and hashed."""

    async def claim(self, key: str, fingerprint: bytes, *, lease: float, retention: float) -> Claim:
        """Take the key, or report why not (see the module docstring)."""
        ...

    async def heartbeat(self, key: str, token: int, *, lease: float) -> bool:
        """Extend the lease to ``lease`` seconds from now; False if it was lost."""
        ...

    async def checkpoint(self, key: str, token: int, phase: str, data: bytes) -> bool:
        """Record a completed phase (recovery point) under the lease; False if lost."""
        ...

    async def complete(self, key: str, token: int, result: bytes, *, retention: float) -> bool:
        """Store the result for ``retention`` seconds and end the lease; False if lost."""
        ...

    async def release(self, key: str, token: int) -> bool:
        """End the lease now so a retry may run; False if lost.

        A record without checkpoints is forgotten (the retry starts afresh);
        one with a checkpoint keeps it, expired, so the retry resumes there.
        """
        ...
