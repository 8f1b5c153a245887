"""The README's set-up commands work on a copy of the tree with nothing configured."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert block, "README must open with a sh code block of set-up commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def test_readme_serve_command_answers_ready_and_docs(tmp_path: Path) -> None:
    """The README's serve command, run verbatim in a fresh copy, serves /health/ready and /docs."""
    commands = _readme_commands()
    serve = next(c for c in commands if c.startswith("uv run shopfront serve"))
    assert any(c == "uv run pytest" for c in commands)
    uv = shutil.which("uv")
    assert uv, "uv must be on PATH to run the README commands"
    _copy_tree(tmp_path)
    port = _free_port()
    argv = [uv if part == "uv" else part for part in shlex.split(serve)]
    argv = [
        str(port) if prev == "--port" else part
        for prev, part in zip(["", *argv[:-1]], argv, strict=True)
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT"))
        and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        if ready is None:
            proc.kill()
            pytest.fail(f"service did not answer: {proc.communicate()[0].decode()[-2000:]}")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ok"
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5)
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
        assert (tmp_path / "shopfront.db").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _production_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Production") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "README's Production section must hold a sh block of commands"
    return block.group(1)


@pytest.mark.timeout(300)  # three `uv run`s, migrations, two workers and two password hashes
def test_readme_production_start_serves_from_an_empty_database(
    database_url: str, redis_url: str
) -> None:
    """The README's production commands, run on a new database, serve a shop as the app role."""
    server = urlsplit(database_url)
    name = f"sf_prod_{secrets.token_hex(4)}"  # database and role: names nothing else uses
    port = _free_port()
    script = (
        _production_block()
        .replace("127.0.0.1:5432", f"{server.hostname}:{server.port or 5432}")
        .replace("/shopfront\n", f"/{name}\n")
        .replace("postgres shopfront\n", f"postgres {name}\n")
        .replace("shopfront_app", name)
        .replace("redis://127.0.0.1:6379/0", redis_url)
        .replace("--port 8000", f"--port {port}")
    )
    assert script.count(name) == 4, script  # createdb, two URLs, the role
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT"))
        and k not in {"DATABASE_URL", "REDIS_URL", "MIGRATION_DATABASE_URL", "ENVIRONMENT"}
    }
    env["DB_APP_ROLE"] = name  # the README's role is the default one, renamed here
    env["SHUTDOWN_DRAIN_SECONDS"] = "0"  # the drain has its own tests; this one only stops
    admin = urlunsplit(server._replace(path="/postgres"))
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    host = {"host": "api.example.com"}
    try:
        ready = _wait_ready(proc, f"{base}/health/ready", host)
        assert ready.status_code == 200, ready.text
        shop = httpx.post(
            f"{base}/tenants",
            headers=host,
            json={
                "name": "Acme",
                "domain": "acme.myshopify.com",
                "owner_email": "owner@acme.test",
                "owner_password": "correct horse battery staple",
            },
            timeout=30,
        )
        assert shop.status_code == 201, shop.text
        login = httpx.post(
            f"{base}/auth/login",
            headers=host,
            json={
                "shop": "acme.myshopify.com",
                "email": "owner@acme.test",
                "password": "correct horse battery staple",
            },
            timeout=30,
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        mine = httpx.get(
            f"{base}/tenants/{shop.json()['id']}",
            headers={**host, "authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert mine.status_code == 200, mine.text
        with psycopg.connect(admin, autocommit=True) as conn:
            users = conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchall()
        assert users == [(name,)]  # the workers connect as the app role, nothing else
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output = proc.communicate(timeout=60)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0].decode()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')
    assert "ready to deploy" in output, output[-3000:]
    assert "NOT ready" not in output, output[-3000:]
    assert f"role {name} can log in (is the app role" in output


def _wait_ready(proc: subprocess.Popen[bytes], url: str, headers: dict[str, str]) -> httpx.Response:
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the commands stopped: {proc.communicate()[0].decode()[-3000:]}")
        try:
            return httpx.get(url, headers=headers, timeout=5)
        except httpx.TransportError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"service did not answer: {proc.communicate()[0].decode()[-3000:]}")
