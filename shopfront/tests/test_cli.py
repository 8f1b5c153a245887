import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from shopfront.cli import main

_SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "SESSION_SECRET", "COOKIE_SECRET")


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS and k != "ENVIRONMENT"}
    env.update(values)
    return env


def test_serve_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    """`shopfront serve` in production with missing and short secrets exits 2 naming each one."""
    short = "short-secret-value-123"
    proc = subprocess.run(
        [sys.executable, "-m", "shopfront", "serve", "--port", "1"],
        env=_env(ENVIRONMENT="production", JWT_SECRET=short),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "JWT_SECRET: must be at least 32 bytes" in proc.stderr
    assert "SESSION_SECRET: is required" in proc.stderr
    assert "COOKIE_SECRET: is required" in proc.stderr
    assert short not in proc.stderr + proc.stdout
    assert not (tmp_path / "shopfront.db").exists()


def test_check_reports_not_ready_in_development(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`shopfront check` exits 1 on development defaults and says why."""
    monkeypatch.chdir(tmp_path)  # development keeps its secrets in the working directory
    for name in (*_SERVICE_VARS, "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] environment is production" in out
    assert "[FAIL] JWT_SECRET is set" in out
    assert "NOT ready to deploy" in out


def test_check_passes_on_a_production_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`shopfront check` exits 0 when production settings are complete."""
    env = {
        "ENVIRONMENT": "production",
        "DATABASE_URL": "postgresql://app@db.internal/shop",
        "REDIS_URL": "redis://cache.internal:6379/0",
        "AUTH_REQUIRE_REDIS_FOR_TOKENS": "true",
        "HSTS": "true",
        "ALLOWED_HOSTS": "api.shop.example",
        **{name: secrets.token_urlsafe(48) for name in _SERVICE_VARS[2:]},
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["check"]) == 0, capsys.readouterr().out
    assert "ready to deploy" in capsys.readouterr().out
