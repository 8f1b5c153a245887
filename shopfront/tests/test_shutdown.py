"""SIGTERM under load: `shopfront serve` drains, answers every request it was sent, exits 0.

The service runs as a real ``python -m shopfront serve`` process (one worker,
and two behind uvicorn's supervisor) and is driven over raw keep-alive
sockets, so what is counted is what a client sees on the wire: a complete
response, or a reset / empty reply. The test moves on by the server's own
log events (``shutdown_draining``, ``shutdown_closing``), never by sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import pytest

from sf_storm import free_port
from sf_support import GENEROUS_LIMITS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

DRAIN_SECONDS = 10  # the drain-phase traffic below takes well under a second
CONNECTIONS = 4
ROUNDS = 3
DEADLINE = 45.0  # generous upper bound for each wait on the service


class ReplyLost(Exception):
    """The server reset the connection or closed it without a complete response."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class Connection:
    """One HTTP/1.1 keep-alive connection over a plain socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionError as exc:
            raise ReplyLost(type(exc).__name__) from exc
        if not chunk:
            raise ReplyLost("empty reply" if not self.buffer else "truncated reply")
        return chunk

    def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(int(status_line.split()[1]), headers, body)

    def get(self, path: str) -> Reply:
        self.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return self.reply()

    def closed_cleanly(self) -> bool:
        """Whether the server's next move is a FIN (not a reset, not more data)."""
        try:
            return self.buffer == b"" and self.sock.recv(1) == b""
        except ConnectionError:
            return False

    def close(self) -> None:
        self.sock.close()


def _env(database: str, drain_seconds: float) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    return {
        **base,
        **GENEROUS_LIMITS,
        "RATE_LIMIT_SIGNUP": "1000000/60",
        "ENVIRONMENT": "test",
        "DATABASE_URL": database,
        "AUTO_MIGRATE": "true",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_JSON": "true",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "SESSION_SECRET": secrets.token_urlsafe(48),
        "COOKIE_SECRET": secrets.token_urlsafe(48),
        "SHUTDOWN_DRAIN_SECONDS": str(drain_seconds),
        "SHUTDOWN_GRACE_SECONDS": str(int(DEADLINE)),
    }


def _log_text(logs: IO[bytes]) -> str:
    logs.seek(0)
    return logs.read().decode(errors="replace")


def _wait_for(
    what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], logs: IO[bytes]
) -> None:
    """Poll ``check()`` until true; fail with the service's log if it exits or takes too long."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"{what} (exit {proc.returncode}): {_log_text(logs)[-3000:]}")


def _events(logs: IO[bytes], event: str) -> int:
    return _log_text(logs).count(f'"event": "{event}"')


@contextlib.contextmanager
def serving(
    tmp_path: Path, workers: int, drain_seconds: float = DRAIN_SECONDS
) -> Iterator[tuple[subprocess.Popen[bytes], int, IO[bytes]]]:
    """``shopfront serve`` up on a free port, in a process group of its own (killed at the end)."""
    port = free_port()
    argv = [sys.executable, "-m", "shopfront", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(workers)]
    env = _env(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", drain_seconds)
    with tempfile.TemporaryFile() as logs:  # a file: a pipe nobody reads would block the server
        proc = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=logs, stderr=logs, start_new_session=True
        )
        try:
            _wait_for("service did not come up", lambda: _live(port), proc, logs)
            yield proc, port, logs
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: workers too, if any are left
            proc.wait()


def _exit_status(proc: subprocess.Popen[bytes], logs: IO[bytes]) -> int:
    try:
        return proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"service did not exit: {_log_text(logs)[-3000:]}")


def _live(port: int) -> bool:
    try:
        conn = Connection(port)
    except OSError:
        return False
    try:
        return conn.get("/health/live").status == 200
    except (OSError, ReplyLost):
        return False
    finally:
        conn.close()


def _tenant_request() -> tuple[bytes, bytes]:
    """A shop sign-up split in two: the head and half the body, then the other half."""
    name = f"drain-{secrets.token_hex(4)}"
    body = json.dumps(
        {
            "name": name,
            "domain": f"{name}.myshopify.com",
            "owner_email": f"owner@{name}.example",
            "owner_password": "correct horse battery staple",
        }
    ).encode()
    head = (
        b"POST /tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    half = len(body) // 2
    return head + body[:half], body[half:]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_without_resetting_a_request(tmp_path: Path, workers: int) -> None:
    """After SIGTERM every request gets a whole answer, closing; readiness is 503; exit is 0."""
    with serving(tmp_path, workers) as (proc, port, logs):
        conns: list[Connection | None] = [Connection(port) for _ in range(CONNECTIONS)]
        for conn in conns:
            assert conn is not None
            warm = conn.get("/health/live")
            assert (warm.status, warm.closes) == (200, False)
        # A request in flight at the signal: its body is half sent, the rest comes later.
        uploading = Connection(port)
        assert uploading.get("/health/live").status == 200
        first_half, second_half = _tenant_request()
        uploading.send(first_half)

        proc.send_signal(signal.SIGTERM)
        _wait_for(
            "no worker started draining",
            lambda: _events(logs, "shutdown_draining") >= workers,
            proc,
            logs,
        )
        outcomes: Counter[str] = Counter()
        not_closing: list[tuple[str, int]] = []
        for round_ in range(ROUNDS):
            for i in range(CONNECTIONS):
                path = "/health/ready" if (i + round_) % 2 else "/health/live"
                conn = conns[i] or Connection(port)  # the last answer closed: open the next
                try:
                    reply = conn.get(path)
                except ReplyLost as lost:
                    outcomes[str(lost)] += 1
                    conns[i] = None
                    conn.close()
                    continue
                outcomes[f"{path} {reply.status}"] += 1
                if path == "/health/ready":
                    assert json.loads(reply.body)["status"] == "draining"
                if not reply.closes:
                    not_closing.append((path, reply.status))
                    conns[i] = conn
                    continue
                outcomes["closed cleanly" if conn.closed_cleanly() else "not closed"] += 1
                conn.close()
                conns[i] = None
        requests = CONNECTIONS * ROUNDS
        assert outcomes == {
            "/health/live 200": requests // 2,
            "/health/ready 503": requests // 2,
            "closed cleanly": requests,
        }, outcomes
        assert not not_closing

        # Past the drain the listener is closed: now let the half-sent request finish.
        _wait_for(
            "the drain did not end",
            lambda: _events(logs, "shutdown_closing") >= workers,
            proc,
            logs,
        )
        uploading.send(second_half)
        created = uploading.reply()
        assert created.status == 201, created.body
        assert created.closes
        assert json.loads(created.body)["domain"].startswith("drain-")
        uploading.close()

        assert _exit_status(proc, logs) == 0, _log_text(logs)[-3000:]


@pytest.mark.parametrize(
    ("workers", "twice", "status"),
    [(1, "sigterm", 1), (2, "ctrl-c", 0)],
    ids=["one-process-sigterm-twice", "two-workers-ctrl-c-twice"],
)
def test_second_signal_ends_the_drain_at_once(
    tmp_path: Path, workers: int, twice: str, status: int
) -> None:
    """A second signal during a long drain exits at once; one Ctrl+C with workers still drains."""

    def signal_it() -> None:
        if twice == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl+C: SIGINT to the whole group, supervisor and workers
            os.killpg(proc.pid, signal.SIGINT)

    with serving(tmp_path, workers, drain_seconds=300) as (proc, port, logs):
        uploading = Connection(port)
        first_half, _ = _tenant_request()
        uploading.send(first_half)  # in flight: a graceful exit would wait for it
        signal_it()
        _wait_for(
            "no worker started draining",
            lambda: _events(logs, "shutdown_draining") >= workers,
            proc,
            logs,
        )
        # The supervisor's forwarded SIGTERM did not count as the second signal: still serving.
        probe = Connection(port)
        assert probe.get("/health/live").status == 200
        probe.close()
        assert proc.poll() is None
        signal_it()
        assert _exit_status(proc, logs) == status, _log_text(logs)[-3000:]
        uploading.close()


def test_zero_drain_exits_gracefully_on_the_first_signal(tmp_path: Path) -> None:
    """With SHUTDOWN_DRAIN_SECONDS=0 a SIGTERM closes the listener at once and exits 0."""
    with serving(tmp_path, 1, drain_seconds=0) as (proc, _port, logs):
        proc.send_signal(signal.SIGTERM)
        assert _exit_status(proc, logs) == 0, _log_text(logs)[-3000:]
        assert _events(logs, "shutdown_closing") == 1
