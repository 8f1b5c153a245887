"""`Cache` and `Namespace`: read-through caching that never stores a stale load.

A read is one script call (``cache_read``) returning the entry and the current
versions of the scope's generation and the entry's tags. What happens next:

* fresh, versions unchanged: a hit (XFetch may start one background refresh);
* stale (past its TTL, inside the grace window): served at once; the caller
  that got the key's lease refreshes it in the background;
* missing or invalidated: one load per process (a shielded single-flight task
  joined by every local caller with the same versions) and one across
  processes (the lease; other processes poll with backoff, served stale if
  any); the result is written only if the versions it began from are still
  current (``cache_write``), so a value computed across an invalidation is
  returned to its callers but never stored.

Store failures open the cache: the loader runs (still one per process) and
the cache is bypassed for ``outage_cooldown``. Invalidations that fail are
kept and re-sent before this process reads from the store again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import random
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

import structlog

from hardened._context import tenant_id_var
from hardened.cache._codec import Codec, CodecError
from hardened.cache._config import CacheConfig, Tier
from hardened.cache._scripts import BUMP, READ, RELEASE, WRITE
from hardened.errors import StoreUnavailable, TenantContextMissing
from hardened.observability.metrics import fast_counter, histogram
from hardened.stores import key_part, tagged, ttl_ms

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable, Sequence

    from hardened.stores import AtomicScripts

__all__ = ["Cache", "Namespace"]

T = TypeVar("T")
P = ParamSpec("P")

_log = structlog.get_logger("hardened.cache")
_LOOKUPS = fast_counter(
    "cache_lookups_total",
    "Cache reads by result: hit, stale (served while refreshing), miss, bypass (store down)",
    ["namespace", "result"],
)
_EVENTS = fast_counter(
    "cache_events_total",
    "Cache events: early_refresh, lease_wait, load_error, not_stored, store_error, decode_error",
    ["namespace", "event"],
)
_LOAD_SECONDS = histogram("cache_load_seconds", "Time the loader took", ["namespace"])
_HIT = 1
_STALE = 2
_MAX_SCOPES = 4096
_BYPASSED = b""  # the versions of a load run while the store is down (real ones never are empty)


class _Flight:
    """One shared load: a task every local caller awaits through a shield.

    A caller's cancellation leaves the others waiting; the task is cancelled
    only when its last waiter leaves (never if it is a background refresh),
    and is then forgotten at once, so a caller arriving later starts afresh
    instead of joining a cancelled load. A caller reading the store while a
    flight for its key exists counts as a waiter already.
    """

    __slots__ = ("background", "entry", "registry", "task", "versions", "waiters")

    def __init__(
        self,
        task: asyncio.Task[Any],
        versions: bytes | None,
        registry: dict[str, _Flight],
        entry: str,
        *,
        background: bool,
    ) -> None:
        self.task = task
        self.versions = versions
        self.registry = registry
        self.entry = entry
        self.background = background
        self.waiters = 0

    def leave(self) -> None:
        self.waiters -= 1
        if not self.waiters and not self.background and not self.task.done():
            self.task.cancel()
            self.forget()

    def forget(self) -> None:
        if self.registry.get(self.entry) is self:
            del self.registry[self.entry]

    async def join(self) -> Any:
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        finally:
            self.leave()


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Every waiter may have left; read the outcome so asyncio does not warn about it.
    if not task.cancelled():
        task.exception()


class _Scope:
    """The keys of one namespace in one tenant (or of a global namespace)."""

    __slots__ = ("base", "entries", "gen", "leases", "memo")

    def __init__(self, base: str, namespace: str) -> None:
        ns = key_part(namespace)
        self.base = base
        self.gen = f"{base}:gen"
        self.entries = f"{base}:e:{ns}:"
        self.leases = f"{base}:l:{ns}:"
        self.memo: dict[tuple[str, ...], tuple[str, ...]] = {}

    def counters(self, tags: tuple[str, ...]) -> tuple[str, ...]:
        found = self.memo.get(tags)
        if found is None:
            if len(self.memo) >= _MAX_SCOPES:
                self.memo.clear()
            found = (self.gen, *(f"{self.base}:tag:{key_part(t)}" for t in dict.fromkeys(tags)))
            self.memo[tags] = found
        return found


class Cache:
    """Namespaces over one store, sharing their in-flight loads and outage state.

    ``store`` is any `AtomicScripts` (`RedisStore` across processes,
    `MemoryStore` in one); give the cache a store of its own with a short
    ``timeout`` (``RedisStore.from_url(url, timeout=0.1)``) so a hung Redis
    costs that long once per ``outage_cooldown``.
    """

    def __init__(self, store: AtomicScripts, config: CacheConfig | None = None) -> None:
        self.store = store
        self.config = config or CacheConfig()
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}".encode()
        self._owner = owner
        lease = b"%d" % ttl_ms(self.config.lease_ttl)
        self._read_lease = (b"1", owner, lease)
        self._read_only = (b"0", owner, lease)
        self._read_refresh = (b"2", owner, lease)
        self._failed_lease = (owner, b"%d" % ttl_ms(self.config.error_backoff))
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bypass_until = 0.0
        self._pending: dict[str, None] = {}  # counters whose bump failed, re-sent first

    def namespace(
        self,
        name: str,
        *,
        tier: str | None = None,
        ttl: float | None = None,
        grace: float | None = None,
        tenant_scoped: bool = True,
        type_: Any = None,
    ) -> Namespace[Any]:
        """A namespace of keys with one TTL rule and one value type.

        TTL from ``tier`` (a name in the config's tiers) or ``ttl``/``grace``
        given here; ``tenant_scoped`` namespaces key every entry by the tenant
        in context (or passed as ``tenant=``) and refuse to run without one.
        """
        if (tier is None) == (ttl is None):
            raise ValueError("give a namespace either tier= or ttl=")
        rule = self.config.tier(tier) if tier is not None else Tier(cast("float", ttl))
        if grace is not None:
            rule = Tier(rule.ttl, grace)
        return Namespace(self, name, rule, tenant_scoped=tenant_scoped, type_=type_)

    async def drop_tenant(self, tenant: uuid.UUID | str) -> None:
        """Invalidate every entry of ``tenant`` in every tenant-scoped namespace: one INCR."""
        await self._bump((f"{tagged('cache', 't', str(tenant))}:gen",))

    async def wait_idle(self) -> None:
        """Wait for every load and refresh running now, and those they start, to finish."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel background refreshes and wait for the lease releases they start."""
        for task in list(self._tasks):
            task.cancel()
        await self.wait_idle()

    # -- internals shared by the namespaces --------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)
        return task

    def _fly(
        self, entry: str, coro: Awaitable[Any], versions: bytes | None, *, background: bool
    ) -> _Flight:
        """Run ``coro`` as the shared load of ``entry`` (replacing an older one in the map)."""
        task = self._spawn(coro)
        flight = _Flight(task, versions, self._flights, entry, background=background)
        self._flights[entry] = flight
        task.add_done_callback(lambda _: flight.forget())
        return flight

    def _outage(self, events: Callable[[str], None], exc: StoreUnavailable) -> None:
        events("store_error")
        if self.config.outage_cooldown:
            self._bypass_until = time.monotonic() + self.config.outage_cooldown
        _log.warning("cache.store_unavailable", **exc.context)

    def _bypassed(self) -> bool:
        until = self._bypass_until
        return bool(until) and time.monotonic() < until

    async def _bump(self, counters: Sequence[str]) -> None:
        try:
            await asyncio.gather(*(self.store.run(BUMP, (k,), ()) for k in counters))
        except StoreUnavailable:
            # Kept and re-sent before this process reads from the store again.
            self._pending.update(dict.fromkeys(counters))
            raise

    async def _flush_pending(self) -> None:
        pending = list(self._pending)
        await asyncio.gather(*(self.store.run(BUMP, (k,), ()) for k in pending))
        for key in pending:
            self._pending.pop(key, None)

    def _release_soon(self, lease: str) -> None:
        """Free a cancelled load's lease from a task of its own (the canceller may not wait)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the loop is gone: the lease expires on its own
            return
        self._spawn(self._release(lease, failed=False))

    async def _release(self, lease: str, *, failed: bool) -> None:
        args = self._failed_lease if failed else (self._owner, b"0")
        with contextlib.suppress(StoreUnavailable):  # else the lease expires on its own
            await self.store.run(RELEASE, (lease,), args)


class Namespace(Generic[T]):
    """Cached values of one kind: ``get_or_load``, the ``cached`` decorator, ``invalidate``."""

    def __init__(
        self, cache: Cache, name: str, rule: Tier, *, tenant_scoped: bool, type_: Any
    ) -> None:
        if not name:
            raise ValueError("a namespace needs a name")
        self.name = name
        self.rule = rule
        self.tenant_scoped = tenant_scoped
        self._cache = cache
        self._codec: Codec[T] = Codec(type_, compress_above=cache.config.compress_above)
        self._scopes: dict[uuid.UUID | str, _Scope] = {}
        self._global = None if tenant_scoped else _Scope(tagged("cache", "g", name), name)
        self._count_hit = _LOOKUPS.incrementer(name, "hit")
        self._count_stale = _LOOKUPS.incrementer(name, "stale")
        self._count_miss = _LOOKUPS.incrementer(name, "miss")
        self._count_bypass = _LOOKUPS.incrementer(name, "bypass")
        self._seconds = _LOAD_SECONDS.labels(name)
        self._beta = cache.config.beta

    @property
    def cache(self) -> Cache:
        """The cache this namespace belongs to."""
        return self._cache

    def _event(self, event: str) -> None:
        _EVENTS.incrementer(self.name, event)()

    def tenant(self) -> uuid.UUID:
        """The tenant in context; none is `TenantContextMissing` (a server bug)."""
        tenant = tenant_id_var.get()
        if tenant is None:
            raise TenantContextMissing(
                context={"reason": "tenant-scoped cache used without a tenant", "cache": self.name}
            )
        return tenant

    def _scope(self, tenant: uuid.UUID | str | None) -> _Scope:
        if self._global is not None:
            return self._global
        tid = self.tenant() if tenant is None else tenant
        scope = self._scopes.get(tid)  # keyed by the value: str() only for a new scope
        if scope is None:
            if len(self._scopes) >= _MAX_SCOPES:
                self._scopes.clear()
            scope = self._scopes[tid] = _Scope(tagged("cache", "t", str(tid)), self.name)
        return scope

    # -- reading -----------------------------------------------------------

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        *,
        tags: Sequence[str] = (),
        ttl: float | None = None,
        tenant: uuid.UUID | str | None = None,
    ) -> T:
        """The cached value of ``key``, loading it with ``loader`` when missing or invalid.

        ``tags`` name what the value depends on (``invalidate(tag)`` makes it
        a miss); ``ttl`` overrides the namespace's. A loader's ``None`` is
        cached for the config's ``negative_ttl``. Loader errors reach every
        caller waiting for that load and are not cached.
        """
        cache = self._cache
        scope = self._scope(tenant)
        part = key_part(key)
        entry = scope.entries + part
        keys = (entry, scope.leases + part, *scope.counters(tuple(tags)))
        if cache._bypass_until and cache._bypassed():
            return cast("T", await self._fail_open(entry, loader))
        flight = cache._flights.get(entry)
        if flight is None:
            return await self._read_through(entry, keys, loader, ttl, busy=False)
        flight.waiters += 1  # interested: the load is not cancelled while this caller reads
        try:
            return await self._read_through(entry, keys, loader, ttl, busy=True)
        finally:
            flight.leave()

    async def _read_through(
        self,
        entry: str,
        keys: tuple[str, ...],
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        *,
        busy: bool,  # this process loads the key already: do not ask for the lease
    ) -> T:
        cache = self._cache
        try:
            if cache._pending:
                await cache._flush_pending()
            reply = await cache.store.run(
                READ, keys, cache._read_only if busy else cache._read_lease
            )
        except StoreUnavailable as exc:
            cache._outage(self._event, exc)
            return cast("T", await self._fail_open(entry, loader))
        if reply[0] == _HIT and len(reply) == 4:
            try:
                value = self._codec.loads(reply[1])
            except CodecError:
                self._event("decode_error")  # unreadable (a changed type): load it anew
                try:
                    reply = await cache.store.run(READ, keys, cache._read_refresh)
                except StoreUnavailable as exc:
                    cache._outage(self._event, exc)
                    return cast("T", await self._fail_open(entry, loader))
            else:
                self._count_hit()
                took = reply[3]
                # XFetch: refresh early with a probability rising as expiry nears.
                if (
                    took
                    and self._beta
                    and took * self._beta * -math.log(1.0 - random.random()) >= reply[2]  # noqa: S311
                    and entry not in cache._flights
                ):
                    self._event("early_refresh")
                    self._start(keys, None, loader, ttl, held=False, background=True)
                return value
        return cast("T", await self._miss(reply, keys, loader, ttl))

    async def _miss(
        self,
        reply: list[Any],
        keys: tuple[str, ...],
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
    ) -> Any:
        status, payload, versions, held = reply[0], reply[1], reply[4], reply[5]
        if status == _STALE:
            try:
                value = self._codec.loads(payload)
            except CodecError:
                self._event("decode_error")
            else:
                self._count_stale()
                if held and keys[0] not in self._cache._flights:
                    self._start(keys, versions, loader, ttl, held=True, background=True)
                return value
        self._count_miss()
        flight = self._cache._flights.get(keys[0])  # one may have started during the read
        if flight is not None and flight.versions == versions:
            return await flight.join()
        return await self._start(
            keys, versions, loader, ttl, held=bool(held), background=False
        ).join()

    def _start(
        self,
        keys: tuple[str, ...],
        versions: bytes | None,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        *,
        held: bool,
        background: bool,
    ) -> _Flight:
        coro = self._obtain(keys, versions, loader, ttl, held=held)
        return self._cache._fly(keys[0], coro, versions, background=background)

    async def _obtain(
        self,
        keys: tuple[str, ...],
        versions: bytes | None,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        *,
        held: bool,
    ) -> T:
        """Load under the lease, or wait for the process that holds it."""
        cache = self._cache
        config = cache.config
        delay = config.wait_initial
        if versions is None:  # an early refresh: take the lease even though the value is fresh
            try:
                reply = await cache.store.run(READ, keys, cache._read_refresh)
            except StoreUnavailable as exc:
                cache._outage(self._event, exc)
                return cast("T", None)
            if not reply[5]:
                return cast("T", None)
            versions = reply[4]
            held = True
        while not held:
            await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311
            delay = min(delay * 2, config.wait_max)
            self._event("lease_wait")
            try:
                reply = await cache.store.run(READ, keys, cache._read_lease)
            except StoreUnavailable as exc:
                cache._outage(self._event, exc)
                return await self._timed(loader)
            if reply[0] == _HIT or reply[0] == _STALE:
                try:
                    return self._codec.loads(reply[1])
                except CodecError:
                    self._event("decode_error")
                    continue
            versions, held = reply[4], bool(reply[5])
        return await self._load(keys, cast("bytes", versions), loader, ttl)

    async def _timed(self, loader: Callable[[], Awaitable[T]]) -> T:
        start = time.perf_counter()
        try:
            value = await loader()
        except Exception:
            self._event("load_error")
            raise
        self._seconds.observe(time.perf_counter() - start)
        return value

    async def _load(
        self,
        keys: tuple[str, ...],
        versions: bytes,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
    ) -> T:
        cache = self._cache
        start = time.perf_counter()
        try:
            value = await loader()
        except asyncio.CancelledError:
            cache._release_soon(keys[1])
            raise
        except Exception:
            self._event("load_error")
            # Held on: the failing source is tried again in error_backoff, by anyone.
            await cache._release(keys[1], failed=True)
            raise
        took = time.perf_counter() - start
        self._seconds.observe(took)
        rule = self.rule
        fresh = cache.config.negative_ttl if value is None else (ttl or rule.ttl)
        args = (
            versions,
            self._codec.dumps(value),
            b"%d" % ttl_ms(fresh),
            b"%d" % ttl_ms(fresh + rule.grace),
            b"%d" % math.ceil(took * 1000),
            cache._owner,
        )
        try:
            if not await cache.store.run(WRITE, keys, args):
                self._event("not_stored")
        except StoreUnavailable as exc:
            cache._outage(self._event, exc)
        return value

    async def _fail_open(self, entry: str, loader: Callable[[], Awaitable[T]]) -> Any:
        self._count_bypass()
        cache = self._cache
        flight = cache._flights.get(entry)
        if flight is None or flight.versions != _BYPASSED:
            flight = cache._fly(entry, self._timed(loader), _BYPASSED, background=False)
        return await flight.join()

    def cached(
        self,
        key: Callable[P, str],
        *,
        tags: Sequence[str] | Callable[P, Sequence[str]] = (),
        ttl: float | None = None,
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
        """Decorate an async function: its result cached under ``key(*args, **kwargs)``."""

        def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                names = tags(*args, **kwargs) if callable(tags) else tags
                return await self.get_or_load(
                    key(*args, **kwargs),
                    functools.partial(fn, *args, **kwargs),
                    tags=names,
                    ttl=ttl,
                )

            return wrapper

        return wrap

    # -- invalidating ------------------------------------------------------

    async def invalidate(self, *tags: str, tenant: uuid.UUID | str | None = None) -> None:
        """Make every entry carrying one of ``tags`` a miss: one INCR per tag, O(1).

        In a tenant-scoped namespace the tags are the tenant's (shared by its
        namespaces); raises `StoreUnavailable` if the store is down, after
        keeping the invalidation to re-send before this process reads again.
        """
        scope = self._scope(tenant)
        await self._cache._bump(scope.counters(tuple(tags))[1:])
