"""Shared fixtures: where PostgreSQL and Redis are, and what to do when they are not.

Outside CI a missing service skips its tests with one line saying what to
start; with ``CI=true`` a missing service fails the run, because a skipped
guarantee is not a guarantee.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/hardened_test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        address = (parts.hostname or "127.0.0.1", parts.port or default_port)
        with socket.create_connection(address, 2):
            return True
    except OSError:
        return False


def _require(url: str, default_port: int, what: str, start: str) -> str:
    if _reachable(url, default_port):
        return url
    message = f"{what} not reachable at {url}: start it with `{start}` (or bash .ci/run)"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def database_url() -> str:
    """A PostgreSQL URL (``postgresql://…``) for the test database."""
    return _require(
        os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL for tests; the database number is reserved for tests and flushed."""
    return _require(
        os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        6379,
        "Redis",
        'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
    )


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio only (the library targets asyncio)."""
    return "asyncio"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """In CI a skipped test fails: whatever the reason, its guarantee went unchecked."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {report.longrepr}"
    return None
