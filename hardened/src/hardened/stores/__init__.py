"""Narrow async store contracts with an in-process and a Redis implementation.

Components ask for the capability they use (`KeyValue`, `Counters`,
`AtomicScripts`, `Leases`, `Lifecycle`; `Store` is all of them) and receive a
`MemoryStore` (one process) or a `RedisStore` (shared). Both have the same
semantics, including every script, whose Lua file has a Python twin run by
`MemoryStore`. Backend failures surface as `hardened.errors.StoreUnavailable`.
`Store` documents the key scheme, TTL and script rules.

`RedisStore` is imported on first access, so ``hardened.stores`` works
without the ``redis`` extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened._extras import lazy_exports
from hardened.stores._contracts import (
    AtomicScripts,
    Counters,
    KeyValue,
    Leases,
    Lifecycle,
    MemoryTwin,
    Script,
    ScriptArg,
    ScriptError,
    Store,
    hash_tag,
    key_part,
    tagged,
    ttl_ms,
)
from hardened.stores._scripts import FENCE_RETENTION
from hardened.stores._state import MemoryState
from hardened.stores.memory import MemoryStore

if TYPE_CHECKING:
    from hardened.stores.redis import RedisStore

from hardened.stores._fallback import FallbackStore

__all__ = [
    "FENCE_RETENTION",
    "AtomicScripts",
    "Counters",
    "FallbackStore",
    "KeyValue",
    "Leases",
    "Lifecycle",
    "MemoryState",
    "MemoryStore",
    "MemoryTwin",
    "RedisStore",
    "Script",
    "ScriptArg",
    "ScriptError",
    "Store",
    "hash_tag",
    "key_part",
    "tagged",
    "ttl_ms",
]


__getattr__ = lazy_exports(__name__, {"RedisStore": "redis"})
