"""The cache's semantics, run on the memory store and on Redis alike."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from cache_support import Backend, Source
from pydantic import BaseModel

from hardened._context import tenant_id_var
from hardened.cache import Cache, CacheConfig, Codec, CodecError, Namespace, Tier
from hardened.errors import TenantContextMissing
from hardened.observability.metrics import fast_counter

pytestmark = pytest.mark.anyio

LOOKUPS = fast_counter("cache_lookups_total", "")
EVENTS = fast_counter("cache_events_total", "")
LONG = 3600.0


def ns_name() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


async def test_a_second_read_is_a_hit_without_loading(
    backend: Backend, tenant: uuid.UUID, source: Source
) -> None:
    """The first read loads; the next one returns the stored value without calling the loader."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG)
    assert await ns.get_or_load("k", source) == "v1"
    source.value = "v2"
    assert await ns.get_or_load("k", source) == "v1"
    assert source.calls == 1
    assert LOOKUPS.value(ns.name, "hit") == 1
    assert LOOKUPS.value(ns.name, "miss") == 1


async def test_the_seed_tiers_are_the_defaults() -> None:
    """Named tiers: catalog 5 min, static 15 min, volatile 1 min; an unknown tier is refused."""
    config = CacheConfig()
    assert {name: tier.ttl for name, tier in config.tiers.items()} == {
        "catalog": 300.0,
        "static": 900.0,
        "volatile": 60.0,
    }
    with pytest.raises(ValueError, match="unknown cache tier"):
        Cache(object()).namespace("x", tier="hourly")  # type: ignore[arg-type]


async def test_invalidating_a_tag_misses_entries_with_it_and_keeps_the_others(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """invalidate(tag) turns only the entries carrying that tag into misses."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG)
    plans, addons = Source("plans-1"), Source("addons-1")
    await ns.get_or_load("plans", plans, tags=("catalog", "plans"))
    await ns.get_or_load("addons", addons, tags=("catalog", "addons"))
    plans.value, addons.value = "plans-2", "addons-2"
    await ns.invalidate("plans")
    assert await ns.get_or_load("plans", plans, tags=("catalog", "plans")) == "plans-2"
    assert await ns.get_or_load("addons", addons, tags=("catalog", "addons")) == "addons-1"
    await ns.invalidate("catalog")
    assert await ns.get_or_load("addons", addons, tags=("catalog", "addons")) == "addons-2"
    assert (plans.calls, addons.calls) == (2, 2)


async def test_tags_are_shared_by_a_tenants_namespaces(backend: Backend, tenant: uuid.UUID) -> None:
    """A tag invalidated through one namespace invalidates it in the tenant's other namespaces."""
    cache = Cache(backend.store)
    first, second = cache.namespace(ns_name(), ttl=LONG), cache.namespace(ns_name(), ttl=LONG)
    source = Source()
    await second.get_or_load("k", source, tags=("catalog",))
    await first.invalidate("catalog")
    await second.get_or_load("k", source, tags=("catalog",))
    assert source.calls == 2


async def test_tenants_never_share_entries(backend: Backend) -> None:
    """The same key in two tenants is two entries: each tenant gets its own loaded value."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert await ns.get_or_load("plans", Source("A"), tenant=a) == "A"
    assert await ns.get_or_load("plans", Source("B"), tenant=b) == "B"
    assert await ns.get_or_load("plans", Source("?"), tenant=a) == "A"
    token = tenant_id_var.set(b)
    try:
        assert await ns.get_or_load("plans", Source("?")) == "B"
    finally:
        tenant_id_var.reset(token)


async def test_a_tenant_scoped_namespace_without_a_tenant_is_refused(backend: Backend) -> None:
    """No tenant in context and none passed: TenantContextMissing, and the loader never runs."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG)
    source = Source()
    with pytest.raises(TenantContextMissing):
        await ns.get_or_load("k", source)
    with pytest.raises(TenantContextMissing):
        await ns.invalidate("catalog")
    assert source.calls == 0


async def test_a_global_namespace_needs_no_tenant(backend: Backend, source: Source) -> None:
    """tenant_scoped=False: one entry for everyone, invalidated by its own tags."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG, tenant_scoped=False)
    await ns.get_or_load("k", source, tags=("t",))
    await ns.get_or_load("k", source, tags=("t",), tenant=uuid.uuid4())
    assert source.calls == 1
    await ns.invalidate("t")
    await ns.get_or_load("k", source, tags=("t",))
    assert source.calls == 2


async def test_dropping_a_tenant_misses_all_its_namespaces_and_no_one_elses(
    backend: Backend,
) -> None:
    """drop_tenant bumps one generation: every entry of that tenant, only that tenant."""
    cache = Cache(backend.store)
    first, second = cache.namespace(ns_name(), ttl=LONG), cache.namespace(ns_name(), ttl=LONG)
    a, b = uuid.uuid4(), uuid.uuid4()
    source = Source()
    for ns in (first, second):
        for tid in (a, b):
            await ns.get_or_load("k", source, tenant=tid)
    assert source.calls == 4
    await cache.drop_tenant(a)
    for ns in (first, second):
        for tid in (a, b):
            await ns.get_or_load("k", source, tenant=tid)
    assert source.calls == 6


async def test_a_load_that_spans_an_invalidation_is_returned_but_not_stored(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """A value loaded across its tag's invalidation is returned but not stored (CAS)."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG)
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await ns.invalidate("catalog")  # a write committed while this load was reading
        return f"v{calls}"

    assert await ns.get_or_load("k", loader, tags=("catalog",)) == "v1"
    assert EVENTS.value(ns.name, "not_stored") == 1
    assert await ns.get_or_load("k", loader, tags=("catalog",)) == "v2"
    assert await ns.get_or_load("k", loader, tags=("catalog",)) == "v2"
    assert calls == 2


async def test_a_stale_value_is_served_at_once_while_one_refresh_runs(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """Past its TTL, in its grace: readers get the old value at once; one load refreshes it."""
    cache = Cache(backend.store, CacheConfig(beta=0))
    ns = cache.namespace(ns_name(), ttl=0.2, grace=LONG)
    source = Source("old")
    await ns.get_or_load("k", source)
    await backend.advance(0.3)
    source.value, source.delay = "new", 0.05
    readers = await asyncio.gather(*(ns.get_or_load("k", source) for _ in range(50)))
    assert readers == ["old"] * 50
    assert LOOKUPS.value(ns.name, "miss") == 1  # only the very first load was awaited
    await cache.wait_idle()
    assert await ns.get_or_load("k", source) == "new"
    assert source.calls == 2


async def test_stale_is_served_while_the_loader_fails_then_the_error_after_the_grace(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """stale-if-error: in the grace window the old value, counted; after it, the error."""
    cache = Cache(backend.store, CacheConfig(beta=0, error_backoff=0.01))
    ns = cache.namespace(ns_name(), ttl=0.2, grace=0.6)
    source = Source("old")
    await ns.get_or_load("k", source)
    await backend.advance(0.3)
    source.fail = RuntimeError("CRM down")
    for _ in range(3):
        assert await ns.get_or_load("k", source) == "old"
        await cache.wait_idle()
    assert LOOKUPS.value(ns.name, "stale") == 3
    assert EVENTS.value(ns.name, "load_error") >= 1
    await backend.advance(0.7)
    with pytest.raises(RuntimeError, match="CRM down"):
        await ns.get_or_load("k", source)


async def test_a_failing_source_is_tried_once_per_backoff_while_stale_is_served(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """After a failed refresh the lease is held for error_backoff: reads spare the source."""
    cache = Cache(backend.store, CacheConfig(beta=0, error_backoff=LONG))
    ns = cache.namespace(ns_name(), ttl=0.2, grace=LONG)
    source = Source("old")
    await ns.get_or_load("k", source)
    await backend.advance(0.3)
    source.fail = RuntimeError("CRM down")
    for _ in range(20):
        assert await ns.get_or_load("k", source) == "old"
        await cache.wait_idle()
    assert source.calls == 2  # the first load, then one failed refresh


async def test_a_loader_error_reaches_its_callers_and_is_not_cached(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """With nothing to serve, every caller of a failed load gets its error; the next retries."""
    cache = Cache(backend.store, CacheConfig(error_backoff=0.01))
    ns = cache.namespace(ns_name(), ttl=LONG)
    source = Source(delay=0.02)
    source.fail = LookupError("boom")
    results = await asyncio.gather(
        *(ns.get_or_load("k", source) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, LookupError) for r in results)
    assert source.calls == 1
    source.fail = None
    await backend.advance(0.05)
    assert await ns.get_or_load("k", source) == "v1"


async def test_none_is_cached_for_the_negative_ttl(backend: Backend, tenant: uuid.UUID) -> None:
    """A loader's None ("not found") is cached, but only for negative_ttl."""
    ns = Cache(backend.store, CacheConfig(negative_ttl=0.2)).namespace(ns_name(), ttl=LONG)
    source = Source(None)
    assert await ns.get_or_load("k", source) is None
    assert await ns.get_or_load("k", source) is None
    assert source.calls == 1
    await backend.advance(0.3)
    source.value = "found"
    assert await ns.get_or_load("k", source) == "found"


class Plan(BaseModel):
    id: uuid.UUID
    name: str
    price: Decimal
    updated: dt.datetime


async def test_typed_values_round_trip(backend: Backend, tenant: uuid.UUID) -> None:
    """A list[Plan] namespace returns Plan models, UUIDs, decimals and datetimes intact."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG, type_=list[Plan])
    plans = [
        Plan(
            id=uuid.uuid4(),
            name="Unlimited",
            price=Decimal("19.99"),
            updated=dt.datetime.now(dt.UTC),
        )
    ]

    async def load() -> list[Plan]:
        return plans

    await ns.get_or_load("plans", load)
    again = await ns.get_or_load("plans", load)
    assert again == plans
    assert isinstance(again[0], Plan)
    assert isinstance(again[0].price, Decimal)


async def test_large_values_are_compressed_and_come_back_whole(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """Payloads above compress_above are stored zlib-compressed and decode to the same value."""
    big = {"items": [{"sku": f"sku-{i}", "name": "x" * 50} for i in range(200)]}
    codec: Codec[object] = Codec(compress_above=1024)
    encoded = codec.dumps(big)
    assert encoded[:1] == b"z"
    plain: Codec[object] = Codec(compress_above=None)
    assert len(encoded) < len(plain.dumps(big)) / 3
    ns = Cache(backend.store, CacheConfig(compress_above=1024)).namespace(ns_name(), ttl=LONG)
    source = Source(big)
    await ns.get_or_load("k", source)
    assert await ns.get_or_load("k", source) == big
    assert source.calls == 1


async def test_raw_bytes_are_stored_as_they_are() -> None:
    """A bytes namespace keeps bytes exactly; a typed namespace refuses raw payloads."""
    body = b'[{"id":1}]\xff'
    raw: Codec[bytes] = Codec(bytes)
    typed: Codec[int] = Codec(int)
    assert raw.loads(raw.dumps(body)) == body
    with pytest.raises(CodecError):
        typed.loads(raw.dumps(body))
    with pytest.raises(CodecError):
        typed.loads(b"?garbage")


async def test_an_unreadable_entry_is_reloaded(backend: Backend, tenant: uuid.UUID) -> None:
    """An entry that no longer decodes (its type changed in a deploy) is a miss, never an error."""
    cache = Cache(backend.store)
    name = ns_name()
    await cache.namespace(name, ttl=LONG).get_or_load("k", Source("not a number"))
    typed = cache.namespace(name, ttl=LONG, type_=int)
    source = Source(42)
    assert await typed.get_or_load("k", source) == 42
    assert await typed.get_or_load("k", source) == 42
    assert source.calls == 1
    assert EVENTS.value(name, "decode_error") == 1


async def test_the_decorator_caches_per_key(backend: Backend, tenant: uuid.UUID) -> None:
    """@cached keys the result by the key function of the call's arguments."""
    ns = Cache(backend.store).namespace(ns_name(), ttl=LONG)
    calls: list[str] = []

    @ns.cached(key=lambda kind, limit=10: f"{kind}:{limit}", tags=lambda kind, limit=10: (kind,))
    async def listing(kind: str, limit: int = 10) -> list[str]:
        calls.append(kind)
        return [kind] * limit

    assert await listing("plan", limit=2) == ["plan", "plan"]
    assert await listing("plan", limit=2) == ["plan", "plan"]
    assert await listing("addon") == ["addon"] * 10
    await ns.invalidate("plan")
    await listing("plan", limit=2)
    assert calls == ["plan", "addon", "plan"]


async def test_tier_and_config_values_are_validated() -> None:
    """Non-positive TTLs and negative knobs are refused when the config is built."""
    with pytest.raises(ValueError, match="ttl"):
        Tier(ttl=0)
    with pytest.raises(ValueError, match="grace"):
        Tier(ttl=1, grace=-1)
    with pytest.raises(ValueError, match="lease_ttl"):
        CacheConfig(lease_ttl=0)
    with pytest.raises(ValueError, match="beta"):
        CacheConfig(beta=float("nan"))
    with pytest.raises(ValueError, match="either tier= or ttl="):
        Cache(object()).namespace("x")  # type: ignore[arg-type]


async def test_no_read_after_an_invalidation_returns_the_old_value(
    backend: Backend, tenant: uuid.UUID
) -> None:
    """Reads racing 100 writes and invalidations: each sees at least the last published write."""
    caches = [Cache(backend.store, CacheConfig(beta=0)) for _ in range(2)]  # two processes' worth
    name = ns_name()
    namespaces = [c.namespace(name, ttl=LONG) for c in caches]
    rows = {"version": 0}
    published = 0  # the last version whose invalidation has returned
    stale_reads = reads = 0
    done = False

    async def load() -> int:
        seen = rows["version"]  # the rows as this load reads them...
        await asyncio.sleep(0.004)  # ...while a write may commit and invalidate
        return seen

    async def reader(ns: Namespace[Any]) -> None:
        nonlocal stale_reads, reads
        while not done:
            floor = published
            value = await ns.get_or_load("rows", load, tags=("rows",))
            reads += 1
            stale_reads += value < floor
            await asyncio.sleep(0)

    async def writer() -> None:
        nonlocal published, done
        for round_ in range(100):
            rows["version"] += 1  # commit
            version = rows["version"]
            await namespaces[version % 2].invalidate("rows")  # after commit
            published = version
            # Some writes land while loads that started after the last one still run.
            await asyncio.sleep(0.002 if round_ % 2 else 0.01)
        done = True

    await asyncio.gather(writer(), *(reader(ns) for ns in namespaces for _ in range(10)))
    assert reads > 100
    assert stale_reads == 0
    assert await namespaces[0].get_or_load("rows", load, tags=("rows",)) == 100
