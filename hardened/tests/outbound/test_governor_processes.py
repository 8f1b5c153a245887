"""Two worker processes share one dependency's cap through Redis; their bulkheads add up."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fake_provider import running_provider

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("governor_worker.py")


def _most_in_any_window(stamps: list[int], width_us: int) -> int:
    """The largest number of stamps inside any half-open window [t, t + width)."""
    stamps = sorted(stamps)
    best, low = 0, 0
    for high, stamp in enumerate(stamps):
        while stamp - stamps[low] >= width_us:
            low += 1
        best = max(best, high - low + 1)
    return best


async def test_two_processes_share_one_cap_and_the_provider_sees_both_bulkheads_only(
    redis_url: str,
) -> None:
    """200 calls from 2 processes: ≤ 20 + 2 admitted per 0.2 s (server stamps), ≤ 2 x 5 at once."""
    prefix = f"test:{uuid.uuid4().hex}:"
    control = aioredis.from_url(redis_url)
    async with running_provider(delay=0.05) as provider:
        command = [
            sys.executable,
            str(WORKER),
            f"--url={redis_url}",
            f"--prefix={prefix}",
            f"--target={provider.url}",
        ]
        procs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        try:
            while int(await control.get(f"{prefix}ready") or 0) < 2:
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                await asyncio.sleep(0.02)
            await control.set(f"{prefix}go", 1)
            outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            keys = [k async for k in control.scan_iter(match=f"{prefix}*")]
            if keys:
                await control.delete(*keys)
            await control.aclose()
        reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["errors"] for r in reports] == [[], []]
    assert [sorted(set(r["statuses"])) for r in reports] == [[200], [200]]
    stamps = [s for r in reports for s in r["stamps"]]
    assert len(stamps) == 200
    assert None not in stamps
    assert _most_in_any_window(stamps, 200_000) <= 22
    # The processes overlapped: each one's admissions fall inside the other's span.
    first, second = (sorted(r["stamps"]) for r in reports)
    assert first[0] < second[-1]
    assert second[0] < first[-1]
    assert provider.calls == 200
    assert provider.max_in_progress <= 10
