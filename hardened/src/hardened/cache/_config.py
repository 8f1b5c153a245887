"""Cache settings: TTL tiers and the stampede, failure and size knobs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULT_TIERS", "CacheConfig", "Tier"]


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class Tier:
    """How long values stay fresh, and how much longer a stale one may still be served.

    ``grace`` is the stale window after ``ttl``: a reader in it gets the old
    value at once while one refresh runs (stale-while-revalidate), and keeps
    getting it while the loader fails (stale-if-error); after it, the entry
    is gone and a reader waits for the loader or gets its error.
    """

    ttl: float
    grace: float = 0.0

    def __post_init__(self) -> None:
        _positive("ttl", self.ttl)
        if not (self.grace >= 0 and math.isfinite(self.grace)):
            raise ValueError(f"grace must be a finite number of seconds >= 0, got {self.grace!r}")


#: The tiers of a telecom shop's catalog: plans and add-ons, categories, availability.
DEFAULT_TIERS: Mapping[str, Tier] = MappingProxyType(
    {
        "catalog": Tier(ttl=300.0, grace=300.0),
        "static": Tier(ttl=900.0, grace=900.0),
        "volatile": Tier(ttl=60.0, grace=60.0),
    }
)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Settings shared by every namespace of one `Cache`.

    ``lease_ttl``: how long one process may hold a key's load lease; a load
    running longer may be duplicated by another process (never stored twice
    over an invalidation). ``error_backoff``: after a load fails, the key's
    lease is held this long, so a failing source is tried once per interval
    per key across all processes, while readers get the stale value.
    ``beta``: XFetch's eagerness (1.0 as in the paper; larger refreshes
    earlier, 0 disables early refresh). ``negative_ttl``: how long a loader's
    ``None`` ("not found") is cached. ``compress_above``: payload bytes above
    which zlib is used (None: never). ``wait_initial``/``wait_max``: the
    backoff of a process waiting for another's load. ``outage_cooldown``:
    after a store failure the cache is bypassed (loads go to the source) for
    this long, so a dead Redis costs one failed call per interval, not one per
    read.
    """

    tiers: Mapping[str, Tier] = field(default_factory=lambda: DEFAULT_TIERS)
    lease_ttl: float = 10.0
    error_backoff: float = 1.0
    beta: float = 1.0
    negative_ttl: float = 5.0
    compress_above: int | None = 4096
    wait_initial: float = 0.005
    wait_max: float = 0.1
    outage_cooldown: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lease_ttl", "error_backoff", "negative_ttl", "wait_initial", "wait_max"):
            _positive(name, getattr(self, name))
        if not (self.outage_cooldown >= 0 and math.isfinite(self.outage_cooldown)):
            raise ValueError("outage_cooldown must be a finite number of seconds >= 0")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError("beta must be a finite number >= 0")
        if self.compress_above is not None and self.compress_above < 0:
            raise ValueError("compress_above must be >= 0 or None")
        object.__setattr__(self, "tiers", MappingProxyType(dict(self.tiers)))

    def tier(self, name: str) -> Tier:
        """The named tier; an unknown name is a configuration error."""
        try:
            return self.tiers[name]
        except KeyError:
            known = ", ".join(sorted(self.tiers))
            raise ValueError(f"unknown cache tier {name!r} (configured: {known})") from None
