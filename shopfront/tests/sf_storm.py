"""Real worker processes and concurrent HTTP storms for shopfront's guarantee tests.

Workers are separate ``python -m shopfront serve`` processes on their own
ports sharing one database, so a guarantee that holds here holds across
processes. The storm client opens its keep-alive connections first and then
fires everything at once (BENCHMARKING.md: aiohttp, not httpx), and reports
how many requests were really in flight together so a test can prove the storm
was concurrent rather than a queue of replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import aiohttp
import httpx
import pytest

from sf_support import GENEROUS_LIMITS

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

__all__ = ["Call", "PrivateRedis", "Result", "Storm", "free_port", "storm", "workers"]


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
    env = {"SHUTDOWN_DRAIN_SECONDS": "0", **env}
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
    deadline = time.monotonic() + 60
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


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    body: Any
    started: float
    ended: float
    call: Call | None = None
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Storm:
    results: list[Result]
    max_in_flight: int

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts


def _retryable(r: Result) -> bool:
    """A 503, or a 409 for a key whose earlier attempt is still being settled."""
    in_flight = isinstance(r.body, dict) and r.body.get("code") == "idempotency.in_flight"
    return r.status == 503 or (r.status == 409 and in_flight)


async def retry_unavailable(result: Storm, *, rounds: int = 30) -> Storm:
    """Replay each 503 of ``result`` (same call, same Idempotency-Key) as a client would.

    Every 503 must carry ``Retry-After``; the replays wait it out (capped at 1 s,
    the point is the outcome, not the pacing) until none is left; a replay that
    finds the key still in flight (its first attempt's release not landed yet)
    is retried the same way. The results keep their order, each the final
    answer to its call.
    """
    final = list(result.results)
    async with httpx.AsyncClient(timeout=60) as client:
        for n in range(rounds):
            pending = [
                i
                for i, r in enumerate(final)
                if r.status == 503 or (n > 0 and _retryable(r) and r is not result.results[i])
            ]
            if not pending:
                break
            assert all(final[i].retry_after for i in pending), "a 503 without Retry-After"
            await asyncio.sleep(min(1.0, max(float(final[i].retry_after or 1) for i in pending)))
            for i in pending:
                call = final[i].call
                assert call is not None
                resp = await client.request(
                    call.method, call.url, json=call.json, headers=dict(call.headers or {})
                )
                final[i] = Result(
                    resp.status_code,
                    resp.json(),
                    final[i].started,
                    final[i].ended,
                    call,
                    resp.headers.get("retry-after"),
                )
    return Storm(final, result.max_in_flight)


def _max_overlap(results: Sequence[Result]) -> int:
    events = sorted([(r.started, 1) for r in results] + [(r.ended, -1) for r in results])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


async def storm(calls: Sequence[Call], *, connections: int, warm: Sequence[str]) -> Storm:
    """Fire ``calls`` together over ``connections`` pre-opened keep-alive connections."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        per_host = max(1, connections // max(1, len(warm)))

        async def ping(url: str) -> None:
            async with session.get(f"{url}/health/live") as resp:
                await resp.read()

        await asyncio.gather(*(ping(url) for url in warm for _ in range(per_host)))
        gate = asyncio.Event()

        async def one(call: Call) -> Result:
            await gate.wait()
            started = time.perf_counter()
            async with session.request(
                call.method, call.url, json=call.json, headers=dict(call.headers or {})
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("retry-after")
            ended = time.perf_counter()
            body: Any
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            return Result(status, body, started, ended, call, retry_after)

        tasks = [asyncio.create_task(one(call)) for call in calls]
        await asyncio.sleep(0)
        gate.set()
        results = list(await asyncio.gather(*tasks))
    return Storm(results, _max_overlap(results))


class PrivateRedis:
    """A redis-server of this test's own, so stopping it disturbs nobody else."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
                pytest.fail("redis-server is not installed", pytrace=False)
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"],
                capture_output=True,
                text=True,
                check=False,
            )
            if "PONG" in out.stdout:
                return
            time.sleep(0.05)
        msg = "private redis did not start"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
