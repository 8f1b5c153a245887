"""One process of the shared-cap test: concurrent governed GETs, then a report of what happened.

Callers start 5 ms apart (each process keeps reserving for 0.5 s, so the two
interleave). Waits at a Redis barrier (every process ready, then one ``go`` key) so the
processes fire together. The cap's admissions are recorded as the store
script returned them (server-clock stamps), by wrapping the real cap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import httpx
import redis.asyncio as aioredis

from hardened.outbound import (
    Admission,
    BulkheadConfig,
    CapConfig,
    GovernedTransport,
    Governor,
    GovernorConfig,
    IntervalCap,
    LaneConfig,
    RetryConfig,
)
from hardened.stores import RedisStore


class RecordingCap:
    """The real cap, its admissions written down."""

    def __init__(self, cap: IntervalCap) -> None:
        self.cap = cap
        self.config = cap.config
        self.stamps: list[int | None] = []

    async def admit(self, max_wait: float) -> Admission:
        admission = await self.cap.admit(max_wait)
        self.stamps.append(admission.stamp)
        return admission


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--callers", type=int, default=100)
    args = parser.parse_args()
    control = aioredis.from_url(args.url)
    store = RedisStore.from_url(args.url, prefix=args.prefix, max_connections=20, timeout=10.0)
    config = GovernorConfig(
        "shared",
        lane=LaneConfig(BulkheadConfig(max_concurrent=5, max_queue=1000, max_wait=60), 10.0, 60.0),
        retry=RetryConfig(attempts=1),
        cap=CapConfig(calls=20, period=0.2, burst=2, max_wait=60.0),
    )
    governor = Governor(config, store=store)
    assert governor.cap is not None
    recording = RecordingCap(governor.cap)
    governor.cap = recording  # type: ignore[assignment]
    client = httpx.AsyncClient(
        base_url=args.target,
        transport=GovernedTransport(governor, httpx.AsyncHTTPTransport(limits=httpx.Limits())),
    )
    await store.ping()
    await control.incr(f"{args.prefix}ready")
    while not await control.exists(f"{args.prefix}go"):
        await asyncio.sleep(0.005)

    async def one(n: int) -> httpx.Response:
        # Spread over 0.5 s, so both processes keep reserving while the other does.
        await asyncio.sleep(n * 0.005)
        return await client.get("/call")

    results: list[Any] = await asyncio.gather(
        *(one(n) for n in range(args.callers)), return_exceptions=True
    )
    report = {
        "statuses": [r.status_code for r in results if isinstance(r, httpx.Response)],
        "errors": [repr(r) for r in results if isinstance(r, BaseException)],
        "stamps": recording.stamps,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    await client.aclose()
    await store.aclose()
    await control.aclose()


if __name__ == "__main__":
    asyncio.run(main())
