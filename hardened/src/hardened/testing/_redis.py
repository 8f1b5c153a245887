"""Redis for tests: a store under a prefix of its own, or a server of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from hardened.stores import RedisStore

__all__ = ["PrivateRedis", "scratch_redis_store"]


@contextlib.asynccontextmanager
async def scratch_redis_store(url: str, **options: Any) -> AsyncIterator[RedisStore]:
    """``RedisStore.from_url(url, **options)`` under a fresh prefix; its keys deleted at exit.

    Tests on one server never see each other's keys, and nothing is flushed, so
    parallel runs and other users of the database are left alone.
    """
    from hardened.stores import RedisStore  # noqa: PLC0415 - redis is an optional extra

    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(url, prefix=prefix, **options)
    try:
        yield store
    finally:
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()


class PrivateRedis:
    """A redis-server of a test's own (fresh port), to stop, freeze or restart.

    Stopping or freezing it disturbs no other test. `freeze` (SIGSTOP) makes
    every command hang until `thaw` (SIGCONT) with the data intact: a hung
    Redis without any timing race, since nothing answers until the test says.
    ``persistent`` keeps the data across `stop` and `start` (an append-only
    file in a temporary directory); otherwise a restart starts empty. In CI a
    missing ``redis-server`` fails the test instead of skipping it.
    """

    def __init__(self, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            import pytest  # noqa: PLC0415 - only tests construct this

            if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
                pytest.fail("redis-server is not installed", pytrace=False)
            pytest.skip("redis-server is not installed")
        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        # persistent: an append-only file synced on every write, so a restart keeps the data.
        self.directory = tempfile.mkdtemp(prefix="private-redis-") if persistent else None

    def start(self) -> None:
        """Start (or restart, empty) the server on its port and wait until it answers."""
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *(
                    ("--appendonly", "yes", "--appendfsync", "always", "--dir", self.directory)
                    if self.directory
                    else ()
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.02)
        msg = "private redis did not start"
        raise RuntimeError(msg)

    def stop(self) -> None:
        """Terminate the server (a thawed one, so it can exit)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def freeze(self) -> None:
        """Suspend the server: connections stay open, nothing is answered."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
