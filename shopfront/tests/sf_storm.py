"""Real worker processes and concurrent HTTP storms for shopfront's guarantee tests.

Workers are separate ``python -m shopfront serve`` processes on their own
ports sharing one database, so a guarantee that holds here holds across
processes. The storm client fires everything at once (BENCHMARKING.md:
aiohttp, not httpx) and reports how many requests each worker really had in
progress together, as the worker counted them (``X-Test-In-Flight``, see
`shopfront.testing_probe`): a count kept by the client would include requests
still queued for a connection, and a server taking one at a time would pass.

A keyed or safe request whose connection dropped before any answer (a
keep-alive connection the server closed as idle just as it was reused) is sent
again, as a client would, and counted in ``Result.reconnects``: the key makes
that safe, so effect counts stay exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from hardened.testing import PrivateRedis  # re-exported: the shopfront tests' name
from sf_support import GENEROUS_LIMITS
from shopfront.testing_probe import IN_FLIGHT_HEADER

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

__all__ = [
    "Call",
    "PrivateRedis",
    "Result",
    "Storm",
    "free_port",
    "metric_total",
    "retry_unavailable",
    "storm",
    "worker_env",
    "workers",
]

# Sends of one call after its connection dropped before any answer.
RECONNECTS = 3
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def workers(count: int, env: Mapping[str, str]) -> Iterator[list[str]]:
    """Start ``count`` shopfront processes; yield their base URLs; stop them after."""
    base_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    # A log file, not a pipe: nobody drains a pipe, and a full one blocks the worker.
    logs = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    # Tests stop workers at once: the shutdown drain is proven in test_shutdown.py.
    # Every response says how many requests its worker had in progress (storm()).
    env = {"SHUTDOWN_DRAIN_SECONDS": "0", "TEST_COUNT_IN_FLIGHT": "true", **env}
    try:
        for _ in range(count):
            port = free_port()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shopfront",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env={**base_env, **env},
                stdout=logs,
                stderr=logs,
            )
            procs.append((proc, f"http://127.0.0.1:{port}"))
        for proc, url in procs:
            _wait_live(proc, url, logs)
        try:
            yield [url for _, url in procs]
        except BaseException:
            # The workers' side of a failure: pytest shows captured stderr with the failure.
            logs.seek(0)
            sys.stderr.write(logs.read().decode(errors="replace")[-50_000:])
            raise
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def worker_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test worker process: test mode, fresh secrets, generous limits."""
    return {
        **GENEROUS_LIMITS,
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_JSON": "true",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "SESSION_SECRET": secrets.token_urlsafe(48),
        "COOKIE_SECRET": secrets.token_urlsafe(48),
        **extra,
    }


def _wait_live(proc: subprocess.Popen[bytes], url: str, logs: IO[bytes]) -> None:
    # Generous: on a busy machine a worker's imports alone take half a minute. A worker
    # that died is reported at once; one still starting is the test's timeout to judge.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            logs.seek(0)
            err = logs.read().decode(errors="replace")
            msg = f"worker exited with {proc.returncode}: {err[-2000:]}"
            raise RuntimeError(msg)
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    msg = f"worker at {url} did not come up"
    raise RuntimeError(msg)


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    url: str
    json: Any = None
    headers: Mapping[str, str] | None = None

    @property
    def worker(self) -> str:
        """The base URL of the worker the call goes to."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def send_args(self) -> tuple[bytes | None, dict[str, str]]:
        """The body and headers to send: one encoding, so a resend is byte-for-byte the same.

        The Idempotency-Key fingerprint covers the raw body: aiohttp and httpx
        encode JSON differently, and a replay encoded anew would be a new payload (422).
        """
        headers = dict(self.headers or {})
        if self.json is None:
            return None, headers
        return json.dumps(self.json).encode(), {"content-type": "application/json", **headers}

    @property
    def resendable(self) -> bool:
        """Safe to send again when no answer came: a safe method, or an Idempotency-Key."""
        keyed = any(name.lower() == "idempotency-key" for name in self.headers or {})
        return keyed or self.method.upper() in _SAFE_METHODS


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    body: Any
    call: Call | None = None
    retry_after: str | None = None
    in_flight: int | None = None
    """The requests its worker had in progress when this one came in (itself included)."""
    reconnects: int = 0
    """Times the call was sent again because its connection dropped before any answer."""


@dataclass(frozen=True, slots=True)
class Storm:
    results: list[Result]
    in_flight: Mapping[str, int] = field(default_factory=dict)
    """Per worker: the most requests it had in progress at once during the storm."""

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    @property
    def overlap(self) -> int:
        """The least of the workers' peaks: each had at least this many requests at once."""
        return min(self.in_flight.values(), default=0)

    @property
    def reconnects(self) -> int:
        return sum(r.reconnects for r in self.results)


def _retryable(r: Result) -> bool:
    """A 503, or a 409 for a key whose earlier attempt is still being settled."""
    in_flight = isinstance(r.body, dict) and r.body.get("code") == "idempotency.in_flight"
    return r.status == 503 or (r.status == 409 and in_flight)


async def _replay(client: httpx.AsyncClient, call: Call) -> tuple[httpx.Response, int]:
    """Send ``call``; again if the connection dropped before an answer (it is resendable)."""
    content, headers = call.send_args()
    for reconnects in range(RECONNECTS + 1):
        try:
            resp = await client.request(call.method, call.url, content=content, headers=headers)
        except httpx.TransportError:
            if not call.resendable or reconnects == RECONNECTS:
                raise
            continue
        return resp, reconnects
    raise AssertionError  # unreachable: the last attempt returns or raises


async def retry_unavailable(result: Storm, *, rounds: int = 30) -> Storm:
    """Replay each 503 of ``result`` (same call, same Idempotency-Key) as a client would.

    Every 503 must carry ``Retry-After``; the replays wait it out (capped at 1 s,
    the point is the outcome, not the pacing) until none is left; a replay that
    finds the key still in flight (its first attempt's release not landed yet)
    is retried the same way, and so is a call the storm sent again after a
    dropped connection that found its own first send still in flight. The
    results keep their order, each the final answer to its call.
    """
    final = list(result.results)
    async with httpx.AsyncClient(timeout=60) as client:
        for n in range(rounds):
            pending = [
                i
                for i, r in enumerate(final)
                if r.status == 503
                or (_retryable(r) and (r.reconnects > 0 or (n > 0 and r is not result.results[i])))
            ]
            if not pending:
                break
            assert all(final[i].retry_after for i in pending), "a 503 without Retry-After"
            await asyncio.sleep(min(1.0, max(float(final[i].retry_after or 1) for i in pending)))
            for i in pending:
                call = final[i].call
                assert call is not None
                resp, reconnects = await _replay(client, call)
                final[i] = Result(
                    resp.status_code,
                    resp.json(),
                    call,
                    resp.headers.get("retry-after"),
                    final[i].in_flight,
                    final[i].reconnects + reconnects,
                )
    return Storm(final, result.in_flight)


def _peaks(results: Sequence[Result]) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for r in results:
        if r.call is not None and r.in_flight is not None:
            peaks[r.call.worker] = max(peaks.get(r.call.worker, 0), r.in_flight)
    return peaks


async def storm(calls: Sequence[Call], *, connections: int, warm: Sequence[str] = ()) -> Storm:
    """Fire ``calls`` together over at most ``connections`` keep-alive connections.

    ``warm`` lists workers to open the connections to before the gate opens
    (spread evenly); by default each connection opens with its first request,
    so none sits idle long enough for the server's keep-alive timeout (5 s)
    to close it under the client's feet on a busy machine.
    """
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    turns = asyncio.Semaphore(connections)
    timeout = aiohttp.ClientTimeout(total=120)  # one request's, from its turn on
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        per_host = max(1, connections // max(1, len(warm)))

        async def ping(url: str) -> None:
            async with session.get(f"{url}/health/live") as resp:
                await resp.read()

        await asyncio.gather(*(ping(url) for url in warm for _ in range(per_host)))
        gate = asyncio.Event()

        async def send(call: Call) -> tuple[aiohttp.ClientResponse, int]:
            content, headers = call.send_args()
            for reconnects in range(RECONNECTS + 1):
                try:
                    # Returns once the response head is in: an error here means no answer.
                    resp = await session.request(
                        call.method, call.url, data=content, headers=headers
                    )
                except aiohttp.ClientConnectionError:
                    if not call.resendable or reconnects == RECONNECTS:
                        raise
                    continue
                return resp, reconnects
            raise AssertionError  # unreachable: the last attempt returns or raises

        async def one(call: Call) -> Result:
            await gate.wait()
            # Calls queue here, not in the connector, whose wait the timeout would count:
            # on a busy machine the last of 1,000 calls waits minutes for its turn.
            async with turns:
                resp, reconnects = await send(call)
                async with resp:
                    raw = await resp.read()
            seen = resp.headers.get(IN_FLIGHT_HEADER)
            body: Any
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            return Result(
                resp.status,
                body,
                call,
                resp.headers.get("retry-after"),
                int(seen) if seen is not None else None,
                reconnects,
            )

        tasks = [asyncio.create_task(one(call)) for call in calls]
        await asyncio.sleep(0)
        gate.set()
        results = list(await asyncio.gather(*tasks))
    return Storm(results, _peaks(results))


async def metric_total(urls: Sequence[str], name: str, **labels: str) -> float:
    """The sum over the workers' ``/metrics`` of the samples ``name`` with ``labels``."""
    total = 0.0
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls:
            text = (await client.get(f"{url}/metrics")).text
            for family in text_string_to_metric_families(text):
                total += sum(
                    sample.value
                    for sample in family.samples
                    if sample.name == name and labels.items() <= sample.labels.items()
                )
    return total
