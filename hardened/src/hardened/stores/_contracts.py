"""Narrow store contracts, the key scheme and the script model.

Capabilities, each a small `typing.Protocol` so a component asks only for
what it uses: `KeyValue` (bytes with TTLs), `Counters`, `AtomicScripts`,
`Leases` (fenced, expiring ownership) and `Lifecycle` (ping, close); `Store`
is all of them. `MemoryStore` and `RedisStore` implement every one with the
same semantics, proven by one contract suite run against both.

Keys
    ``tagged(namespace, *parts, suffix=...)`` builds
    ``hardened:{<namespace>:<part>:<part>}[:<suffix>]``. The braces are a Redis
    Cluster hash tag: keys that share namespace and parts hash to one slot, so
    one script may touch all of them. Parts are escaped (``%`` ``:`` ``{``
    ``}`` percent-encoded), so user data can neither break the tag nor make two
    different part tuples build the same key (tenant ``"a:b"`` + user ``"c"``
    never meets tenant ``"a"`` + user ``"b:c"``). A lease on ``K`` also uses
    ``K:fence``. `RedisStore` may prepend a deployment prefix (no braces) to
    every key it sends, including script ``KEYS[]``.

TTLs
    Seconds as floats, rounded to whole milliseconds (at least 1 ms) on both
    backends; zero, negative or non-finite TTLs are a `ValueError`. ``set``
    without a TTL clears any previous one (Redis ``SET``).

Scripts
    A `Script` is a Lua file in ``<package>/lua/<name>.lua`` plus a Python
    twin with the same semantics over `MemoryState`. Rules both follow:

    * every key the script touches is in ``KEYS[]``, all sharing a hash tag;
    * time comes from the server: Lua calls ``redis.call('TIME')``; the twin
      gets ``now`` (float seconds since the Unix epoch) from the memory
      backend, which anchors its monotonic clock to wall time once, so ``now``
      never jumps backwards and advances exactly with the TTL clock;
    * arguments arrive as bytes (``str`` UTF-8, ``int`` decimal, ``float``
      ``repr``), exactly what Lua sees in ``ARGV``; bools are refused;
    * results use Redis reply shapes: ``int`` (Lua numbers are truncated,
      so return non-integers as strings), ``bytes``, ``None`` (Lua ``nil`` or
      ``false``), ``list`` of those (a Lua array stops at its first ``nil``;
      use ``false`` for holes);
    * a deliberate refusal is ``redis.error_reply('HARDENED <message>')`` in
      Lua and ``raise ScriptError(message)`` in the twin; both surface as
      `ScriptError`;
    * the twin is a plain function (never ``async``): not awaiting is what
      makes it atomic; like Lua, writes made before an error stay made.

    A component ships ``lua/<name>.lua`` in its own package (or here) and
    builds ``Script.load(name, twin, package=__package__)`` once, at import.

Errors
    Every backend failure is `StoreUnavailable`: outages, timeouts, and data
    errors alike (``WRONGTYPE``, ``INCR`` of a non-integer, which the memory
    backend reproduces), so each component applies its one fail mode and the
    metric ``hardened_store_errors_total`` shows the cause.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Protocol, TypeAlias, cast

from hardened.stores._state import MemoryState

__all__ = [
    "KEY_ROOT",
    "SCRIPT_ERROR_PREFIX",
    "AtomicScripts",
    "Counters",
    "KeyValue",
    "Leases",
    "Lifecycle",
    "MemoryTwin",
    "Script",
    "ScriptArg",
    "ScriptError",
    "Store",
    "encode_args",
    "hash_tag",
    "key_part",
    "tagged",
    "ttl_ms",
]

KEY_ROOT = "hardened"
SCRIPT_ERROR_PREFIX = "HARDENED "

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_NEEDS_ESCAPE = re.compile(r"[%:{}]").search

ScriptArg: TypeAlias = bytes | str | int | float
#: A script's Python twin: ``(state, keys, encoded args, now) -> reply``.
MemoryTwin: TypeAlias = Callable[[MemoryState, Sequence[str], Sequence[bytes], float], Any]


def key_part(part: str) -> str:
    """``part`` escaped as `tagged` escapes parts, for key segments a component appends."""
    # Most parts need no escaping; finding that out is 5x cheaper than translating.
    return part.translate(_ESCAPES) if _NEEDS_ESCAPE(part) else part


def tagged(namespace: str, *parts: str, suffix: str = "") -> str:
    """Build a hash-tagged key: ``hardened:{namespace:part…}`` plus ``:suffix``.

    ``suffix`` is a constant chosen by the component (``"lease"``,
    ``"tat"``), not user data: it is not escaped but must not contain braces.
    """
    if not namespace:
        raise ValueError("namespace must not be empty")
    if "{" in suffix or "}" in suffix:
        raise ValueError("suffix must not contain braces")
    tag = ":".join(p.translate(_ESCAPES) for p in (namespace, *parts))
    key = f"{KEY_ROOT}:{{{tag}}}"
    return f"{key}:{suffix}" if suffix else key


def hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag of ``key`` (text inside the first ``{…}``), if any."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def ttl_ms(ttl: float) -> int:
    """Seconds to whole milliseconds (at least 1), refusing non-positive TTLs."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive finite number of seconds, got {ttl!r}")
    return max(1, round(ttl * 1000))


def _encode(value: ScriptArg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("bool is not a script argument; pass 0/1 explicitly")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float) and math.isfinite(value):
        return repr(value).encode()
    raise TypeError(f"unsupported script argument: {type(value).__name__}")


def encode_args(args: Sequence[ScriptArg]) -> Sequence[bytes]:
    """Encode script arguments exactly as Lua will see them in ``ARGV``.

    Arguments that are all bytes already (a component pre-encodes its hot
    path) come back as the same sequence, not a copy.
    """
    for a in args:
        if a.__class__ is not bytes:
            return [_encode(a) for a in args]
    return cast("Sequence[bytes]", args)


class ScriptError(RuntimeError):
    """A script refused on purpose (``redis.error_reply('HARDENED …')``).

    Not a `HardenedError`: it signals a caller bug, so it renders as a bare
    500 and is never mistaken for a store outage.
    """


@dataclass(frozen=True, slots=True)
class Script:
    """A named Lua script and its Python twin over `MemoryState`."""

    name: str
    source: str = field(repr=False)
    memory: MemoryTwin = field(repr=False, compare=False)
    sha: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)

    @classmethod
    def load(
        cls,
        name: str,
        memory: MemoryTwin,
        *,
        package: str = "hardened.stores",
    ) -> Script:
        """Load ``<package>/lua/<name>.lua`` (package data, so it ships in the wheel)."""
        source = files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
        return cls(name, source, memory)


class KeyValue(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value, or None if absent or expired."""
        ...

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """Write (replacing value and TTL); False only when ``only_if_absent`` found a key."""
        ...

    async def delete(self, *keys: str) -> int:
        """Delete keys (on Redis Cluster: of one slot); return how many existed."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds before expiry, or None if the key is absent or has no TTL."""
        ...


class Counters(Protocol):
    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` (a missing key counts from 0); ``ttl`` applies only on creation."""
        ...


class AtomicScripts(Protocol):
    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        """Run ``script`` atomically over ``keys`` with ``args``; see the module rules."""
        ...


class Leases(Protocol):
    async def acquire(self, key: str, owner: str, ttl: float) -> int | None:
        """Take the lease; a fresh, strictly greater fencing token, or None if held by another."""
        ...

    async def renew(self, key: str, owner: str, token: int, ttl: float) -> bool:
        """Reset the TTL if ``owner`` still holds the lease under ``token``."""
        ...

    async def release(self, key: str, owner: str, token: int) -> bool:
        """Free the lease if ``owner`` still holds it under ``token``."""
        ...


class Lifecycle(Protocol):
    async def ping(self) -> None:
        """Return if the backend answers, else raise `StoreUnavailable` (health checks)."""
        ...

    async def aclose(self) -> None:
        """Release connections the store owns (application shutdown)."""
        ...


class Store(KeyValue, Counters, AtomicScripts, Leases, Lifecycle, Protocol):
    """Every capability: what `MemoryStore` and `RedisStore` provide."""
