"""One process of the cross-process stampede test: 250 concurrent cold calls, then report.

Waits at a Redis barrier (every process ready, then one ``go`` key) so the
processes fire together; the loader counts its runs with INCR, so loads are
counted across processes by the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import redis.asyncio as aioredis

from hardened.cache import Cache, CacheConfig
from hardened.stores import RedisStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--callers", type=int, default=250)
    args = parser.parse_args()
    control = aioredis.from_url(args.url)
    store = RedisStore.from_url(args.url, prefix=args.prefix, max_connections=20, timeout=10.0)
    cache = Cache(store, CacheConfig(lease_ttl=60.0))
    ns = cache.namespace("stampede", ttl=3600.0)

    async def loader() -> dict[str, str]:
        await control.incr(f"{args.prefix}loads")
        await asyncio.sleep(0.3)
        return {"plans": "loaded"}

    await store.ping()  # connect before the barrier
    await control.incr(f"{args.prefix}ready")
    while not await control.exists(f"{args.prefix}go"):
        await asyncio.sleep(0.005)
    results = await asyncio.gather(
        *(ns.get_or_load("plans", loader, tenant=args.tenant) for _ in range(args.callers)),
        return_exceptions=True,
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    values = sorted({json.dumps(r) for r in results if not isinstance(r, BaseException)})
    sys.stdout.write(json.dumps({"errors": errors, "values": values}) + "\n")
    await cache.aclose()
    await store.aclose()
    await control.aclose()


if __name__ == "__main__":
    asyncio.run(main())
