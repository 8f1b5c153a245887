"""The must-show storm: 100 concurrent identical POSTs, one key, two worker processes.

Each worker is a real uvicorn process (``idem_worker.py``) sharing only the
backend; the handler sleeps 50 ms and appends a line per execution to a file.
The client opens its keep-alive connections first and then fires everything
at once (aiohttp, BENCHMARKING.md), half to each worker, and measures how many
requests were really in flight together, so the storm is proven concurrent.

``BACKENDS`` names each backend by the fixture giving its URL; another backend
is one entry there, a branch in ``idem_worker.backend_for`` and, if it needs
one, a branch in `prepare` / `cleanup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import pytest
from sqlalchemy import MetaData, create_engine

from hardened.idempotency import idempotency_table
from hardened.stores import RedisStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("idem_worker.py")
REQUESTS = 100
BACKENDS = {"redis": "redis_url", "postgres": "idem_pg_url"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Workers:
    urls: list[str]
    runs_file: Path

    def runs(self) -> int:
        """How many times the handler really ran (one line per execution)."""
        if not self.runs_file.exists():
            return 0
        return len(self.runs_file.read_text().splitlines())


def prepare(url: str, namespace: str) -> None:
    """Create what the backend needs before the workers start (a SQL table)."""
    if url.startswith("postgresql"):
        engine = create_engine(url)
        try:
            metadata = MetaData()
            idempotency_table(metadata, namespace)
            metadata.create_all(engine)
        finally:
            engine.dispose()


async def _drop_redis_prefix(url: str, prefix: str) -> None:
    store = RedisStore.from_url(url)
    try:
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await store.client.delete(*keys)
    finally:
        await store.aclose()


def cleanup(url: str, namespace: str) -> None:
    """Remove what the storm left in the backend."""
    if url.startswith("redis"):
        asyncio.run(_drop_redis_prefix(url, namespace))
    elif url.startswith("postgresql"):
        engine = create_engine(url)
        try:
            metadata = MetaData()
            idempotency_table(metadata, namespace).drop(engine)
        finally:
            engine.dispose()


@pytest.fixture(scope="module", params=list(BACKENDS))
def workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    """Two uvicorn worker processes guarded by the same backend (module-wide, per backend)."""
    backend_url: str = request.getfixturevalue(BACKENDS[request.param])
    tmp = tmp_path_factory.mktemp(f"idem-storm-{request.param}")
    namespace = f"idem_storm_{uuid.uuid4().hex[:12]}"
    prepare(backend_url, namespace)
    runs_file = tmp / "runs"
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    log = (tmp / "workers.log").open("w")
    try:
        for _ in range(2):
            port = free_port()
            command = [
                sys.executable,
                str(WORKER),
                f"--port={port}",
                f"--backend-url={backend_url}",
                f"--namespace={namespace}",
                f"--runs-file={runs_file}",
            ]
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        for url, proc in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, (tmp / "workers.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline, "worker did not become ready"
                time.sleep(0.05)
        yield Workers(urls, runs_file)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        cleanup(backend_url, namespace)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    started: float
    ended: float


def lowered(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {name.lower(): value for name, value in resp.headers.items()}


def max_overlap(replies: list[Reply]) -> int:
    events = sorted([(r.started, 1) for r in replies] + [(r.ended, -1) for r in replies])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@contextlib.asynccontextmanager
async def warm_session(urls: list[str], per_host: int) -> AsyncIterator[aiohttp.ClientSession]:
    """A session with ``per_host`` keep-alive connections already open to each worker."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=per_host)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def ping(url: str) -> None:
            async with session.get(f"{url}/ready") as resp:
                await resp.read()

        await asyncio.gather(*(ping(url) for url in urls for _ in range(per_host)))
        yield session


async def storm(workers: Workers, path: str) -> list[Reply]:
    """``REQUESTS`` identical POSTs with one key, fired together, split across the workers."""
    headers = {"idempotency-key": str(uuid.uuid4()), "content-type": "application/json"}
    body = json.dumps({"amount": 500, "currency": "EUR"}).encode()
    per_host = REQUESTS // len(workers.urls)
    async with warm_session(workers.urls, per_host) as session:
        gate = asyncio.Event()

        async def one(url: str) -> Reply:
            await gate.wait()
            started = time.perf_counter()
            async with session.post(f"{url}{path}", data=body, headers=headers) as resp:
                raw = await resp.read()
                return Reply(resp.status, lowered(resp), raw, started, time.perf_counter())

        tasks = [
            asyncio.create_task(one(workers.urls[i % len(workers.urls)])) for i in range(REQUESTS)
        ]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*tasks))


def originals(replies: list[Reply]) -> tuple[Reply, list[Reply], list[Reply]]:
    """The one executed reply, the replays of it, and the 409s; fails on anything else."""
    executed = [r for r in replies if r.status == 201 and "idempotent-replayed" not in r.headers]
    replayed = [r for r in replies if r.status == 201 and "idempotent-replayed" in r.headers]
    busy = [r for r in replies if r.status == 409]
    assert len(executed) == 1, [(r.status, r.body[:80]) for r in replies]
    assert len(executed) + len(replayed) + len(busy) == len(replies), {r.status for r in replies}
    [original] = executed
    for reply in replayed:
        assert reply.headers["idempotent-replayed"] == "true"
        assert reply.body == original.body
    for reply in busy:
        problem = json.loads(reply.body)
        assert reply.headers["content-type"] == "application/problem+json"
        assert problem["code"] == "idempotency.in_flight"
        assert int(reply.headers["retry-after"]) >= 1
    return original, replayed, busy


async def test_storm_runs_the_handler_once_and_answers_original_or_409(
    workers: Workers, record_property: Any
) -> None:
    """100 concurrent same-key POSTs on 2 workers: one execution; each reply original or 409."""
    before = workers.runs()
    replies = await storm(workers, "/charge")
    assert workers.runs() - before == 1
    _, replayed, busy = originals(replies)
    overlap = max_overlap(replies)
    assert overlap > 1, "the storm was not concurrent"
    assert busy or replayed
    record_property("storm", {"replayed": len(replayed), "busy": len(busy), "overlap": overlap})


async def test_storm_on_a_wait_route_gives_everyone_the_original_result(
    workers: Workers, record_property: Any
) -> None:
    """100 concurrent same-key POSTs on a wait route: one execution, all 100 get its result."""
    before = workers.runs()
    replies = await storm(workers, "/charge-wait")
    assert workers.runs() - before == 1
    original, replayed, busy = originals(replies)
    assert not busy
    assert len(replayed) == REQUESTS - 1
    assert json.loads(original.body)["pid"] > 0
    overlap = max_overlap(replies)
    assert overlap > 1, "the storm was not concurrent"
    record_property("storm_wait", {"overlap": overlap})
