"""hardened.auth.passwords: argon2id/bcrypt hashing, rehash, limits, timing and concurrency."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import argon2
import bcrypt
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from hardened.auth.passwords import (
    PasswordHasher,
    PasswordPolicy,
    PasswordTooLong,
    PasswordTooShort,
    Verification,
)
from hardened.errors import ValidationFailed, problem_for

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

# Cheap argon2 parameters for most tests; one test and the storm use the OWASP defaults.
FAST = PasswordPolicy(memory_cost=1024, time_cost=1)
PASSWORD = "correct horse battery staple"
_T = TypeVar("_T")


def _count(outcome: str) -> float:
    labels = {"outcome": outcome}
    return REGISTRY.get_sample_value("hardened_auth_password_verifications_total", labels) or 0.0


def _rehashes(from_scheme: str) -> float:
    labels = {"from_scheme": from_scheme}
    return REGISTRY.get_sample_value("hardened_auth_password_rehashes_total", labels) or 0.0


def _in_flight() -> float:
    return REGISTRY.get_sample_value("hardened_auth_password_hashing_in_flight") or 0.0


def _bcrypt(password: str, rounds: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def _spy_verify(hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, str]]:
    calls: list[tuple[bytes, str]] = []
    real: Callable[[bytes, str], bool] = hasher._verify_sync

    def spy(password: bytes, stored: str) -> bool:
        calls.append((password, stored))
        return real(password, stored)

    monkeypatch.setattr(hasher, "_verify_sync", spy)
    return calls


async def test_argon2id_round_trip() -> None:
    """An argon2id hash verifies the right password, rejects a wrong one and needs no rehash."""
    hasher = PasswordHasher(FAST)
    stored = await hasher.hash(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert await hasher.verify(PASSWORD, stored) == Verification(ok=True, new_hash=None)
    assert await hasher.verify(PASSWORD + "!", stored) == Verification(ok=False)
    assert not hasher.needs_rehash(stored)


async def test_owasp_defaults_round_trip() -> None:
    """The default policy hashes with the OWASP argon2id parameters and verifies."""
    policy = PasswordPolicy()
    assert (policy.memory_cost, policy.time_cost, policy.parallelism) == (19456, 2, 1)
    assert (policy.hash_len, policy.salt_len, policy.bcrypt_rounds) == (32, 16, 14)
    hasher = PasswordHasher()
    stored = await hasher.hash(PASSWORD)
    assert argon2.extract_parameters(stored) == argon2.Parameters(
        type=argon2.Type.ID,
        version=19,
        salt_len=16,
        hash_len=32,
        time_cost=2,
        memory_cost=19456,
        parallelism=1,
    )
    assert (await hasher.verify(PASSWORD, stored)).ok


async def test_bcrypt_12_upgrades_to_argon2id_by_default() -> None:
    """A legacy bcrypt-12 hash verifies and yields an argon2id new_hash under the default scheme."""
    hasher = PasswordHasher(FAST)
    legacy = _bcrypt(PASSWORD, 12)
    before = _rehashes("bcrypt")
    result = await hasher.verify(PASSWORD, legacy)
    assert result.ok
    assert result.new_hash is not None
    assert result.new_hash.startswith("$argon2id$")
    assert _rehashes("bcrypt") == before + 1
    assert await hasher.verify(PASSWORD, result.new_hash) == Verification(ok=True)
    assert await hasher.verify("wrong password", legacy) == Verification(ok=False)


async def test_bcrypt_12_upgrades_to_bcrypt_14_when_configured() -> None:
    """Under scheme=bcrypt with 14 rounds, a bcrypt-12 hash is rehashed at cost 14."""
    hasher = PasswordHasher(PasswordPolicy(scheme="bcrypt", bcrypt_rounds=14))
    result = await hasher.verify(PASSWORD, _bcrypt(PASSWORD, 12))
    assert result.ok
    assert result.new_hash is not None
    assert result.new_hash.startswith("$2b$14$")
    assert not hasher.needs_rehash(result.new_hash)
    assert await hasher.verify(PASSWORD, result.new_hash) == Verification(ok=True)


async def test_argon2_parameter_change_and_argon2i_trigger_rehash() -> None:
    """Other argon2 parameters or the argon2i variant yield a fresh hash under the policy."""
    old = await PasswordHasher(FAST).hash(PASSWORD)
    hasher = PasswordHasher(PasswordPolicy(memory_cost=2048, time_cost=1))
    result = await hasher.verify(PASSWORD, old)
    assert result.new_hash is not None
    assert result.new_hash.startswith("$argon2id$v=19$m=2048,t=1,p=1$")
    argon2i = argon2.PasswordHasher(memory_cost=1024, time_cost=1, type=argon2.Type.I)
    before = _rehashes("argon2i")
    result = await hasher.verify(PASSWORD, argon2i.hash(PASSWORD))
    assert result.ok
    assert result.new_hash is not None
    assert result.new_hash.startswith("$argon2id$")
    assert _rehashes("argon2i") == before + 1


async def test_mismatch_never_yields_a_new_hash() -> None:
    """A wrong password against a stale hash gives ok=False and no new hash."""
    hasher = PasswordHasher(FAST)
    before = _count("mismatch")
    assert await hasher.verify("not the password", _bcrypt(PASSWORD, 4)) == Verification(ok=False)
    assert _count("mismatch") == before + 1


def test_needs_rehash_rules() -> None:
    """needs_rehash compares scheme, bcrypt cost and variant, and treats garbage as stale."""
    legacy = _bcrypt(PASSWORD, 4)
    at_14 = "$2b$14$" + legacy[7:]
    bcrypt_14 = PasswordHasher(PasswordPolicy(scheme="bcrypt", bcrypt_rounds=14))
    assert not bcrypt_14.needs_rehash(at_14)
    assert bcrypt_14.needs_rehash("$2a$14$" + legacy[7:])
    assert bcrypt_14.needs_rehash(legacy)
    assert PasswordHasher(FAST).needs_rehash(at_14)
    assert PasswordHasher(FAST).needs_rehash("not a hash")
    assert bcrypt_14.needs_rehash(argon2.PasswordHasher(memory_cost=1024, time_cost=1).hash("x"))


async def test_100_byte_password_rejected_on_hash_without_echo() -> None:
    """hash() of a 100-byte password raises PasswordTooLong, a 422 problem not echoing it."""
    secret = "S3cret-" + "x" * 93
    assert len(secret.encode()) == 100
    with pytest.raises(PasswordTooLong) as caught:
        await PasswordHasher(FAST).hash(secret)
    problem = problem_for(caught.value)
    assert (problem.status, problem.code) == (422, "auth.password_too_long")
    body = problem.as_dict()
    assert body["errors"] == [
        {
            "loc": ["body", "password"],
            "msg": "The password must be at most 72 bytes when encoded as UTF-8.",
            "type": "password_too_long",
        }
    ]
    assert b"S3cret" not in problem.body()
    assert "S3cret" not in repr(caught.value.context)


async def test_100_byte_password_is_refused_by_verify_without_reaching_bcrypt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify() of a 100-byte password against bcrypt is ok=False, never truncated nor raised."""
    secret = "y" * 100
    stored = _bcrypt(secret[:72], 4)  # what a truncating legacy system would have stored
    hasher = PasswordHasher(FAST)
    seen: list[bytes] = []
    real_checkpw = bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        seen.append(password)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", checkpw)
    before = _count("too_long")
    assert await hasher.verify(secret, stored) == Verification(ok=False)
    assert _count("too_long") == before + 1
    assert len(seen) == 1, "a timing burn against the stored hash still ran"
    assert secret.encode() not in seen
    assert secret[:72].encode() not in seen
    assert (await hasher.verify(secret[:72], stored)).ok, "only the 72-byte prefix matches"


@pytest.mark.parametrize("scheme", ["argon2id", "bcrypt"])
async def test_72_byte_boundary(scheme: str) -> None:
    """Exactly 72 bytes hashes and verifies under both schemes; 73 bytes is refused."""
    policy = PasswordPolicy(
        scheme="bcrypt" if scheme == "bcrypt" else "argon2id",
        bcrypt_rounds=12,
        memory_cost=1024,
        time_cost=1,
    )
    hasher = PasswordHasher(policy)
    at_limit = "a" * 71 + "b"
    stored = await hasher.hash(at_limit)
    assert (await hasher.verify(at_limit, stored)).ok
    assert not (await hasher.verify("a" * 71 + "c", stored)).ok
    with pytest.raises(PasswordTooLong):
        hasher.check("a" * 73)


@pytest.mark.parametrize(
    ("password", "error"),
    [
        ("é" * 36, None),  # 36 characters, 72 bytes
        ("é" * 37, PasswordTooLong),  # 37 characters, 74 bytes
        ("😀" * 18, None),  # 72 bytes
        ("😀" * 19, PasswordTooLong),  # 19 characters, 76 bytes
        ("😀" * 7, PasswordTooShort),  # 28 bytes but only 7 characters
        ("😀" * 8, None),
        ("short", PasswordTooShort),
    ],
)
def test_length_counts_bytes_for_max_and_characters_for_min(
    password: str, error: type[Exception] | None
) -> None:
    """The maximum is UTF-8 bytes, the minimum is characters."""
    hasher = PasswordHasher(FAST)
    if error is None:
        hasher.check(password)
    else:
        with pytest.raises(error):
            hasher.check(password)


async def test_too_short_is_a_422_problem() -> None:
    """A too-short password is a 422 auth.password_too_short on the password field."""
    with pytest.raises(PasswordTooShort) as caught:
        await PasswordHasher(FAST).hash("abc")
    problem = problem_for(caught.value)
    assert (problem.status, problem.code) == (422, "auth.password_too_short")
    assert problem.as_dict()["errors"][0]["loc"] == ["body", "password"]
    assert b"abc" not in problem.body()


async def test_unencodable_password_is_invalid_not_a_crash() -> None:
    """A lone surrogate is a validation error on hash and ok=False on verify."""
    hasher = PasswordHasher(FAST)
    with pytest.raises(ValidationFailed) as caught:
        await hasher.hash("abcdefgh\ud800")
    assert caught.value.code == "auth.password_invalid"
    stored = await hasher.hash(PASSWORD)
    assert await hasher.verify("abcdefgh\ud800", stored) == Verification(ok=False)


async def test_unknown_account_runs_a_dummy_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    """stored=None gives ok=False after a real verification against a policy-shaped dummy hash."""
    hasher = PasswordHasher(FAST)
    calls = _spy_verify(hasher, monkeypatch)
    before = _count("unknown_account")
    assert await hasher.verify(PASSWORD, None) == Verification(ok=False)
    assert await hasher.verify(PASSWORD, None) == Verification(ok=False)
    assert _count("unknown_account") == before + 2
    assert len(calls) == 2
    assert calls[0][1] == calls[1][1], "the dummy hash is computed once"
    assert calls[0][1].startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert PASSWORD.encode() not in {password for password, _ in calls}


async def test_unknown_account_dummy_follows_the_bcrypt_scheme(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under scheme=bcrypt the dummy hash is bcrypt at the configured cost."""
    hasher = PasswordHasher(PasswordPolicy(scheme="bcrypt", bcrypt_rounds=12))
    await hasher.warm_up()
    calls = _spy_verify(hasher, monkeypatch)
    assert await hasher.verify(PASSWORD, None) == Verification(ok=False)
    assert [stored[:7] for _, stored in calls] == ["$2b$12$"]


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext-password",
        "$2b$12$tooshort",
        "$2x$12$" + "a" * 53,
        "$2b$99$" + "a" * 53,
        "$argon2d$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=abc,t=1,p=1$c2FsdA$aGFzaA",
        "$argon2id$v=19$m=1024,t=1,p=1$!!!!$????",
    ],
)
async def test_garbled_hash_is_ok_false_with_a_warning(
    stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unrecognised stored value gives ok=False and logs auth.unknown_hash_format, no raise."""
    hasher = PasswordHasher(FAST)
    calls = _spy_verify(hasher, monkeypatch)
    before = _count("bad_format")
    with capture_logs() as logs:
        assert await hasher.verify(PASSWORD, stored) == Verification(ok=False)
    assert _count("bad_format") == before + 1
    assert [(e["event"], e["log_level"]) for e in logs] == [("auth.unknown_hash_format", "warning")]
    assert PASSWORD not in repr(logs)
    assert calls, "a dummy verification burned the time"


@pytest.mark.parametrize("rounds", [4, 11, 17, 31])
def test_bcrypt_rounds_outside_12_to_16_are_refused(rounds: int) -> None:
    """PasswordPolicy refuses bcrypt rounds outside 12-16."""
    with pytest.raises(ValueError, match="bcrypt_rounds"):
        PasswordPolicy(bcrypt_rounds=rounds)


@pytest.mark.parametrize(
    "changes",
    [
        {"bcrypt_rounds": 12},
        {"bcrypt_rounds": 16},
        {"scheme": "bcrypt"},
    ],
)
def test_valid_policies_are_accepted(changes: dict[str, object]) -> None:
    """Policies at the bounds are accepted."""
    PasswordPolicy(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"scheme": "md5"},
        {"max_bytes": 73},
        {"max_bytes": 0},
        {"min_length": 0},
        {"max_concurrency": 0},
        {"memory_cost": 4},
        {"salt_len": 8},
    ],
)
def test_invalid_policies_are_refused(changes: dict[str, object]) -> None:
    """max_bytes above 72, an unknown scheme and degenerate parameters are refused."""
    with pytest.raises(ValueError, match=r"."):
        PasswordPolicy(**changes)  # type: ignore[arg-type]


def test_verification_repr_hides_the_new_hash() -> None:
    """A Verification logged by accident does not print the hash."""
    assert "argon2" not in repr(Verification(ok=True, new_hash="$argon2id$secret"))


async def test_hashing_runs_off_the_event_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash and verify run in the hasher's worker threads, not on the loop's thread."""
    hasher = PasswordHasher(FAST)
    threads: list[str] = []
    real_hash = hasher._hash_sync

    def spy(password: bytes) -> str:
        threads.append(threading.current_thread().name)
        return real_hash(password)

    monkeypatch.setattr(hasher, "_hash_sync", spy)
    await hasher.hash(PASSWORD)
    assert threads
    assert threads[0].startswith("hardened-password")
    assert threads[0] != threading.current_thread().name


async def test_concurrency_bound_holds_under_40_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """40 concurrent hash() calls with max_concurrency=3 never run more than 3 at once."""
    hasher = PasswordHasher(PasswordPolicy(memory_cost=1024, time_cost=1, max_concurrency=3))
    real_hash = hasher._hash_sync
    lock = threading.Lock()
    running = 0
    most = 0
    gauge_most = 0.0
    baseline = _in_flight()

    def spy(password: bytes) -> str:
        nonlocal running, most, gauge_most
        with lock:
            running += 1
            most = max(most, running)
            gauge_most = max(gauge_most, _in_flight() - baseline)
        try:
            time.sleep(0.01)
            return real_hash(password)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(hasher, "_hash_sync", spy)
    results = await asyncio.gather(*(hasher.hash(f"{PASSWORD} {i}") for i in range(40)))
    assert len(set(results)) == 40
    assert most == 3
    assert 1 <= gauge_most <= 3
    assert _in_flight() == baseline


def test_one_hasher_serves_several_event_loops() -> None:
    """The semaphore is per running loop, so a hasher survives successive asyncio.run calls."""
    hasher = PasswordHasher(PasswordPolicy(memory_cost=1024, time_cost=1, max_concurrency=1))

    async def contended() -> list[str]:
        return list(await asyncio.gather(*(hasher.hash(PASSWORD) for _ in range(3))))

    assert len(asyncio.run(contended())) == 3
    assert len(asyncio.run(contended())) == 3


class _RecordingArgon2:
    """The hasher's argon2 dependency, wrapped: who runs each hash, how many at once, loop ticks.

    A worker finishing a hash waits until the event loop has ticked since that
    hash began, while its caller still awaits it: a free loop ticks every
    millisecond, a loop blocked until the hash returns never does (``loop_stuck``
    ends the wait then, so a broken hasher fails the test instead of hanging it).
    """

    def __init__(self, real: argon2.PasswordHasher) -> None:
        self._real = real
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._ticked = threading.Condition()
        self.ticks = 0
        self.threads: list[threading.Thread] = []
        self.running = 0
        self.most = 0
        self.ticked_in_flight = 0
        self.loop_stuck = False

    def tick(self) -> None:
        with self._ticked:
            self.ticks += 1
            self._ticked.notify_all()

    def hash(self, password: bytes) -> str:
        return self._recorded(partial(self._real.hash, password))

    def verify(self, stored: str, password: bytes) -> bool:
        return self._recorded(partial(self._real.verify, stored, password))

    def check_needs_rehash(self, stored: str) -> bool:  # parses parameters, hashes nothing
        return self._real.check_needs_rehash(stored)

    def _recorded(self, fn: Callable[[], _T]) -> _T:
        with self._lock:
            self.threads.append(threading.current_thread())
            self.running += 1
            self.most = max(self.most, self.running)
        with self._ticked:
            start = self.ticks
        try:
            return fn()
        finally:
            if threading.get_ident() != self._loop_thread:
                self._await_a_tick(start)
            with self._lock:
                self.running -= 1

    def _await_a_tick(self, start: int) -> None:
        with self._ticked:
            if not self.loop_stuck and not self._ticked.wait_for(
                lambda: self.ticks > start, timeout=10
            ):
                self.loop_stuck = True  # only a blocked loop gets here: stop waiting on it
            if self.ticks > start:
                self.ticked_in_flight += 1


async def test_verify_storm_never_hashes_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """200 concurrent verifications hash in the hasher's 2 threads while the loop keeps ticking."""
    hasher = PasswordHasher(PasswordPolicy(max_concurrency=2))
    stored = await hasher.hash(PASSWORD)
    await hasher.warm_up()
    recorder = _RecordingArgon2(hasher._argon2)
    monkeypatch.setattr(hasher, "_argon2", recorder)
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            recorder.tick()
            await asyncio.sleep(0.001)

    candidates = [(PASSWORD, stored), ("wrong password", stored), (PASSWORD, None)]
    ticking = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(*(hasher.verify(*candidates[i % 3]) for i in range(200)))
    finally:
        done.set()
        await ticking
    assert sum(r.ok for r in results) == 67
    assert len(recorder.threads) == 200, "one argon2 verification per call"
    on_loop = sum(t is threading.current_thread() for t in recorder.threads)
    assert on_loop == 0, "verifications ran on the event loop's thread"
    assert {t.name.split("_")[0] for t in recorder.threads} == {"hardened-password"}
    assert not recorder.loop_stuck, "the loop stood still while a hash was in flight"
    assert recorder.ticked_in_flight == 200
    assert 1 <= recorder.most <= 2
