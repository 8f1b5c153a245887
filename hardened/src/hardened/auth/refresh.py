"""Refresh-token families: rotation, reuse detection, a cap and revoke-all, one round trip each.

A token is ``<user_id>.<family_id>.<secret>``; only the secret (32 random
bytes, base64url) is secret: the ids route the lookup and appear in logs,
session lists and revocation events. The store keeps ``HMAC-SHA256(hash key,
secret)`` under a server ``key`` (>= 32 bytes; hash and rotation keys are
domain-separated subkeys), so a store dump can neither mint nor check tokens,
and comparing keyed hashes in the script leaks nothing through timing.
Changing ``key`` ends every family, unless the old value is in
``previous_keys``: a token the current key does not find is looked up again
under each previous key (one more round trip, on that path only) and, found,
rotates into a child hashed under the current key, so each family moves to
the new key at its next refresh. Keep the previous key for ``ttl`` (an idle
family expires by then); reuse of a pre-rotation ancestor is still reuse.

Keys, one hash tag per user, so every script touches a single slot::

    hardened:{<namespace>:<user>}:fams           zset   family id -> creation ms (oldest first)
    hardened:{<namespace>:<user>}:fam:<family>   hash   current, parent, rotated_at, created_at,
                                                        last_used_at, tenant, meta (JSON)
    hardened:{<namespace>:<user>}:anc:<family>   list   superseded hashes, newest first
    hardened:{<namespace>:<user>}:dead:<family>  string tombstone after reuse (TTL = ttl)

Deterministic rotation: a token's child is ``HMAC(rotate key, "rotate:" + family
id + secret)``. Python computes the presented hash, the child and its hash; one
script decides. The current token rotates (the parent joins the ancestors, TTLs
slide). The parent within ``grace`` of that rotation gets the *same* child, so
racing refreshes of one token all succeed with one token and the family never
forks. An ancestor, or the parent after the grace, is reuse: the family is
deleted and a tombstone makes every later member answer ``auth.token_reused``
too; the event ``auth.refresh_reuse`` is logged (ids, never the token) and
``on_revoked`` called. Anything else (unknown family, wrong secret, expired,
evicted, logged out) is ``auth.invalid_refresh`` and changes nothing, so a
forged token naming a victim's family cannot revoke it.

Start (evicting beyond ``max_families``), revoke-all and listing read the
user's zset in the script and build those families' keys from it: they share
the declared keys' hash tag, hence the slot, which is what Redis Cluster
checks; reading the zset first would cost a round trip and race. No SCAN or
KEYS anywhere.

Access tokens belong to a family (their ``sid``): `session_active` says in one
round trip whether it is still live, and logout, reuse, eviction and
revoke-all all delete it, so every access token of an ended session fails at
once rather than at its expiry. No clock is compared, so a skew between the
app's clock (which stamps ``iat``) and the store's cannot keep a token alive
across a revoke-all. Store errors propagate as `StoreUnavailable` (the caller
picks strict 503 or a fallback). Metric: ``hardened_auth_refresh_total{outcome}``.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Literal

import structlog

from hardened.auth._errors import InvalidRefreshToken, TokenReused
from hardened.observability.metrics import counter
from hardened.stores import Script, tagged, ttl_ms

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from hardened.stores import AtomicScripts, MemoryState, MemoryTwin

__all__ = [
    "FamilyInfo",
    "InvalidRefreshToken",
    "Issued",
    "RefreshConfig",
    "RefreshTokens",
    "RevocationEvent",
    "Rotated",
    "TokenReused",
]

_OUTCOMES = counter("auth_refresh_total", "Refresh-token operations by outcome", ["outcome"])
_USER = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe in a header
_FAMILY = re.compile(r"[A-Za-z0-9_-]{22}")  # 16 random bytes, base64url
_TOKEN = re.compile(r"([!-~]{1,128})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")
_META_LIMIT = 2048
_ROTATED, _GRACE, _REUSED, _DEAD = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """Idle ``ttl`` (slid on rotation), ``grace`` (0..30 s), caps; ``ancestors`` kept per family."""

    ttl: float = 30 * 24 * 3600.0
    grace: float = 10.0
    max_families: int = 10
    namespace: str = "auth"
    ancestors: int = 64

    def __post_init__(self) -> None:
        ttl_ms(self.ttl)
        if not 0 <= self.grace <= 30:
            raise ValueError(f"grace must be between 0 and 30 seconds, got {self.grace!r}")
        if self.max_families < 1 or self.ancestors < 1 or not self.namespace:
            raise ValueError("max_families and ancestors must be >= 1, namespace non-empty")


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    family_id: str
    evicted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rotated:
    token: str
    user_id: str
    family_id: str
    tenant: str


@dataclass(frozen=True, slots=True)
class FamilyInfo:
    """A live family (a session); times are epoch seconds."""

    family_id: str
    tenant: str
    created_at: float
    last_used_at: float
    expires_at: float
    meta: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    """Families ended: one (``family_id``) or all of the user's (``family_id=None``)."""

    user_id: str
    family_id: str | None
    reason: Literal["revoked", "revoked_all", "reused", "evicted"]


def _family_keys(fams: str, family_id: bytes) -> tuple[str, str]:
    base, name = fams.removesuffix("fams"), family_id.decode()
    return f"{base}fam:{name}", f"{base}anc:{name}"


def _start(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    fams, fam = keys
    family_id, current, tenant, meta, ttl, cap = args
    now_ms = math.floor(now * 1000)
    for member, _ in state.zrange(fams, 0, -1):
        hash_key, ancestors = _family_keys(fams, member)
        if not state.exists(hash_key):
            state.zrem(fams, member)
            state.delete(ancestors)
    newest = state.zrange(fams, -1, -1)
    score = max(now_ms, int(newest[0][1]) + 1) if newest else now_ms
    stamp = b"%d" % now_ms
    fields = {b"current": current, b"tenant": tenant, b"meta": meta}
    state.hset(fam, fields | dict.fromkeys((b"rotated_at", b"created_at", b"last_used_at"), stamp))
    state.pexpire(fam, int(ttl))
    state.zadd(fams, {family_id: score})
    reply: list[Any] = [now_ms]
    for member, _ in state.zpopmin(fams, state.zcard(fams) - int(cap)):
        state.delete(*_family_keys(fams, member))
        reply.append(member)
    if state.pttl(fams) < int(ttl):
        state.pexpire(fams, int(ttl))
    return reply


def _rotate(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    fam, ancestors, dead, fams = keys
    presented, child, grace, ttl, keep, family_id = args
    names = (b"current", b"parent", b"rotated_at", b"tenant")
    current, parent, rotated_at, tenant = state.hmget(fam, *names)
    if current is None:
        return [_DEAD if state.exists(dead) else 0, None]
    now_ms, ttl_ms_ = math.floor(now * 1000), int(ttl)
    if presented == current:
        stamp = b"%d" % now_ms
        fields = {b"current": child, b"parent": presented}
        state.hset(fam, fields | {b"rotated_at": stamp, b"last_used_at": stamp})
        state.pexpire(fam, ttl_ms_)
        if parent is not None:
            state.lpush(ancestors, parent)
            state.ltrim(ancestors, 0, int(keep) - 1)
            state.pexpire(ancestors, ttl_ms_)
        if state.pttl(fams) < ttl_ms_:
            state.pexpire(fams, ttl_ms_)
        return [_ROTATED, tenant]
    grace_ms = int(grace)
    if presented == parent and grace_ms > 0 and now_ms - int(rotated_at or b"0") <= grace_ms:
        return [_GRACE, tenant]
    if presented == parent or state.lpos(ancestors, presented) is not None:
        state.delete(fam, ancestors)
        state.zrem(fams, family_id)
        state.set(dead, b"1", px=ttl_ms_)
        return [_REUSED, tenant]
    return [0, None]


def _revoke(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    live, _, _ = state.delete(keys[0]), state.delete(keys[1]), state.zrem(keys[2], args[0])
    return live


def _revoke_all(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    (fams,) = keys
    ended = 0
    for member, _ in state.zrange(fams, 0, -1):
        hash_key, ancestors = _family_keys(fams, member)
        ended += state.delete(hash_key)
        state.delete(ancestors)
    state.delete(fams)
    return ended


def _families(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    reply, now_ms = [], math.floor(now * 1000)
    for member, _ in state.zrange(keys[0], 0, -1):
        hash_key, _ancestors = _family_keys(keys[0], member)
        names = (b"created_at", b"last_used_at", b"tenant", b"meta")
        created, used, tenant, meta = state.hmget(hash_key, *names)
        left = state.pttl(hash_key)
        if created is not None and left > 0:
            reply.append([member, int(created), int(used or b"0"), now_ms + left, tenant, meta])
    return reply


def _session(state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float) -> Any:
    return int(state.exists(keys[0]))


def _load(name: str, twin: MemoryTwin) -> Script:
    # Chained joinpath: works whether hardened.auth is a regular or a namespace package.
    path = files("hardened.auth").joinpath("lua").joinpath(f"{name}.lua")
    return Script(name, path.read_text(encoding="utf-8"), twin)


START = _load("refresh_start", _start)
ROTATE = _load("refresh_rotate", _rotate)
REVOKE = _load("refresh_revoke", _revoke)
REVOKE_ALL = _load("refresh_revoke_all", _revoke_all)
FAMILIES = _load("refresh_families", _families)
SESSION = _load("refresh_session", _session)


def _log() -> Any:
    return structlog.get_logger("hardened.auth")  # per event: later configuration applies


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _user(user_id: str) -> str:
    if not isinstance(user_id, str) or _USER.fullmatch(user_id) is None:
        raise ValueError("user_id must be 1-128 printable ASCII characters without spaces")
    return user_id


def _meta(meta: Mapping[str, str] | None) -> bytes:
    items = dict(meta or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in items.items()):
        raise TypeError("meta must map str to str")
    encoded = json.dumps(items, separators=(",", ":"), sort_keys=True).encode()
    if len(encoded) > _META_LIMIT:
        raise ValueError(f"meta must encode to at most {_META_LIMIT} bytes")
    return encoded


class RefreshTokens:
    """Refresh-token families over any `AtomicScripts` store (see the module docstring)."""

    def __init__(
        self,
        store: AtomicScripts,
        *,
        key: bytes,
        previous_keys: Sequence[bytes] = (),
        config: RefreshConfig = RefreshConfig(),
        on_revoked: Callable[[RevocationEvent], Awaitable[None]] | None = None,
    ) -> None:
        if not isinstance(key, bytes) or len(key) < 32:
            raise ValueError("key must be at least 32 bytes")
        if any(not isinstance(old, bytes) or len(old) < 32 or old == key for old in previous_keys):
            raise ValueError("previous_keys must each be at least 32 bytes, none the current key")
        self._store = store
        self._config = config
        self._on_revoked = on_revoked
        self._hash_key = hmac.digest(key, b"hardened.auth.refresh/hash", "sha256")
        self._rotate_key = hmac.digest(key, b"hardened.auth.refresh/rotate", "sha256")
        self._previous_hash_keys = tuple(
            hmac.digest(old, b"hardened.auth.refresh/hash", "sha256") for old in previous_keys
        )
        self._ttl_ms = ttl_ms(config.ttl)
        self._grace_ms = round(config.grace * 1000)

    @property
    def config(self) -> RefreshConfig:
        return self._config

    def _hash(self, secret: bytes) -> bytes:
        return hmac.digest(self._hash_key, secret, "sha256")

    def _child(self, family_id: str, secret: bytes) -> bytes:
        return hmac.digest(self._rotate_key, b"rotate:" + family_id.encode() + secret, "sha256")

    def _key(self, user_id: str, suffix: str) -> str:
        return tagged(self._config.namespace, user_id, suffix=suffix)

    def _keys(self, user_id: str, family_id: str) -> tuple[str, str, str, str]:
        """Family hash, ancestors, tombstone, the user's zset: KEYS of rotate (and revoke)."""
        fam, anc, dead = (self._key(user_id, f"{k}:{family_id}") for k in ("fam", "anc", "dead"))
        return fam, anc, dead, self._key(user_id, "fams")

    async def _notify(self, event: RevocationEvent) -> None:
        if self._on_revoked is None:
            return
        try:
            await self._on_revoked(event)
        except Exception:  # noqa: BLE001 - the store already revoked; a hook must not mask it
            _log().exception("auth.revocation_hook_failed", user_id=event.user_id)

    async def start(
        self, user_id: str, *, tenant: str, meta: Mapping[str, str] | None = None
    ) -> Issued:
        """Open a family (a login); the user's oldest families beyond the cap are evicted."""
        family_id, secret = _b64(secrets.token_bytes(16)), secrets.token_bytes(32)
        keys = (self._key(_user(user_id), "fams"), self._key(user_id, f"fam:{family_id}"))
        args = (family_id, self._hash(secret), tenant, _meta(meta))
        reply = await self._store.run(START, keys, (*args, self._ttl_ms, self._config.max_families))
        evicted = tuple(member.decode() for member in reply[1:])
        _OUTCOMES.labels("issued").inc()
        for gone in evicted:
            _OUTCOMES.labels("evicted").inc()
            await self._notify(RevocationEvent(user_id, gone, "evicted"))
        return Issued(f"{user_id}.{family_id}.{_b64(secret)}", family_id, evicted)

    async def rotate(self, token: str) -> Rotated:
        """Exchange a refresh token for its child; `TokenReused` / `InvalidRefreshToken` (401)."""
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        secret = base64.urlsafe_b64decode(match.group(3) + "=") if match else b""
        if match is None or _b64(secret) != match.group(3):  # non-canonical base64 too
            _OUTCOMES.labels("invalid").inc()
            raise InvalidRefreshToken
        user_id, family_id = match.group(1), match.group(2)
        child = self._child(family_id, secret)  # always under the current key: it migrates
        rest = (self._hash(child), self._grace_ms, self._ttl_ms, self._config.ancestors, family_id)
        keys = self._keys(user_id, family_id)
        outcome, tenant = await self._store.run(ROTATE, keys, (self._hash(secret), *rest))
        for hash_key in self._previous_hash_keys:
            if outcome != 0:
                break
            presented = hmac.digest(hash_key, secret, "sha256")
            outcome, tenant = await self._store.run(ROTATE, keys, (presented, *rest))
        if outcome in (_ROTATED, _GRACE):
            _OUTCOMES.labels("rotated" if outcome == _ROTATED else "grace").inc()
            new = f"{user_id}.{family_id}.{_b64(child)}"
            return Rotated(new, user_id, family_id, tenant.decode())
        if outcome in (_REUSED, _DEAD):
            _OUTCOMES.labels("reused").inc()
            ids = {"user_id": user_id, "family_id": family_id}
            _log().warning("auth.refresh_reuse", **ids, already_revoked=outcome == _DEAD)
            if outcome == _REUSED:
                await self._notify(RevocationEvent(user_id, family_id, "reused"))
            raise TokenReused(context=ids)
        _OUTCOMES.labels("invalid").inc()
        raise InvalidRefreshToken

    async def revoke(self, user_id: str, family_id: str) -> bool:
        """End one family (a logout); False if it was not live."""
        if not isinstance(family_id, str) or _FAMILY.fullmatch(family_id) is None:
            return False
        fam, anc, _dead, fams = self._keys(_user(user_id), family_id)
        live = bool(await self._store.run(REVOKE, (fam, anc, fams), (family_id,)))
        if live:
            _OUTCOMES.labels("revoked").inc()
            await self._notify(RevocationEvent(user_id, family_id, "revoked"))
        return live

    async def revoke_all(self, user_id: str) -> int:
        """End every family of the user (and so their access tokens); how many were live."""
        ended = int(await self._store.run(REVOKE_ALL, (self._key(_user(user_id), "fams"),), ()))
        _OUTCOMES.labels("revoked_all").inc()
        _log().info("auth.refresh_revoked_all", user_id=user_id, families=ended)
        await self._notify(RevocationEvent(user_id, None, "revoked_all"))
        return ended

    async def session_active(self, user_id: str, family_id: str) -> bool:
        """Whether the session (family) an access token names is still live: one round trip."""
        if not isinstance(family_id, str) or _FAMILY.fullmatch(family_id) is None:
            return False
        fam = self._key(_user(user_id), f"fam:{family_id}")
        return bool(await self._store.run(SESSION, (fam,), ()))

    async def families(self, user_id: str) -> list[FamilyInfo]:
        """The user's live families (sessions), oldest first."""
        reply = await self._store.run(FAMILIES, (self._key(_user(user_id), "fams"),), ())
        return [
            FamilyInfo(fid.decode(), tenant.decode(), c / 1000, u / 1000, e / 1000, json.loads(m))
            for fid, c, u, e, tenant, m in reply
        ]
