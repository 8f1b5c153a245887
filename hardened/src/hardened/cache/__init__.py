"""Read-through caching with versioned tags and stampede protection across processes.

``cache = Cache(store)``; ``plans = cache.namespace("crm.plans", tier="catalog",
type_=list[Plan])``; ``await plans.get_or_load(key, loader, tags=("catalog",))``.

* Keys are tenant-scoped by construction: every key of a tenant shares the
  hash tag ``{cache:t:<tenant>}`` (one Redis Cluster slot for every script),
  and a tenant-scoped namespace used without a tenant raises
  `TenantContextMissing`. `Cache.drop_tenant` drops a tenant's whole cache
  with one INCR of its generation.
* Tags are version counters: `Namespace.invalidate` is one INCR per tag, and
  a read compares the versions an entry was loaded under with the current
  ones in the same script call. A load is stored only if its versions are
  still current; `invalidate_after_commit` bumps them after a SQLAlchemy
  commit (needs the ``postgres`` or ``sqlite`` extra).
* One load per key across processes: a shielded single-flight in process and
  a lease in the store; stale values are served while one refresh runs
  (stale-while-revalidate, stale-if-error within the tier's grace); XFetch
  refreshes early; a loader's ``None`` is cached briefly.
* A store failure opens the cache: values come from the loader, counted.

Design, metrics and failure modes: ``docs/components/cache.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardened._extras import lazy_exports
from hardened.cache._cache import Cache, Namespace
from hardened.cache._codec import Codec, CodecError
from hardened.cache._config import DEFAULT_TIERS, CacheConfig, Tier

if TYPE_CHECKING:
    from hardened.cache._commit import invalidate_after_commit

__all__ = [
    "DEFAULT_TIERS",
    "Cache",
    "CacheConfig",
    "Codec",
    "CodecError",
    "Namespace",
    "Tier",
    "invalidate_after_commit",
]

__getattr__ = lazy_exports(__name__, {"invalidate_after_commit": "_commit"})
