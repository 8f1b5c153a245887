"""schemathesis over shopfront's whole OpenAPI, authenticated, against a live server.

Starts the tests' CRM fake and ``shopfront serve`` on PostgreSQL (row-level
security, the app role) and Redis with the rate limits raised for the run,
opens a shop with its owner, then runs schemathesis twice with a fixed seed:
once as an owner API key, once as the owner's access token (sign-out routes
excluded there: they would end the session mid-run; the key run covers them).
Checks: no 5xx, and every 4xx is problem+json with a correlation id (a hook
check). Prints the operations, examples per operation, the share of examples
that got past authentication and validation (any answer but
400/401/403/405/413/415/422/429), and fails on any finding.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from hardened.testing import temporary_database
from shopfront.migrate import DEFAULT_APP_ROLE, upgrade

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261201"))
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
REFUSED = {400, 401, 403, 405, 413, 415, 422, 429}
LIMITS = {
    f"RATE_LIMIT_{name}": "1000000/60"
    for name in ("TENANT", "LOGIN", "PASSWORD_RESET", "CATALOG", "ORDERS", "UPLOADS", "SIGNUP")
}
PASSWORD = "schemathesis owner passphrase"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app_url(owner_url: str) -> str:
    parts = urlsplit(owner_url)
    return urlunsplit(parts._replace(netloc=f"{DEFAULT_APP_ROLE}@{parts.hostname}:{parts.port}"))


def _fake_crm(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The tests' CRM fake, so the catalog routes answer instead of a 503."""
    argv = [sys.executable, str(ROOT / "shopfront" / "tests" / "fake_crm.py"), "--port", str(port)]
    return subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _serve(database: str, port: int, log: Path, crm_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **LIMITS,
        "ENVIRONMENT": "test",
        "DATABASE_URL": _app_url(database),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
        "AUTO_MIGRATE": "false",
        "LOG_JSON": "true",
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "MAX_IN_FLIGHT_REQUESTS": "0",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "SESSION_SECRET": secrets.token_urlsafe(48),
        "COOKIE_SECRET": secrets.token_urlsafe(48),
        "CRM_URL": crm_url,
    }
    out = log.open("wb")
    argv = [sys.executable, "-m", "shopfront", "serve", "--port", str(port)]
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"shopfront exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit("shopfront did not become ready")


def _credentials(url: str) -> tuple[str, str]:
    """(owner API key, owner access token) of a fresh shop."""
    domain = f"fuzz-{secrets.token_hex(4)}.myshopify.com"
    email = "owner@fuzz.example"
    with httpx.Client(base_url=url, timeout=30) as client:
        made = client.post(
            "/tenants",
            json={
                "name": "Fuzz",
                "domain": domain,
                "owner_email": email,
                "owner_password": PASSWORD,
            },
        )
        made.raise_for_status()
        login = client.post(
            "/auth/login", json={"shop": domain, "email": email, "password": PASSWORD}
        )
        login.raise_for_status()
        token = login.json()["access_token"]
        key = client.post(
            "/api-keys",
            json={"name": "fuzz", "role": "owner"},
            headers={"authorization": f"Bearer {token}"},
        )
        key.raise_for_status()
    return key.json()["key"], token


def _run(url: str, credential: str, name: str, report: Path, *extra: str) -> int:
    argv = [
        "schemathesis",
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {credential}",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--checks",
        "not_a_server_error,problem_json",
        # One worker: two threads can race in CPython 3.11.7's ast.parse inside hypothesis
        # ("AST constructor recursion depth mismatch", python/cpython#106905).
        "--workers",
        "1",
        "--generation-allow-x00",
        "true",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--generation-database",
        "none",
        "--no-color",
        *extra,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / ".ci"), env.get("PYTHONPATH")]))
    print(f"== schemathesis ({name})", flush=True)
    return subprocess.call(argv, env=env)


def _summary(report: Path, name: str) -> dict[str, object]:
    """Operations, examples and how many got past authentication and validation."""
    statuses: Counter[int] = Counter()
    operations: Counter[str] = Counter()
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder") or {}
        for interaction in (recorder.get("interactions") or {}).values():
            response = interaction.get("response")
            if response:
                statuses[int(response["status_code"])] += 1
                operations[recorder.get("label", "?")] += 1
    examples = sum(statuses.values())
    past = sum(n for status, n in statuses.items() if status not in REFUSED)
    return {
        "credential": name,
        "operations": len(operations),
        "examples": examples,
        "examples_per_operation": round(examples / max(1, len(operations)), 1),
        "past_auth_and_validation": round(past / max(1, examples), 3),
        "server_errors": sum(n for status, n in statuses.items() if status >= 500),
        "statuses": dict(sorted(statuses.items())),
    }


def main() -> int:
    admin = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hardened_test")
    with temporary_database(admin, prefix="fuzz", scheme=None) as database:
        upgrade(database)
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {DEFAULT_APP_ROLE} LOGIN")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        work = Path(tempfile.mkdtemp(prefix="schemathesis-"))
        crm_port = _free_port()
        crm = _fake_crm(crm_port, work / "crm.log")
        proc = _serve(database, port, work / "server.log", f"http://127.0.0.1:{crm_port}")
        try:
            _wait(url, proc)
            key, token = _credentials(url)
            codes = [
                _run(url, key, "api key", work / "key.ndjson"),
                _run(
                    url,
                    token,
                    "user token",
                    work / "token.ndjson",
                    "--exclude-path-regex",
                    "^/auth/(logout|logout-all|password)$",
                ),
            ]
            summaries = [
                _summary(work / "key.ndjson", "api key"),
                _summary(work / "token.ndjson", "user token"),
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            crm.terminate()
            crm.wait(timeout=30)
        for summary in summaries:
            print(json.dumps(summary))
        errors = [
            line
            for line in (work / "server.log").read_text().splitlines()
            if '"status": 500' in line
        ]
        if any(codes) or any(s["server_errors"] for s in summaries) or errors:
            print("\n".join(errors[-20:]))
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
