"""Recovery points: multi-phase operations that resume after a crash, on `SqlBackend`.

Why: an operation such as SIM activation (reserve credits → call the
provider → record the activation → capture the credits) cannot be one
transaction, because the provider call is outside the database. Each phase
that completes is recorded on the key's row (its *recovery point*); a retry
after any crash takes the lapsed lease over and resumes after the last
recorded phase::

    async def reserve(session, state):            # LocalPhase: DB only
        hold = await ledger.reserve(session, wallet, 100, key=f"{key}:reserve")
        return {**state, "hold": hold.id}

    async def activate(state):                    # ExternalPhase: the provider
        reply = await provider.activate(state["iccid"], idempotency_key=f"{key}:activate")
        return {**state, "msisdn": reply.msisdn}

    result = await run_phases(backend, key, fp, [
        LocalPhase("reserve", reserve), ExternalPhase("activate", activate),
        LocalPhase("record", record), LocalPhase("capture", capture),
    ], state={"iccid": iccid})

What is exact and what is not, honestly: a `LocalPhase` commits its effect and
its recovery point in one transaction (`SqlBackend.checkpoint_in`; the last
phase stores the result with `SqlBackend.complete_in`), so it happens exactly
once. An `ExternalPhase` is recorded right after it returns, in a small
transaction of its own; if the process dies between the call and that record,
the retry calls the provider again. External calls must therefore be
idempotent at the provider: send an idempotency key derived from the record
key and the phase name (as above), so the provider's answer to the repeat is
the first answer.

State is a JSON object passed from phase to phase and stored with each
recovery point (keep it small: ids, not documents). ``key`` is the record key
as the backend sees it: already scoped and hashed (`scoped_key`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import structlog

from hardened.db.transaction import run_transaction
from hardened.idempotency._contracts import Claimed, Completed, InFlight, Mismatch
from hardened.idempotency._errors import IdempotencyInFlight, IdempotencyKeyReused, LeaseLost
from hardened.idempotency._keys import key_hash_for_logs
from hardened.idempotency._lease import DEFAULT_COMPLETE_RETRY_FOR, HeldLease

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

    from hardened.idempotency._sql import SqlBackend

__all__ = ["ExternalPhase", "LocalPhase", "Phase", "PhaseState", "run_phases"]


PhaseState: TypeAlias = dict[str, Any]
"""What phases pass along: a JSON object, stored as each recovery point."""


@dataclass(frozen=True, slots=True)
class LocalPhase:
    """A database-only phase: its effect and its recovery point commit together."""

    name: str
    run: Callable[[AsyncSession, PhaseState], Awaitable[PhaseState]]


@dataclass(frozen=True, slots=True)
class ExternalPhase:
    """A call outside the database, recorded right after it returns.

    Repeated if the process dies before the record: make it idempotent at the
    provider, with a key derived from the record key and the phase name.
    """

    name: str
    run: Callable[[PhaseState], Awaitable[PhaseState]]


Phase: TypeAlias = LocalPhase | ExternalPhase


def _log() -> Any:
    return structlog.get_logger("hardened.idempotency")  # per event: later configuration applies


def _dumps(state: object) -> bytes:
    if not isinstance(state, dict):
        msg = f"a phase must return a dict, not {type(state).__name__}"
        raise TypeError(msg)
    return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()


def _loads(blob: bytes) -> PhaseState:
    state = json.loads(blob)
    if not isinstance(state, dict):
        msg = "stored phase state is not a JSON object"
        raise TypeError(msg)
    return state


async def run_phases(
    backend: SqlBackend,
    key: str,
    fingerprint: bytes,
    phases: Sequence[Phase],
    *,
    state: PhaseState | None = None,
    lease: float = 30.0,
    retention: float = 86400.0,
    sessions: Callable[[], AsyncSession] | None = None,
    complete_retry_for: float = DEFAULT_COMPLETE_RETRY_FOR,
    on_recorded: Callable[[str], object] | None = None,
    previous_fingerprints: Sequence[bytes] = (),
) -> PhaseState:
    """Run ``phases`` once per ``key``, resuming after the last recorded one.

    Each phase gets the state the previous one returned (``state`` for the
    first). A `LocalPhase` runs in a transaction from ``sessions`` (default:
    the backend's engine) under `run_transaction`, so a serialization failure
    runs it again from a clean slate. Returns the final state, which is also
    what any later call with the key returns.

    Raises `IdempotencyKeyReused` (the key was used with another fingerprint),
    `IdempotencyInFlight` (another holder's lease is live) and `LeaseLost`
    (this run was taken over: nothing more of it is recorded). The lease is
    renewed every third of ``lease`` while phases run. An exception or a
    cancellation releases the key, keeping the recovery point, so a retry
    resumes at once; ``KeyboardInterrupt``/``SystemExit`` do not (the process
    is going down: the lease lapses, as in a crash). A final result the
    backend could not record (after an external last phase) is returned all
    the same and recorded in the background for up to ``complete_retry_for``
    seconds, the lease renewed meanwhile (see `HeldLease`), so the external
    call is not made again by a retry.

    ``previous_fingerprints`` are the same request's fingerprints under previous
    secrets (a rotation's overlap): a record made under one of them is the same
    request, so a retry after the rotation resumes or replays instead of 422.

    ``on_recorded`` is called with a phase's name once its result is durable (its
    recovery point committed; for the last phase, the final result), before the
    next phase starts: the one place to observe "phase X has completed", e.g. to
    inject a crash there in a test.
    """
    names = [phase.name for phase in phases]
    if not names or len(set(names)) != len(names) or not all(names):
        msg = "phases need unique, non-empty names"
        raise ValueError(msg)
    claim = await backend.claim(key, fingerprint, lease=lease, retention=retention)
    for old in previous_fingerprints:
        if not isinstance(claim, Mismatch):
            break
        claim = await backend.claim(key, old, lease=lease, retention=retention)
    key_hash = key_hash_for_logs(key)
    if isinstance(claim, Completed):
        return _loads(claim.result)
    if isinstance(claim, Mismatch):
        _log().warning("idempotency.key_reused", key_hash=key_hash)
        raise IdempotencyKeyReused(
            "This idempotency key was already used with a different payload.",
            context={"key_hash": key_hash},
        )
    if isinstance(claim, InFlight):
        raise IdempotencyInFlight(
            "An operation with this idempotency key is in progress.",
            retry_after=claim.retry_after,
            context={"key_hash": key_hash},
        )
    if claim.phase is not None:
        _log().info("idempotency.resumed", key_hash=key_hash, phase=claim.phase)
    sessions = sessions or backend.sessions
    run = _Run(
        backend,
        key,
        claim.token,
        lease=lease,
        retention=retention,
        sessions=sessions,
        complete_retry_for=complete_retry_for,
        on_recorded=on_recorded,
    )
    return await run.all(phases, claim, state)


def _resume(claim: Claimed, names: list[str], state: PhaseState | None) -> tuple[int, PhaseState]:
    """Where to start, and with what state: after the recovery point, if any."""
    if claim.phase is None:
        return 0, dict(state or {})
    if claim.phase not in names:
        msg = f"recovery point {claim.phase!r} is not one of these phases"
        raise ValueError(msg)
    return names.index(claim.phase) + 1, _loads(claim.data or b"{}")


class _Run:
    """One holder of the key: its lease, the phases, fenced records, release."""

    def __init__(
        self,
        backend: SqlBackend,
        key: str,
        token: int,
        *,
        lease: float,
        retention: float,
        sessions: Callable[[], AsyncSession],
        complete_retry_for: float,
        on_recorded: Callable[[str], object] | None,
    ) -> None:
        self.backend, self.key, self.token = backend, key, token
        self.on_recorded = on_recorded
        self.key_hash = key_hash_for_logs(key)
        self.lease, self.retention, self.sessions = lease, retention, sessions
        self.complete_retry_for = complete_retry_for

    async def all(
        self, phases: Sequence[Phase], claim: Claimed, state: PhaseState | None
    ) -> PhaseState:
        held = HeldLease(
            self.backend,
            self.key,
            self.token,
            lease=self.lease,
            interval=self.lease / 3,
            log_key=self.key,
        )
        try:
            start, current = _resume(claim, [phase.name for phase in phases], state)
            if start == len(phases):  # the last phase was recorded as a recovery point
                await self._record(held, current, None)
            for index in range(start, len(phases)):
                last = index == len(phases) - 1
                current = await self._phase(held, phases[index], current, last)
                if self.on_recorded is not None:
                    self.on_recorded(phases[index].name)
            return current
        except LeaseLost:
            held.mark_lost("phase")
            raise
        except (Exception, asyncio.CancelledError):
            await held.stop()
            await held.release()  # shielded inside: a cancelled caller still releases
            raise
        finally:
            await held.stop()

    async def _phase(
        self, held: HeldLease, phase: Phase, current: PhaseState, last: bool
    ) -> PhaseState:
        if held.lost:  # a beat found the lease taken over: stop before the next effect
            raise self._lease_lost()
        if isinstance(phase, ExternalPhase):
            after = await phase.run(current)
            await self._record(held, after, None if last else phase.name)
            return after

        async def local(session: AsyncSession) -> PhaseState:
            after = await phase.run(session, current)
            blob = _dumps(after)
            if last:
                await self.backend.complete_in(
                    session, self.key, self.token, blob, retention=self.retention
                )
            else:
                await self.backend.checkpoint_in(session, self.key, self.token, phase.name, blob)
            return after

        return await run_transaction(self.sessions, local)

    async def _record(self, held: HeldLease, after: PhaseState, name: str | None) -> None:
        blob = _dumps(after)
        if name is None:
            # None: not stored yet, retried in the background; the run still ends here.
            stored = await held.complete(
                blob, retention=self.retention, retry_for=self.complete_retry_for
            )
            if stored is False:  # marked lost by the lease
                raise self._lease_lost()
            return
        if not await self.backend.checkpoint(self.key, self.token, name, blob):
            held.mark_lost("checkpoint")
            raise self._lease_lost()

    def _lease_lost(self) -> LeaseLost:
        return LeaseLost(
            "Another holder took over this operation; this run must not publish.",
            context={"key_hash": self.key_hash},
        )
