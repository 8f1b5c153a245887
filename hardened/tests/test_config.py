import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import SecretStr

from hardened.config import ConfigError, HardenedSettings, readiness, secret_problem

STRONG = secrets.token_urlsafe(48)


class AppSettings(HardenedSettings):
    jwt_secret: SecretStr | None = None
    session_secret: SecretStr | None = None
    port: int = 8000


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENVIRONMENT", "DEBUG", "JWT_SECRET", "SESSION_SECRET", "PORT"):
        monkeypatch.delenv(name, raising=False)


def test_production_refuses_missing_and_short_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up in production names every missing or short secret variable."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", "short-but-secret-value")
    with pytest.raises(ConfigError) as info:
        AppSettings.load()
    message = str(info.value)
    assert "JWT_SECRET: must be at least 32 bytes" in message
    assert "SESSION_SECRET: is required" in message
    assert "short-but-secret-value" not in message


def test_low_entropy_and_placeholder_secrets_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long but repetitive or placeholder secret is refused as well."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", "a" * 64)
    monkeypatch.setenv("SESSION_SECRET", "changeme-changeme-changeme-changeme")
    with pytest.raises(ConfigError) as info:
        AppSettings.load()
    names = {p.variable for p in info.value.problems}
    assert names == {"JWT_SECRET", "SESSION_SECRET"}
    assert "a" * 64 not in str(info.value)


def test_other_validation_errors_never_echo_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """A badly typed variable is named in the error but its value is not printed."""
    monkeypatch.setenv("PORT", "not-a-port-9f3a")
    with pytest.raises(ConfigError) as info:
        AppSettings.load()
    assert "PORT" in str(info.value)
    assert "not-a-port-9f3a" not in str(info.value)


def test_production_accepts_strong_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strong secrets in production load and the readiness report passes."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG)
    monkeypatch.setenv("SESSION_SECRET", secrets.token_hex(32))
    settings = AppSettings.load()
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == STRONG
    ready, report = readiness(settings)
    assert ready, report
    assert STRONG not in report


def test_development_generates_distinct_random_secrets() -> None:
    """Development fills unset secrets randomly per load, and readiness fails on them."""
    first, second = AppSettings.load(), AppSettings.load()
    assert first.jwt_secret is not None
    assert second.jwt_secret is not None
    assert first.jwt_secret.get_secret_value() != second.jwt_secret.get_secret_value()
    assert first.debug_enabled
    ready, report = readiness(first)
    assert not ready
    assert "[FAIL] JWT_SECRET is set" in report


def test_development_secrets_in_a_file_survive_a_restart(tmp_path: Path) -> None:
    """With dev_secrets_file, generated secrets are written once (0600) and read back."""

    class KeptSettings(AppSettings):
        dev_secrets_file: ClassVar[str | None] = str(tmp_path / ".dev-secrets")

    first, second = KeptSettings.load(), KeptSettings.load()
    assert first.jwt_secret is not None
    assert second.jwt_secret is not None
    assert first.jwt_secret.get_secret_value() == second.jwt_secret.get_secret_value()
    assert first.session_secret is not None
    assert first.jwt_secret.get_secret_value() != first.session_secret.get_secret_value()
    assert (tmp_path / ".dev-secrets").stat().st_mode & 0o777 == 0o600
    assert not readiness(first)[0]  # still "generated", never ready for production


def test_workers_starting_together_agree_on_one_secrets_file(tmp_path: Path) -> None:
    """Eight loads racing on a missing file all end up with the same secrets."""

    class KeptSettings(AppSettings):
        dev_secrets_file: ClassVar[str | None] = str(tmp_path / ".dev-secrets")

    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: KeptSettings.load(), range(8)))
    values = {s.jwt_secret.get_secret_value() for s in loaded if s.jwt_secret is not None}
    assert len(values) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / ".dev-secrets"]


def test_secret_problem_accepts_generated_tokens() -> None:
    """Generated url-safe and hex tokens of 32 bytes or more pass the rules."""
    for _ in range(200):
        assert secret_problem(secrets.token_urlsafe(32)) is None
        assert secret_problem(secrets.token_hex(32)) is None
