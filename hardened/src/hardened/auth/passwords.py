"""Password hashing: argon2id by default, bcrypt accepted and upgraded on login.

Why this shape:

* **One length rule for every scheme.** bcrypt reads at most 72 bytes (the
  ``bcrypt`` package raises past that, other implementations silently
  truncate). `PasswordPolicy.max_bytes` (<= 72, UTF-8 bytes) is enforced for
  argon2id too, so an operator who switches the scheme to bcrypt can never lock
  out users whose longer passwords were hashed by argon2. A longer password is a
  validation error on `PasswordHasher.hash` and a plain ``ok=False`` on
  `PasswordHasher.verify`: it never reaches bcrypt, is never truncated, never
  crashes. Input is not Unicode-normalised: legacy hashes were made from the
  raw bytes and would stop matching.
* **Hashing never runs on the event loop.** Each hash or verification goes to a
  thread pool owned by the hasher (``max_concurrency`` threads, so it cannot
  starve the loop's default executor used by DNS lookups and ``to_thread``)
  behind an `asyncio.Semaphore` created lazily for each running loop: a
  semaphore binds to the first loop that waits on it and would fail on any
  other (tests, several ``asyncio.run`` calls). The pool size is the hard
  bound, even when a cancelled caller leaves its thread running.
* **Timing reveals nothing about accounts.** An unknown account (``stored=None``)
  and an unreadable stored hash burn a verification against a precomputed hash
  of the configured scheme; a too-long password burns one against the stored
  hash itself (with a random placeholder, never the candidate), so it costs what
  a wrong password costs for that very account.
* **Rehash on login as a compare-and-set.** When a password verifies against a
  hash older than the policy (bcrypt, another cost, other argon2 parameters),
  ``Verification.new_hash`` carries a fresh hash. Persist it only if the row
  still holds the hash that was verified, so a concurrent password change wins::

      result = await hasher.verify(password, user.password_hash if user else None)
      if result.ok and result.new_hash:  # 0 rows updated = changed meanwhile: fine
          await db.execute(CAS, {"new": result.new_hash, "id": user.id, "old": user.password_hash})

  with ``CAS = "UPDATE users SET password_hash = :new WHERE id = :id AND
  password_hash = :old"``.

Metrics: ``hardened_auth_password_verifications_total{outcome}`` (ok, mismatch,
unknown_account, too_long, bad_format), ``hardened_auth_password_hashing_in_flight``
and ``hardened_auth_password_rehashes_total{from_scheme}``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar, get_args

from hardened._extras import missing_extra

try:
    import argon2
    import bcrypt
    import structlog
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.auth.passwords", "auth") from exc

from hardened.auth._errors import PASSWORD_FIELD, PasswordTooLong, PasswordTooShort
from hardened.errors import FieldError, ValidationFailed
from hardened.observability.metrics import counter, gauge

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "PasswordHasher",
    "PasswordPolicy",
    "PasswordTooLong",
    "PasswordTooShort",
    "Verification",
]

Scheme = Literal["argon2id", "bcrypt"]
_StoredScheme = Literal["argon2id", "argon2i", "bcrypt"]
_T = TypeVar("_T")

BCRYPT_MIN_ROUNDS = 12
BCRYPT_MAX_ROUNDS = 16
BCRYPT_MAX_BYTES = 72
_BCRYPT_HASH = re.compile(r"\$(2[aby])\$([0-9]{2})\$[./A-Za-z0-9]{53}")

_VERIFICATIONS = counter(
    "auth_password_verifications_total",
    "Password verifications by outcome (ok, mismatch, unknown_account, too_long, bad_format)",
    ["outcome"],
)
_IN_FLIGHT = gauge(
    "auth_password_hashing_in_flight", "Password hashes and verifications running in threads"
)
_REHASHES = counter(
    "auth_password_rehashes_total",
    "Hashes replaced on login because the policy changed",
    ["from_scheme"],
)


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """How passwords are hashed; defaults follow OWASP (argon2id) and the seed (bcrypt 14).

    bcrypt costs double per round: on one core 12 takes ~0.25 s, 14 ~1 s, 16 ~4 s.
    ``max_concurrency`` bounds hashing threads per hasher (4 suits 2 cores).
    """

    scheme: Scheme = "argon2id"
    memory_cost: int = 19456  # KiB (19 MiB)
    time_cost: int = 2
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16
    bcrypt_rounds: int = 14
    min_length: int = 8  # characters
    max_bytes: int = BCRYPT_MAX_BYTES  # UTF-8 bytes, for every scheme (module docstring)
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.scheme not in get_args(Scheme):
            msg = f"scheme must be one of {get_args(Scheme)}, got {self.scheme!r}"
            raise ValueError(msg)
        if not BCRYPT_MIN_ROUNDS <= self.bcrypt_rounds <= BCRYPT_MAX_ROUNDS:
            bounds = f"{BCRYPT_MIN_ROUNDS}-{BCRYPT_MAX_ROUNDS}"
            msg = f"bcrypt_rounds must be {bounds}, got {self.bcrypt_rounds}"
            raise ValueError(msg)
        if not 1 <= self.max_bytes <= BCRYPT_MAX_BYTES:
            msg = f"max_bytes must be 1-{BCRYPT_MAX_BYTES} (bcrypt's limit), got {self.max_bytes}"
            raise ValueError(msg)
        if not 1 <= self.min_length <= self.max_bytes:
            msg = f"min_length must be 1-max_bytes, got {self.min_length}"
            raise ValueError(msg)
        if self.max_concurrency < 1:
            msg = f"max_concurrency must be >= 1, got {self.max_concurrency}"
            raise ValueError(msg)
        if min(self.time_cost, self.parallelism) < 1 or self.memory_cost < 8 * self.parallelism:
            msg = "argon2 needs time_cost >= 1, parallelism >= 1, memory_cost >= 8 * parallelism"
            raise ValueError(msg)
        if self.hash_len < 16 or self.salt_len < 16:
            msg = "argon2 hash_len and salt_len must be at least 16 bytes"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of `PasswordHasher.verify`; ``new_hash`` is set only when ok and stale."""

    ok: bool
    new_hash: str | None = field(default=None, repr=False)


class _BadHash(Exception):
    """The stored value is not a hash this module can verify."""


def _scheme_of(stored: str) -> _StoredScheme | None:
    if _BCRYPT_HASH.fullmatch(stored):
        return "bcrypt"
    for name in ("argon2id", "argon2i"):
        if stored.startswith(f"${name}$"):
            try:
                argon2.extract_parameters(stored)
            except InvalidHashError:
                return None
            return "argon2id" if name == "argon2id" else "argon2i"
    return None


def _encode(password: str) -> bytes | None:
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from JSON "\ud800"
        return None


def _instrumented(fn: Callable[[], _T]) -> _T:
    _IN_FLIGHT.inc()
    try:
        return fn()
    finally:
        _IN_FLIGHT.dec()


class PasswordHasher:
    """Hash and verify passwords off the event loop; see the module docstring."""

    def __init__(self, policy: PasswordPolicy = PasswordPolicy()) -> None:
        self.policy = policy
        self._argon2 = argon2.PasswordHasher(
            time_cost=policy.time_cost,
            memory_cost=policy.memory_cost,
            parallelism=policy.parallelism,
            hash_len=policy.hash_len,
            salt_len=policy.salt_len,
            type=argon2.Type.ID,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=policy.max_concurrency, thread_name_prefix="hardened-password"
        )
        self._semaphores: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()
        self._loops_lock = threading.Lock()  # taken on the loop: never held for long
        self._dummy_lock = threading.Lock()  # taken in worker threads while hashing
        self._placeholder = secrets.token_urlsafe(32).encode()
        self._dummy: str | None = None

    def check(self, password: str) -> None:
        """Raise `PasswordTooLong`/`PasswordTooShort` if ``password`` breaks the policy."""
        self._checked(password)

    async def hash(self, password: str) -> str:
        """Check ``password`` and hash it under the policy, off the event loop."""
        encoded = self._checked(password)
        return await self._offload(partial(self._hash_sync, encoded))

    async def verify(self, password: str, stored: str | None) -> Verification:
        """Verify ``password`` against ``stored`` (None: unknown account); never raises on input."""
        if stored is None:
            await self._offload(self._burn_dummy)
            return self._outcome("unknown_account")
        scheme = _scheme_of(stored)
        encoded = _encode(password)
        ok = False
        if scheme is not None:
            try:
                if encoded is None or len(encoded) > self.policy.max_bytes:
                    # Never hashed by us, so it cannot match; the candidate itself never
                    # reaches bcrypt. Cost what a wrong password costs for this account.
                    await self._offload(partial(self._verify_sync, self._placeholder, stored))
                    return self._outcome("mismatch" if encoded is None else "too_long")
                ok = await self._offload(partial(self._verify_sync, encoded, stored))
            except _BadHash:  # recognised prefix, unusable content (e.g. bcrypt cost 99)
                scheme = None
        if scheme is None or encoded is None:  # (encoded: narrowing only, returned above)
            structlog.get_logger("hardened.auth").warning("auth.unknown_hash_format")
            await self._offload(self._burn_dummy)
            return self._outcome("bad_format")
        if not ok:
            return self._outcome("mismatch")
        new_hash = None
        if self.needs_rehash(stored):
            new_hash = await self._offload(partial(self._hash_sync, encoded))
            _REHASHES.labels(from_scheme=scheme).inc()
        _VERIFICATIONS.labels(outcome="ok").inc()
        return Verification(ok=True, new_hash=new_hash)

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` differs from what the policy would produce now.

        True for another scheme, another bcrypt cost or variant (``$2a$``/``$2y$``
        become ``$2b$``), other argon2 parameters, and for unrecognised values.
        """
        match = _BCRYPT_HASH.fullmatch(stored)
        if match is not None:
            variant, cost = match.groups()
            return (
                self.policy.scheme != "bcrypt"
                or variant != "2b"
                or int(cost) != self.policy.bcrypt_rounds
            )
        if _scheme_of(stored) is None:
            return True
        return self.policy.scheme != "argon2id" or self._argon2.check_needs_rehash(stored)

    async def warm_up(self) -> None:
        """Precompute the dummy hash (off the loop) so the first unknown login is not slower."""
        await self._offload(self._dummy_hash)

    # -- internals ---------------------------------------------------------------------------

    def _checked(self, password: str) -> bytes:
        encoded = _encode(password)
        if encoded is None:
            msg = "The password contains characters that cannot be encoded as UTF-8."
            raise ValidationFailed(
                msg,
                code="auth.password_invalid",
                errors=[FieldError(PASSWORD_FIELD, msg, "password_invalid")],
            )
        if len(encoded) > self.policy.max_bytes:
            raise PasswordTooLong(self.policy.max_bytes)
        if len(password) < self.policy.min_length:
            raise PasswordTooShort(self.policy.min_length)
        return encoded

    def _outcome(self, outcome: str) -> Verification:
        _VERIFICATIONS.labels(outcome=outcome).inc()
        return Verification(ok=False)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            semaphore = self._semaphores.get(loop)
            if semaphore is None:
                semaphore = asyncio.Semaphore(self.policy.max_concurrency)
                self._semaphores[loop] = semaphore
            return semaphore

    async def _offload(self, fn: Callable[[], _T]) -> _T:
        async with self._semaphore():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, _instrumented, fn)

    # The methods below run in the hasher's threads, never on the event loop.

    def _hash_sync(self, password: bytes) -> str:
        if self.policy.scheme == "bcrypt":
            salt = bcrypt.gensalt(rounds=self.policy.bcrypt_rounds, prefix=b"2b")
            return bcrypt.hashpw(password, salt).decode("ascii")
        return self._argon2.hash(password)

    def _verify_sync(self, password: bytes, stored: str) -> bool:
        try:
            if stored.startswith("$2"):
                return bcrypt.checkpw(password, stored.encode("ascii"))
            return self._argon2.verify(stored, password)
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError, ValueError) as exc:
            raise _BadHash from exc

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self._hash_sync(secrets.token_urlsafe(32).encode())
            return self._dummy

    def _burn_dummy(self) -> None:
        self._verify_sync(self._placeholder, self._dummy_hash())
