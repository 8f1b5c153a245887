"""shopfront settings, read from the environment.

With nothing set, the service runs on embedded defaults: SQLite in the working
directory and in-process stores, development mode with random secrets
generated once into ``./.shopfront-secrets`` (mode 0600, git-ignored).
Production sets ``ENVIRONMENT=production``, real secrets, and ``DATABASE_URL`` /
``REDIS_URL``.

Rotating a secret (every one of them rotates): set the new value, move the old
one to ``<NAME>_PREVIOUS`` (same rules as the secret; never generated in
development), and drop it after the overlap.

* ``JWT_SECRET``: give the new key a new ``JWT_KEY_ID`` and name the old one
  ``JWT_PREVIOUS_KEY_ID`` (tokens carry their key id). The previous key
  verifies until ``JWT_PREVIOUS_UNTIL`` (an ISO datetime with a time zone)
  when set, else for ``ACCESS_TOKEN_TTL`` (plus the 30 s leeway) after this
  process started: enough for a one-off deploy, but every restart during the
  overlap extends it, so set ``JWT_PREVIOUS_UNTIL`` to rotation time + TTL
  when restarts are routine. Tokens issued before key ids existed verify
  against the current key only: roll out ``JWT_KEY_ID`` one TTL before the
  first rotation.
* ``SESSION_SECRET``: the previous value keeps refresh-token families (each
  moves to the new key at its next refresh; keep it ``REFRESH_TOKEN_TTL``)
  and idempotency records (keep it ``IDEMPOTENCY_RETENTION``) working;
  outstanding password-reset and invitation tokens do not survive the
  rotation yet.
* ``COOKIE_SECRET``: the previous value keeps CSRF tokens of signed-in
  browsers valid (keep it ``REFRESH_TOKEN_TTL``; a browser that fails reloads).

``SECRETS_ROTATED_AT`` (an ISO date) records the last rotation; ``shopfront
check`` reports every secret older than ``SECRET_MAX_AGE_DAYS`` by variable
name: a failed check in production, a warning elsewhere.
"""

from __future__ import annotations

import hmac
import os
from datetime import UTC, date, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from hardened.config import Check, ConfigError, HardenedSettings, SettingProblem, secret_problem
from hardened.crypto import Keyring, derive_key
from shopfront.outbound import governor_checks

__all__ = ["DEV_SECRETS_FILE", "Settings", "async_database_url"]

DEV_SECRETS_FILE = ".shopfront-secrets"

CsvList = Annotated[tuple[str, ...], NoDecode]
KEY_ID = r"^[A-Za-z0-9._-]{1,64}$"
# Optional secrets, set only during a rotation: never generated, never required.
PREVIOUS_SECRETS = {
    "jwt_secret_previous": "jwt_secret",
    "session_secret_previous": "session_secret",
    "cookie_secret_previous": "cookie_secret",
}


def async_database_url(url: str) -> str:
    """Map a plain ``postgresql://`` / ``sqlite://`` URL to its async SQLAlchemy driver."""
    for plain, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    return url


class Settings(HardenedSettings):
    """Every knob of the service; names are the environment variables, upper-cased."""

    # The embedded default keeps sessions and idempotency records in ./shopfront.db:
    # its development secrets must survive a restart too (git-ignored).
    dev_secrets_file: ClassVar[str | None] = DEV_SECRETS_FILE

    database_url: str = "sqlite+aiosqlite:///shopfront.db"
    migration_database_url: str | None = None
    """The owner connection for migrations; the app itself connects as DB_APP_ROLE."""
    db_app_role: str = Field(default="shopfront_app", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    redis_url: str | None = None

    jwt_secret: SecretStr | None = None
    session_secret: SecretStr | None = None
    cookie_secret: SecretStr | None = None
    jwt_secret_previous: SecretStr | None = None
    session_secret_previous: SecretStr | None = None
    cookie_secret_previous: SecretStr | None = None
    encryption_key: SecretStr | None = None
    """The key-encryption keyring (``ENCRYPTION_KEY``): ``id:key`` entries, first primary,
    each key 32 random bytes in hex or base64 (``shopfront keygen`` prints one). Required
    in production; elsewhere, when unset, one key is derived from ``SESSION_SECRET``."""
    """The values before the last rotation, accepted (never used to sign) during the overlap."""
    jwt_key_id: str = Field(default="k1", pattern=KEY_ID)
    """The ``kid`` of ``JWT_SECRET`` in every access token's header."""
    jwt_previous_key_id: str | None = Field(default=None, pattern=KEY_ID)
    """The ``kid`` ``JWT_SECRET_PREVIOUS`` signed with (required with it)."""
    jwt_previous_until: AwareDatetime | None = None
    """When ``JWT_SECRET_PREVIOUS`` stops verifying; unset: ``ACCESS_TOKEN_TTL`` after start-up."""
    secrets_rotated_at: date | None = None
    """The date the secrets were last rotated (ISO), for ``shopfront check``."""
    secret_max_age_days: int = Field(default=90, ge=1, le=3650)
    """Days a secret may go unrotated before ``shopfront check`` reports it."""

    allowed_hosts: CsvList = ("*",)
    trusted_proxies: CsvList = ()
    cors_origins: CsvList = ()
    cors_origin_patterns: CsvList = ("https://*.myshopify.com",)
    hsts: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    tenant_domain_suffixes: CsvList = ("myshopify.com",)
    auth_require_redis_for_tokens: bool = False
    auth_maintenance_mode: bool = False
    auth_maintenance_message: str = Field(
        default="Sign-in is paused for maintenance. Please try again shortly.", max_length=500
    )
    auth_maintenance_retry_after: int = Field(default=300, ge=1, le=86_400)
    jwt_issuer: str = "shopfront"
    jwt_audience: str = "shopfront-api"
    access_token_ttl: int = Field(default=900, ge=60, le=3600)
    refresh_token_ttl: int = Field(default=30 * 86_400, ge=3600)
    refresh_grace_seconds: float = Field(default=10.0, ge=0, le=30)
    password_scheme: Literal["argon2id", "bcrypt"] = "argon2id"  # noqa: S105 - a scheme name
    bcrypt_rounds: int = Field(default=14, ge=12, le=16)
    password_hashing_concurrency: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) - 1), ge=1, le=64
    )
    """Hashes at once; leave a core to the event loop, or every request stalls behind them."""
    cookie_secure: bool | None = None
    """``Secure`` on session and CSRF cookies; unset: on outside development only."""
    rate_limit_tenant: str = Field(default="1000/900", pattern=r"^\d+/\d+$")
    """Requests per seconds for each shop on tenant routes (seed: 1000 per 15 min)."""
    rate_limit_login: str = Field(default="5/900", pattern=r"^\d+/\d+$")
    """Login attempts per seconds, per account and per client IP (seed: 5 per 15 min)."""
    rate_limit_password_reset: str = Field(default="3/3600", pattern=r"^\d+/\d+$")
    """Reset requests per seconds, per account (3 per hour)."""
    rate_limit_catalog: str = Field(default="10/60", pattern=r"^\d+/\d+$")
    """Catalog reads per seconds, per shop and caller (seed 000: 10 per minute)."""
    rate_limit_orders: str = Field(default="60/60", pattern=r"^\d+/\d+$")
    """Order writes per seconds, per shop and caller (the seed names no number: 1 per second)."""
    rate_limit_signup: str = Field(default="10/3600", pattern=r"^\d+/\d+$")
    """New shops and accepted invitations per seconds, per client IP (each hashes a password)."""
    rate_limit_uploads: str = Field(default="10/3600", pattern=r"^\d+/\d+$")
    """File uploads (bulk imports) per seconds, per shop (seed 003: limit upload endpoints)."""
    rate_limit_sms: str = Field(default="10/60", pattern=r"^\d+/\d+$")
    """SMS sends per seconds, per shop (seed 003: 10 per minute)."""
    rate_limit_webhooks: str = Field(default="100/60", pattern=r"^\d+/\d+$")
    """Inbound webhooks per seconds, per source (seed 003: 100 per minute)."""
    rate_limit_socket_messages: str = Field(default="600/60", pattern=r"^\d+/\d+$")
    """WebSocket messages per seconds, per user over all their sockets (seed 002)."""
    idempotency_retention: int = Field(default=86_400, ge=60, le=30 * 86_400)
    """Seconds a completed Idempotency-Key result is replayed (24 h, as the seeds asked)."""
    idempotency_lease: float = Field(default=5.0, gt=0, le=3600)
    """Seconds a request holds its key without a heartbeat (sent every third of it) before a
    retry may take over: how long a crashed worker's keys answer 409."""
    max_in_flight_requests: int = Field(default=200, ge=0, le=100_000)
    """Requests a worker serves at once; above it new ones get 503 + Retry-After (0: off)."""
    shutdown_drain_seconds: float = Field(default=5.0, ge=0, le=300)
    """After SIGTERM: seconds of serving with `Connection: close` and readiness 503, so load
    balancers move away; keep it at least the keep-alive timeout (5 s)."""
    shutdown_grace_seconds: float = Field(default=20.0, gt=0, le=300)
    """Then: seconds in-flight requests get to finish (drain + grace < the orchestrator's kill)."""
    invitation_ttl: int = Field(default=7 * 86_400, ge=60, le=30 * 86_400)
    """Seconds an invitation to join a shop stays valid."""
    db_pool_size: int = Field(default=10, ge=1, le=500)
    """Connections each worker keeps open to PostgreSQL (see the README on sizing)."""
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    """Extra connections a worker may open under load, closed again when idle."""
    db_pool_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds a request waits for a free connection before it is a 503 with Retry-After."""
    idempotency_pool_size: int = Field(default=2, ge=1, le=50)
    """Connections each worker reserves for idempotency records, so a 5xx can release its
    key while the business pool is exhausted."""
    reservation_ttl: int = Field(default=86_400, ge=60)
    """Seconds a credit reservation holds before the expiry job releases it."""
    housekeeping_interval: float = Field(default=60.0, ge=0)
    """Seconds between sweeps of expired holds and idempotency records (0: off)."""
    sim_provider_url: str | None = None
    kyc_provider_url: str | None = None
    """The KYC provider (``POST /verifications``); unset: offline checks (Aadhaar Verhoeff
    digit, PAN format) by `shopfront.kyc.LocalKycVerifier`."""
    """The SIM provider's base URL; unset, activation answers 503 sim.not_configured."""
    sim_activation_price: int = Field(default=500, ge=0)
    """Credits one SIM activation costs."""
    crm_url: str | None = None
    """The CRM's base URL (the shops' telecom catalogs); unset, those reads answer 503
    crm.not_configured."""
    crm_client_id: str | None = None
    """With ``CRM_CLIENT_SECRET``: the CRM wants a bearer token from ``POST /oauth/token``
    (client credentials), kept for ``CRM_TOKEN_TTL_MS`` and renewed on a session expiry."""
    crm_client_secret: str | None = Field(default=None, repr=False)
    """The CRM's client secret: its own format, so not held to the service's secret rules
    (those are for keys this service makes); never shown (repr, logs redact ``*secret*``)."""
    cache_redis_timeout: float = Field(default=0.5, gt=0, le=10)
    """Seconds a cache read or write may wait for Redis before the cache fails open (the source
    answers) for a second. Short, so a hung Redis costs little; not shorter than the event
    loop's lag in a burst (about 0.2 s for 200 requests arriving at once in one worker), or
    the cache gives up exactly when it is needed."""
    cache_ttl_catalog: float = Field(default=300.0, gt=0, le=86_400)
    """Seconds plans, add-ons, installations and the shop's catalog list stay fresh (then as
    long again served stale while one refresh runs, or while the source is down)."""
    cache_ttl_static: float = Field(default=900.0, gt=0, le=86_400)
    """Seconds categories and catalog metadata stay fresh (and as long again stale)."""
    cache_ttl_volatile: float = Field(default=60.0, gt=0, le=86_400)
    """Seconds availability stays fresh (and as long again stale)."""
    test_count_in_flight: bool = False
    """Test-only: each response carries ``X-Test-In-Flight``, the requests the worker had in
    progress when it came in, so storm tests prove their concurrency server-side."""
    order_number_space: int | None = Field(default=None, ge=2, le=10**12)
    """Test-only: order numbers drawn from this many values, so a storm's numbers collide."""
    sim_crash_after: str | None = Field(
        default=None, pattern=r"^(reserve|provider_answered|activate|record|capture)$"
    )
    """Test-only fault injection: SIGKILL the process right after this phase commits
    (``provider_answered``: after the provider call, before its recovery point)."""
    auto_migrate: bool | None = None
    access_log: bool = False
    """One line per request (uvicorn's access log); ``serve --access-log`` turns it on."""
    log_json: bool | None = None

    @field_validator(
        "allowed_hosts",
        "trusted_proxies",
        "cors_origins",
        "cors_origin_patterns",
        "tenant_domain_suffixes",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _fault_injection_only_in_tests(self) -> Settings:
        if self.sim_crash_after is not None and self.environment != "test":
            msg = "SIM_CRASH_AFTER is fault injection for tests: set ENVIRONMENT=test"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _test_probes_only_in_tests(self) -> Settings:
        for name in ("test_count_in_flight", "order_number_space"):
            if getattr(self, name) not in (None, False) and self.environment != "test":
                msg = f"{name.upper()} is a test probe: set ENVIRONMENT=test"
                raise ValueError(msg)
        return self

    @classmethod
    def secret_fields(cls) -> list[str]:
        """The required secrets: the ``*_PREVIOUS`` ones are optional (checked on their own)."""
        return [
            name
            for name in super().secret_fields()
            if name not in PREVIOUS_SECRETS and name != "encryption_key"
        ]

    @model_validator(mode="after")
    def _check_encryption_key(self) -> Settings:
        if self.encryption_key is None:
            if self.environment == "production":
                raise ConfigError([SettingProblem("ENCRYPTION_KEY", "is required")])
            return self
        try:
            Keyring.parse(self.encryption_key.get_secret_value())
        except ValueError as exc:
            raise ConfigError([SettingProblem("ENCRYPTION_KEY", str(exc))]) from None
        return self

    def keyring(self) -> Keyring:
        """The ``ENCRYPTION_KEY`` keyring (outside production without one: from SESSION_SECRET)."""
        if self.encryption_key is not None:
            return Keyring.parse(self.encryption_key.get_secret_value())
        assert self.session_secret is not None  # noqa: S101 - required outside development
        derived = derive_key(self.session_secret.get_secret_value(), "shopfront dev encryption key")
        return Keyring(primary="dev", keys={"dev": derived})

    @model_validator(mode="after")
    def _check_previous_secrets(self) -> Settings:
        problems = []
        for name, current in PREVIOUS_SECRETS.items():
            value = getattr(self, name)
            if value is None:
                continue
            env = self.env_name(name)
            old = value.get_secret_value()
            reason = secret_problem(old)
            now = getattr(self, current)
            if (
                reason is None
                and now is not None
                and hmac.compare_digest(old.encode(), now.get_secret_value().encode())
            ):
                reason = f"equals {self.env_name(current)}; set it to the value before that"
            if reason:
                problems.append(SettingProblem(env, reason))
        if self.jwt_secret_previous is not None:
            if self.jwt_previous_key_id is None:
                problems.append(
                    SettingProblem("JWT_PREVIOUS_KEY_ID", "is required with the previous secret")
                )
            elif self.jwt_previous_key_id == self.jwt_key_id:
                problems.append(
                    SettingProblem("JWT_PREVIOUS_KEY_ID", "must differ from JWT_KEY_ID")
                )
        if problems:
            raise ConfigError(problems)
        return self

    def secret_age_problems(self, today: date | None = None) -> list[str]:
        """One line per secret older than ``SECRET_MAX_AGE_DAYS``, naming it (never its value)."""
        if self.secrets_rotated_at is None:
            return []
        age = ((today or datetime.now(UTC).date()) - self.secrets_rotated_at).days
        if age <= self.secret_max_age_days:
            return []
        since = f"rotated {age} days ago ({self.secrets_rotated_at.isoformat()})"
        return [
            f"{self.env_name(name)} {since}, over SECRET_MAX_AGE_DAYS={self.secret_max_age_days}"
            for name in self.secret_fields()
        ]

    def secret_warnings(self, today: date | None = None) -> list[str]:
        """What ``shopfront check`` warns about: stale secrets outside production, unknown age."""
        if self.secrets_rotated_at is None:
            return ["SECRETS_ROTATED_AT is unset: the secrets' age is unknown"]
        return [] if self.environment == "production" else self.secret_age_problems(today)

    def _secret_age_checks(self) -> list[Check]:
        """In production a secret past its age fails readiness; elsewhere it is a warning."""
        if self.environment != "production" or self.secrets_rotated_at is None:
            return []
        problems = self.secret_age_problems()
        return [
            Check(
                f"secrets younger than {self.secret_max_age_days} days",
                not problems,
                "; ".join(problems) or f"rotated {self.secrets_rotated_at.isoformat()}",
            )
        ]

    @property
    def sqlalchemy_url(self) -> str:
        return async_database_url(self.database_url)

    @property
    def migrations_url(self) -> str:
        return self.migration_database_url or self.database_url

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_development if self.auto_migrate is None else self.auto_migrate

    @property
    def cookies_secure(self) -> bool:
        """Development serves plain HTTP on localhost, where a ``Secure`` cookie is never sent."""
        return not self.is_development if self.cookie_secure is None else self.cookie_secure

    @property
    def json_logs(self) -> bool:
        return not self.is_development if self.log_json is None else self.log_json

    def deploy_checks(self) -> list[Check]:
        """Base checks plus the ones a shop deploy needs."""
        return [
            *super().deploy_checks(),
            Check("DATABASE_URL is PostgreSQL", not self.is_sqlite, "SQLite is single-node only"),
            Check(
                "REDIS_URL is set",
                self.redis_url is not None,
                "in-process stores do not hold across workers",
            ),
            Check(
                "tokens require Redis",
                self.auth_require_redis_for_tokens and self.redis_url is not None,
                "AUTH_REQUIRE_REDIS_FOR_TOKENS=true with REDIS_URL",
            ),
            Check("HSTS is on", self.hsts, "HSTS=true behind TLS"),
            Check("cookies are Secure", self.cookies_secure, "COOKIE_SECURE=true (the default)"),
            Check("ALLOWED_HOSTS is explicit", "*" not in self.allowed_hosts, "no wildcard host"),
            Check(
                "ENCRYPTION_KEY is set",
                self.encryption_key is not None,
                "derived from SESSION_SECRET" if self.encryption_key is None else "keyring set",
            ),
            *governor_checks(),
            *self._secret_age_checks(),
        ]
