"""The must-show storm: 100 concurrent identical POSTs, one key, two worker processes.

Each worker is a real uvicorn process (``idem_barrier_worker.py``: the app of
``idem_worker.py``) sharing only the backend; the handler sleeps 50 ms and
appends a line per execution to a file. The client fires everything at once
(aiohttp, BENCHMARKING.md), half to each worker, and each worker holds its
half's claims at a barrier until all 50 have arrived, then lets them call the
backend together: the claims race every run, not only when the client's timing
happens to line them up, and the barrier's report proves the storm concurrent.

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
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("idem_barrier_worker.py")
REQUESTS = 100
PER_WORKER = REQUESTS // 2
UNAVAILABLE_RETRIES = 30
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

    def barriers(self) -> list[dict[str, int]]:
        """Each worker's barrier report: keys whose claims were all held together, or not."""
        return [httpx.get(f"{url}/barrier", timeout=30).json() for url in self.urls]


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
                f"--barrier={PER_WORKER}",
            ]
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 240  # a busy machine imports slowly; a dead worker fails now
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


def lowered(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {name.lower(): value for name, value in resp.headers.items()}


async def storm(workers: Workers, path: str) -> list[Reply]:
    """``REQUESTS`` identical POSTs with one key, fired together, split across the workers.

    Each worker must have held all its claims together (its barrier filled once
    more, none let go short): the proof the storm raced, made where it raced.
    A 503 (the backend out of connections: PostgreSQL's are shared with
    whatever else runs) must say ``Retry-After``; it is sent again, as a client
    would, until it gets an answer, so each reply is its request's last answer.
    """
    headers = {"idempotency-key": str(uuid.uuid4()), "content-type": "application/json"}
    body = json.dumps({"amount": 500, "currency": "EUR"}).encode()
    before = workers.barriers()
    # One connection per request: the barrier holds every request until all have come.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=PER_WORKER)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        gate = asyncio.Event()

        async def send(url: str) -> Reply:
            async with session.post(f"{url}{path}", data=body, headers=headers) as resp:
                return Reply(resp.status, lowered(resp), await resp.read())

        async def one(url: str) -> Reply:
            await gate.wait()
            reply = await send(url)
            for _ in range(UNAVAILABLE_RETRIES):
                if reply.status != 503:
                    break
                await asyncio.sleep(min(1.0, float(reply.headers["retry-after"])))
                reply = await send(url)
            return reply

        tasks = [
            asyncio.create_task(one(workers.urls[i % len(workers.urls)])) for i in range(REQUESTS)
        ]
        await asyncio.sleep(0)
        gate.set()
        replies = list(await asyncio.gather(*tasks))
    after = workers.barriers()
    for was, now in zip(before, after, strict=True):
        assert now["short"] == was["short"], f"claims let go before all came: {now}"
        assert now["filled"] == was["filled"] + 1, f"the storm's claims never raced: {now}"
    return replies


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
    """100 same-key POSTs whose claims race on 2 workers: one execution; original or 409 each."""
    before = workers.runs()
    replies = await storm(workers, "/charge")
    assert workers.runs() - before == 1
    _, replayed, busy = originals(replies)
    assert busy or replayed
    record_property("storm", {"replayed": len(replayed), "busy": len(busy)})


async def test_storm_on_a_wait_route_gives_everyone_the_original_result(
    workers: Workers, record_property: Any
) -> None:
    """100 same-key POSTs whose claims race on a wait route: one execution, all get its result."""
    before = workers.runs()
    replies = await storm(workers, "/charge-wait")
    assert workers.runs() - before == 1
    original, replayed, busy = originals(replies)
    assert not busy
    assert len(replayed) == REQUESTS - 1
    assert json.loads(original.body)["pid"] > 0
