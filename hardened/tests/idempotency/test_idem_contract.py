"""One contract suite for every idempotency backend (see ``conftest.BACKENDS``).

Time: leases of 0.2 s, let pass with ``advance`` (a fake clock on memory, a
real sleep on server clocks); results are kept for a minute unless a test is
about retention.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from hardened.idempotency import Claimed, Completed, InFlight, Mismatch

if TYPE_CHECKING:
    from conftest import IdemBackend
    from hardened.idempotency import Claim

pytestmark = pytest.mark.anyio

LEASE = 0.2
PAST_LEASE = 0.3
KEEP = 60.0
FP = b"\x00fingerprint-a"
OTHER = b"\x00fingerprint-b"


def new_key() -> str:
    return uuid.uuid4().hex


async def claim(b: IdemBackend, key: str, fp: bytes = FP, *, lease: float = LEASE) -> Claim:
    return await b.backend.claim(key, fp, lease=lease, retention=KEEP)


async def claimed(b: IdemBackend, key: str, fp: bytes = FP, *, lease: float = LEASE) -> Claimed:
    result = await claim(b, key, fp, lease=lease)
    assert isinstance(result, Claimed), result
    return result


async def test_first_claim_takes_the_key_without_a_checkpoint(idem_backend: IdemBackend) -> None:
    """A key never seen is claimed with a positive token and nothing to resume."""
    first = await claimed(idem_backend, new_key())
    assert first.token >= 1
    assert (first.phase, first.data) == (None, None)


async def test_live_lease_is_in_flight_with_its_remaining_time(idem_backend: IdemBackend) -> None:
    """A second claim during a live lease is InFlight with 0 < retry_after <= lease."""
    key = new_key()
    await claimed(idem_backend, key, lease=5.0)
    second = await claim(idem_backend, key, lease=5.0)
    assert isinstance(second, InFlight)
    assert 0 < second.retry_after <= 5.0


@pytest.mark.parametrize("state", ["running", "lapsed", "released_with_checkpoint", "done"])
async def test_other_fingerprint_is_a_mismatch_in_every_state(
    idem_backend: IdemBackend, state: str
) -> None:
    """Another payload under a used key is Mismatch whether running, lapsed, resumable or done."""
    key = new_key()
    first = await claimed(idem_backend, key)
    if state == "lapsed":
        await idem_backend.advance(PAST_LEASE)
    elif state == "released_with_checkpoint":
        assert await idem_backend.backend.checkpoint(key, first.token, "reserved", b"r1")
        assert await idem_backend.backend.release(key, first.token)
    elif state == "done":
        assert await idem_backend.backend.complete(key, first.token, b"ok", retention=KEEP)
    assert isinstance(await claim(idem_backend, key, OTHER), Mismatch)
    same = await claim(idem_backend, key)
    assert not isinstance(same, Mismatch)


async def test_completed_key_replays_the_stored_bytes(idem_backend: IdemBackend) -> None:
    """After complete, every claim is Completed with exactly the stored bytes (binary, empty)."""
    for result in (b"\x00\xff binary \r\n", b""):
        key = new_key()
        first = await claimed(idem_backend, key)
        assert await idem_backend.backend.complete(key, first.token, result, retention=KEEP)
        assert await claim(idem_backend, key) == Completed(result)
        assert await claim(idem_backend, key) == Completed(result)


async def test_lapsed_lease_is_taken_over_with_its_recovery_point(
    idem_backend: IdemBackend,
) -> None:
    """An expired lease goes to the next claim with a greater token and the last checkpoint."""
    key, bare = new_key(), new_key()
    first = await claimed(idem_backend, key)
    first_bare = await claimed(idem_backend, bare)
    assert await idem_backend.backend.checkpoint(key, first.token, "reserved", b"one")
    assert await idem_backend.backend.checkpoint(key, first.token, "activated", b"two")
    await idem_backend.advance(PAST_LEASE)
    second = await claimed(idem_backend, key)
    assert second.token > first.token
    assert (second.phase, second.data) == ("activated", b"two")
    second_bare = await claimed(idem_backend, bare)
    assert second_bare.token > first_bare.token
    assert (second_bare.phase, second_bare.data) == (None, None)


async def test_checkpoint_without_data_resumes_with_empty_bytes(
    idem_backend: IdemBackend,
) -> None:
    """A checkpoint recorded with empty data hands over phase and b"" (not None)."""
    key = new_key()
    first = await claimed(idem_backend, key)
    assert await idem_backend.backend.checkpoint(key, first.token, "reserved", b"")
    await idem_backend.advance(PAST_LEASE)
    second = await claimed(idem_backend, key)
    assert (second.phase, second.data) == ("reserved", b"")


async def test_stale_holder_can_change_nothing(idem_backend: IdemBackend) -> None:
    """After a takeover, the old token's heartbeat/checkpoint/complete/release are False no-ops."""
    key, backend = new_key(), idem_backend.backend
    stale = await claimed(idem_backend, key)
    await idem_backend.advance(PAST_LEASE)
    holder = await claimed(idem_backend, key, lease=5.0)
    assert await backend.checkpoint(key, holder.token, "reserved", b"holder")
    assert await backend.heartbeat(key, stale.token, lease=5.0) is False
    assert await backend.checkpoint(key, stale.token, "stale", b"stale") is False
    assert await backend.complete(key, stale.token, b"stale", retention=KEEP) is False
    assert await backend.release(key, stale.token) is False
    assert isinstance(await claim(idem_backend, key), InFlight)  # the holder's lease stands
    assert await backend.release(key, holder.token)
    resumed = await claimed(idem_backend, key)
    assert (resumed.phase, resumed.data) == ("reserved", b"holder")
    assert await backend.complete(key, stale.token, b"stale", retention=KEEP) is False
    assert await backend.complete(key, resumed.token, b"result", retention=KEEP)
    assert await claim(idem_backend, key) == Completed(b"result")


async def test_release_without_checkpoint_forgets_the_key(idem_backend: IdemBackend) -> None:
    """Releasing a claim that recorded no phase forgets it: any payload may claim afresh."""
    key = new_key()
    first = await claimed(idem_backend, key)
    assert await idem_backend.backend.release(key, first.token)
    again = await claimed(idem_backend, key, OTHER)
    assert (again.phase, again.data) == (None, None)


async def test_release_with_checkpoint_lets_the_retry_resume_now(
    idem_backend: IdemBackend,
) -> None:
    """Release after a checkpoint ends the lease now: the retry resumes, the releaser is fenced."""
    key, backend = new_key(), idem_backend.backend
    first = await claimed(idem_backend, key, lease=5.0)
    assert await backend.checkpoint(key, first.token, "charged", b"tx-1")
    assert await backend.release(key, first.token)
    retry = await claimed(idem_backend, key, lease=5.0)
    assert retry.token > first.token
    assert (retry.phase, retry.data) == ("charged", b"tx-1")
    assert await backend.heartbeat(key, first.token, lease=5.0) is False
    assert await backend.release(key, first.token) is False


async def test_heartbeat_extends_the_lease(idem_backend: IdemBackend) -> None:
    """A heartbeat before expiry keeps the key in flight past the original lease."""
    key = new_key()
    first = await claimed(idem_backend, key, lease=0.25)
    await idem_backend.advance(0.15)
    assert await idem_backend.backend.heartbeat(key, first.token, lease=0.25)
    await idem_backend.advance(0.15)
    assert isinstance(await claim(idem_backend, key, lease=0.25), InFlight)


async def test_lapsed_lease_not_taken_over_still_belongs_to_its_holder(
    idem_backend: IdemBackend,
) -> None:
    """A lease that lapsed with nobody taking over can still be renewed and completed."""
    key = new_key()
    first = await claimed(idem_backend, key)
    await idem_backend.advance(PAST_LEASE)
    assert await idem_backend.backend.heartbeat(key, first.token, lease=5.0)
    assert isinstance(await claim(idem_backend, key), InFlight)
    assert await idem_backend.backend.complete(key, first.token, b"late", retention=KEEP)
    assert await claim(idem_backend, key) == Completed(b"late")


async def test_tokens_are_never_reissued_after_a_key_is_forgotten(
    idem_backend: IdemBackend,
) -> None:
    """A stalled holder stays fenced even after its key was taken over, forgotten and reclaimed."""
    key, backend = new_key(), idem_backend.backend
    stalled = await claimed(idem_backend, key)
    await idem_backend.advance(PAST_LEASE)
    second = await claimed(idem_backend, key)
    assert await backend.release(key, second.token)  # no checkpoint: forgotten
    third = await claimed(idem_backend, key)
    assert stalled.token < second.token <= third.token
    assert await backend.complete(key, stalled.token, b"stale", retention=KEEP) is False
    assert isinstance(await claim(idem_backend, key), InFlight)


async def test_finished_record_refuses_every_fenced_call(idem_backend: IdemBackend) -> None:
    """Once completed, the holder's own heartbeat/checkpoint/complete/release are False."""
    key, backend = new_key(), idem_backend.backend
    first = await claimed(idem_backend, key)
    assert await backend.complete(key, first.token, b"one", retention=KEEP)
    assert await backend.heartbeat(key, first.token, lease=LEASE) is False
    assert await backend.checkpoint(key, first.token, "late", b"") is False
    assert await backend.complete(key, first.token, b"two", retention=KEEP) is False
    assert await backend.release(key, first.token) is False
    assert await claim(idem_backend, key) == Completed(b"one")


async def test_done_record_is_forgotten_after_its_retention(idem_backend: IdemBackend) -> None:
    """A result is replayed within its retention and forgotten after it."""
    key, backend = new_key(), idem_backend.backend
    first = await claimed(idem_backend, key)
    assert await backend.complete(key, first.token, b"kept", retention=0.2)
    assert await claim(idem_backend, key) == Completed(b"kept")
    await idem_backend.advance(PAST_LEASE)
    fresh = await claimed(idem_backend, key, OTHER)
    assert (fresh.phase, fresh.data) == (None, None)


async def test_crashed_claim_is_forgotten_after_lease_plus_retention(
    idem_backend: IdemBackend,
) -> None:
    """A running record nobody finishes lives for its lease plus the retention, then goes."""
    key, backend = new_key(), idem_backend.backend
    first = await backend.claim(key, FP, lease=0.1, retention=0.1)
    assert isinstance(first, Claimed)
    assert await backend.checkpoint(key, first.token, "reserved", b"")
    await idem_backend.advance(PAST_LEASE)
    fresh = await claimed(idem_backend, key, OTHER)
    assert (fresh.phase, fresh.data) == (None, None)
