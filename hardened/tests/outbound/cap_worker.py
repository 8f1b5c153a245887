"""One process of the cross-process cap test: concurrent admissions, then a report of the stamps.

Waits at a Redis barrier (every process ready, then one ``go`` key) so the
processes fire together. Each caller starts ``spread`` / ``callers`` seconds
after the previous one, so both processes keep reserving for the same half
second however late the scheduler wakes one of them; every caller then waits
for its slot concurrently. The report is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import redis.asyncio as aioredis

from hardened.outbound import CapConfig, IntervalCap
from hardened.stores import RedisStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--spread", type=float, default=0.5)
    args = parser.parse_args()
    control = aioredis.from_url(args.url)
    store = RedisStore.from_url(args.url, prefix=args.prefix, max_connections=20, timeout=10.0)
    cap = IntervalCap("shared", CapConfig(calls=20, period=0.2, burst=2, max_wait=60.0), store)

    async def caller(i: int) -> int | None:
        await asyncio.sleep(i * args.spread / args.callers)
        admission = await cap.admit(60.0)
        return admission.stamp

    await store.ping()  # connect before the barrier
    await control.incr(f"{args.prefix}ready")
    while not await control.exists(f"{args.prefix}go"):
        await asyncio.sleep(0.005)
    results = await asyncio.gather(
        *(caller(i) for i in range(args.callers)), return_exceptions=True
    )
    report = {
        "stamps": [r for r in results if not isinstance(r, BaseException)],
        "errors": [repr(r) for r in results if isinstance(r, BaseException)],
        "failed_open": cap.failed_open,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    await store.aclose()
    await control.aclose()


if __name__ == "__main__":
    asyncio.run(main())
