"""The interval cap's script (``lua/outbound_cap.lua``) and its Python twin.

One key per dependency holds its TAT (theoretical arrival time) in server
microseconds. The twin is the Lua line by line in integers, so `MemoryStore`
and Redis give the same replies and leave the same key and TTL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened.stores import Script

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.stores import MemoryState

__all__ = ["RESERVE"]

_US = 1_000_000


def _reserve(
    state: MemoryState, keys: Sequence[str], args: Sequence[bytes], now: float
) -> list[int]:
    """Twin of ``outbound_cap.lua``: ``[1, wait, start]`` or ``[0, retry, now]`` (microseconds)."""
    now_us = round(now * _US)
    interval, tau, longest = int(args[0]), int(args[1]), int(args[2])
    raw = state.get(keys[0])
    tat = now_us if raw is None else max(int(raw), now_us)
    start = max(now_us, tat - tau)
    wait = start - now_us
    if wait > longest:
        return [0, wait - longest, now_us]
    new = tat + interval
    state.set(keys[0], b"%d" % new, px=(new - now_us + 999) // 1000 + 1)
    return [1, wait, start]


RESERVE = Script.load("outbound_cap", _reserve, package=__package__)
