"""The README's set-up commands work on a copy of the tree with nothing configured."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
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
