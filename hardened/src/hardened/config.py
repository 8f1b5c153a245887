"""Settings base with secret rules and a deploy-readiness report.

Seeds 000/001 shipped with a JWT secret that fell back to a default and
secrets short enough to brute-force. Here every field typed ``SecretStr`` is a
secret and follows the same rules:

* outside development it has no default: unset, short (< 32 bytes) or
  low-entropy values refuse start-up;
* in development an unset secret is replaced by a random one (never a constant
  baked into the code), so ``serve`` works on a fresh clone while no two
  checkouts, and no deploy, share a guessable value. A service that keeps state
  across restarts in development (a local database with idempotency records or
  sessions) names a ``dev_secrets_file``: the generated secrets are written
  there once (mode 0600, meant to be git-ignored) and read back on every start,
  so a restart does not turn yesterday's records into mismatches; without one
  they are random per process;
* errors name each bad variable and the rule it broke, never the value:
  pydantic's own messages echo inputs, so they are rebuilt here.

``ENVIRONMENT`` defaults to ``development`` so the first run needs no
configuration; `readiness` (``shopfront check``) fails until it is
``production`` with debug off and every secret strong.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import tempfile
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, Union, get_args, get_origin

from pydantic import SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "MIN_SECRET_BYTES",
    "Check",
    "ConfigError",
    "HardenedSettings",
    "SettingProblem",
    "readiness",
    "secret_problem",
]

MIN_SECRET_BYTES = 32
_MIN_DISTINCT = 10
_MIN_BITS_PER_CHAR = 3.0
_PLACEHOLDERS = ("changeme", "change-me", "password", "example", "your-secret", "insecure")
DEV_SECRET_PREFIX = "dev-generated."  # noqa: S105 - a marker, not a secret

Environment = Literal["development", "test", "production"]


@dataclass(frozen=True, slots=True)
class SettingProblem:
    """One variable that cannot be used, and why (never its value)."""

    variable: str
    reason: str


class ConfigError(Exception):
    """Start-up refused: lists every bad variable at once."""

    def __init__(self, problems: list[SettingProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p.variable}: {p.reason}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


def secret_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable as a secret, or None if it is."""
    raw = value.encode()
    if len(raw) < MIN_SECRET_BYTES:
        return f"must be at least {MIN_SECRET_BYTES} bytes (got {len(raw)})"
    lowered = value.lower()
    if any(p in lowered for p in _PLACEHOLDERS):
        return "looks like a placeholder; generate one with secrets.token_urlsafe(48)"
    counts = Counter(value)
    entropy = -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())
    if len(counts) < _MIN_DISTINCT or entropy < _MIN_BITS_PER_CHAR:
        return "does not look random enough (too few distinct characters)"
    return None


def _is_secret_annotation(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return any(_is_secret_annotation(a) for a in get_args(annotation))
    return False


class HardenedSettings(BaseSettings):
    """Base for a service's settings; subclass and add fields.

    Load with `load` (not the constructor) to get `ConfigError` instead of a
    pydantic error that may echo the offending value.
    """

    model_config = SettingsConfigDict(
        extra="ignore", hide_input_in_errors=True, frozen=True, validate_default=True
    )

    dev_secrets_file: ClassVar[str | None] = None
    """Where development keeps its generated secrets across restarts (None: per process)."""

    environment: Environment = "development"
    debug: bool | None = None
    """Stack traces in error bodies; defaults to on only in development."""

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    @property
    def debug_enabled(self) -> bool:
        return self.is_development if self.debug is None else self.debug

    @classmethod
    def secret_fields(cls) -> list[str]:
        return [n for n, f in cls.model_fields.items() if _is_secret_annotation(f.annotation)]

    @classmethod
    def env_name(cls, field: str) -> str:
        prefix = cls.model_config.get("env_prefix") or ""
        alias = cls.model_fields[field].alias
        return (alias or f"{prefix}{field}").upper()

    @model_validator(mode="before")
    @classmethod
    def _fill_development_secrets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        env = str(data.get("environment", "development")).lower()
        if env != "development":
            return data
        missing = [name for name in cls.secret_fields() if not data.get(name)]
        if missing:
            kept = _kept_secrets(cls.dev_secrets_file, cls.secret_fields())
            for name in missing:
                data[name] = kept[name]
        return data

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        problems = []
        for name in self.secret_fields():
            value = getattr(self, name)
            if value is None or not value.get_secret_value():
                if self.environment != "development":
                    problems.append(SettingProblem(self.env_name(name), "is required"))
                continue
            reason = secret_problem(value.get_secret_value())
            if reason:
                problems.append(SettingProblem(self.env_name(name), reason))
        if problems:
            raise ConfigError(problems)
        return self

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the environment (and overrides); raise `ConfigError` naming bad variables."""
        try:
            return cls(**overrides)
        except ConfigError:
            raise
        except ValidationError as exc:
            problems: list[SettingProblem] = []
            for err in exc.errors(include_input=False, include_url=False):
                ctx_error = (err.get("ctx") or {}).get("error")
                if isinstance(ctx_error, ConfigError):
                    problems.extend(ctx_error.problems)
                    continue
                field = str(err["loc"][0]) if err["loc"] else "settings"
                name = cls.env_name(field) if field in cls.model_fields else field.upper()
                problems.append(SettingProblem(name, err["msg"]))
            raise ConfigError(problems) from None

    def deploy_checks(self) -> list[Check]:
        """Readiness checks; subclasses extend with ``[*super().deploy_checks(), ...]``."""
        checks = [
            Check(
                "environment is production",
                self.environment == "production",
                f"ENVIRONMENT={self.environment}",
            ),
            Check("debug is off", not self.debug_enabled, "DEBUG must be false"),
        ]
        for name in self.secret_fields():
            env = self.env_name(name)
            value = getattr(self, name)
            generated = value is not None and value.get_secret_value().startswith(DEV_SECRET_PREFIX)
            checks.append(
                Check(
                    f"{env} is set",
                    not generated,
                    "generated for this process only" if generated else "set and strong",
                )
            )
        return checks


def _generate(names: list[str]) -> dict[str, str]:
    return {name: DEV_SECRET_PREFIX + secrets.token_urlsafe(48) for name in names}


def _kept_secrets(path: str | None, names: list[str]) -> dict[str, str]:
    """Development secrets from ``path`` (created once, atomically, mode 0600); random without."""
    if path is None:
        return _generate(names)
    target = Path(path)
    kept: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        loaded = json.loads(target.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            kept = {k: v for k, v in loaded.items() if isinstance(v, str)}
    if all(kept.get(name) for name in names):
        return kept
    fresh = {**_generate(names), **{k: v for k, v in kept.items() if v}}
    # Written beside the target and linked into place: two workers starting at once
    # agree on one file (the loser reads the winner's), and nobody reads half a file.
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".secrets-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(fresh, out)
        tmp.chmod(0o600)
        if kept:
            tmp.replace(target)
            return fresh
        try:
            target.hardlink_to(tmp)
        except FileExistsError:
            return _kept_secrets(path, names)
        return fresh
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the deploy-readiness report."""

    name: str
    ok: bool
    detail: str = ""


def readiness(settings: HardenedSettings, extra: Sequence[Check] = ()) -> tuple[bool, str]:
    """Render the readiness report; the bool says whether every check passed.

    ``extra`` are checks made elsewhere, typically by connecting to the database
    and Redis: a configuration that only reads well is not ready to deploy.
    """
    checks = [*settings.deploy_checks(), *extra]
    lines = [
        f"[{'ok' if c.ok else 'FAIL'}] {c.name}" + (f": {c.detail}" if c.detail else "")
        for c in checks
    ]
    ready = all(c.ok for c in checks)
    lines.append("ready to deploy" if ready else "NOT ready to deploy")
    return ready, "\n".join(lines)
