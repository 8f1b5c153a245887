"""User authentication for shopfront: the hardened.auth parts wired to settings.

Keys: every secret purpose gets its own HKDF subkey (refresh-token hashing,
reset and invitation tokens, CSRF signing), so one configured secret never does
two jobs. Rotation: each ``*_PREVIOUS`` secret derives the same subkeys, which
verify (never sign) during the overlap (see `shopfront.settings`; reset and
invitation keys have no previous yet). Token store: Redis when configured; in
strict mode (``AUTH_REQUIRE_REDIS_FOR_TOKENS``) an unreachable store is a 503 with
``Retry-After``, otherwise a visible in-process fallback (`FallbackStore`:
tokens issued during the outage live in that worker only and die with it).

An access token is valid while its session (refresh family) is live, checked
in one round trip (`user_claims`), so sign-out, reuse detection and
sign-out-everywhere end its access tokens at once. In non-strict mode, while
Redis is down, that check cannot be made: tokens are then accepted until they
expire (at most ``ACCESS_TOKEN_TTL``), logged as ``auth.session_unchecked`` —
the availability the operator chose.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import structlog
from fastapi import Depends

from hardened.auth.passwords import PasswordHasher, PasswordPolicy
from hardened.auth.refresh import RefreshConfig, RefreshTokens
from hardened.auth.tokens import (
    AccessClaims,
    AccessTokenConfig,
    AccessTokens,
    VerificationKey,
    revoked_error,
)
from hardened.auth.websockets import (
    MemoryRevocationBus,
    RedisRevocationBus,
    SocketRegistry,
    SocketRevocation,
    listening,
)
from hardened.crypto import derive_key
from hardened.errors import MaintenanceMode, ServiceUnavailable, StoreUnavailable, Unauthorized
from hardened.http import CSRFPolicy
from shopfront.models import ROLE_NAMES
from shopfront.state import AppState, app_state

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from hardened.auth.websockets import RevocationBus
    from hardened.stores import Store
    from shopfront.settings import Settings

__all__ = [
    "ACCESS_COOKIE",
    "SESSION_COOKIE",
    "Auth",
    "build_auth",
    "previous_secret",
    "revoke_sessions",
    "secret_value",
    "session_of_cookie",
    "store_call",
    "user_claims",
]

T = TypeVar("T")

SESSION_COOKIE = "session"
ACCESS_COOKIE = "access_token"
STORE_RETRY_AFTER = 5
ACCESS_LEEWAY = 30.0
_log = structlog.get_logger("shopfront.auth")


@dataclass(frozen=True, slots=True)
class Auth:
    hasher: PasswordHasher
    access: AccessTokens
    refresh: RefreshTokens
    sessions: RefreshTokens
    """Session checks, on the primary store only (see the module docstring)."""
    reset_key: bytes
    invitation_key: bytes
    csrf: CSRFPolicy
    registry: SocketRegistry
    bus: RevocationBus
    strict: bool
    access_ttl: int
    reset_previous: tuple[bytes, ...] = ()
    """Reset keys of ``SESSION_SECRET_PREVIOUS``: links mailed before a rotation still work."""
    invitation_previous: tuple[bytes, ...] = ()


def secret_value(settings: Settings, name: str) -> str:
    """A secret setting's value (config fills or refuses missing ones before we get here)."""
    value = getattr(settings, name)
    assert value is not None  # noqa: S101 - filled in development, required elsewhere
    return str(value.get_secret_value())


def previous_secret(settings: Settings, name: str, purpose: str) -> tuple[bytes, ...]:
    """The ``purpose`` subkey of ``<name>_previous`` during a rotation; empty otherwise."""
    value = getattr(settings, f"{name}_previous")
    return () if value is None else (derive_key(value.get_secret_value(), purpose),)


def _previous_jwt(settings: Settings) -> tuple[VerificationKey, ...]:
    """``JWT_SECRET_PREVIOUS`` under its kid, until ``JWT_PREVIOUS_UNTIL`` or one TTL from now."""
    value, kid = settings.jwt_secret_previous, settings.jwt_previous_key_id
    if value is None or kid is None:
        return ()
    until = settings.jwt_previous_until
    not_after = (
        until.timestamp()
        if until is not None
        else time.time() + settings.access_token_ttl + ACCESS_LEEWAY
    )
    return (VerificationKey(kid=kid, key=value.get_secret_value(), not_after=not_after),)


def build_auth(settings: Settings, store: Store, primary: Store, redis_client: Any | None) -> Auth:
    """Every auth component of the service, from its settings.

    ``store`` holds the tokens (a `FallbackStore` in non-strict mode), ``primary``
    is the store behind it, where sessions are checked.
    """
    session_secret = secret_value(settings, "session_secret")
    refresh_key = derive_key(session_secret, "shopfront refresh tokens")
    refresh_previous = previous_secret(settings, "session_secret", "shopfront refresh tokens")
    refresh_config = RefreshConfig(
        ttl=float(settings.refresh_token_ttl), grace=settings.refresh_grace_seconds
    )
    registry = SocketRegistry()
    bus: RevocationBus = (
        RedisRevocationBus(redis_client) if redis_client is not None else MemoryRevocationBus()
    )

    async def on_revoked(event: Any) -> None:
        await bus.publish(SocketRevocation(user_id=event.user_id, session_id=event.family_id))

    return Auth(
        hasher=PasswordHasher(
            PasswordPolicy(
                scheme=settings.password_scheme,
                bcrypt_rounds=settings.bcrypt_rounds,
                max_concurrency=settings.password_hashing_concurrency,
            )
        ),
        access=AccessTokens(
            AccessTokenConfig(
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                signing_key=secret_value(settings, "jwt_secret"),
                ttl=float(settings.access_token_ttl),
                leeway=ACCESS_LEEWAY,
                kid=settings.jwt_key_id,
                previous_keys=_previous_jwt(settings),
            )
        ),
        refresh=RefreshTokens(
            store,
            key=refresh_key,
            previous_keys=refresh_previous,
            config=refresh_config,
            on_revoked=on_revoked,
        ),
        sessions=RefreshTokens(
            primary, key=refresh_key, previous_keys=refresh_previous, config=refresh_config
        ),
        reset_key=derive_key(session_secret, "shopfront password resets"),
        invitation_key=derive_key(session_secret, "shopfront invitations"),
        reset_previous=previous_secret(settings, "session_secret", "shopfront password resets"),
        invitation_previous=previous_secret(settings, "session_secret", "shopfront invitations"),
        csrf=CSRFPolicy(
            secret=derive_key(secret_value(settings, "cookie_secret"), "shopfront csrf"),
            previous_secrets=previous_secret(settings, "cookie_secret", "shopfront csrf"),
            cookie_secure=settings.cookies_secure,
        ),
        registry=registry,
        bus=bus,
        strict=settings.auth_require_redis_for_tokens,
        access_ttl=settings.access_token_ttl,
    )


async def store_call(call: Callable[[], Awaitable[T]]) -> T:
    """Run a token-store operation; an unreachable store is a 503 with Retry-After."""
    try:
        return await call()
    except StoreUnavailable:
        raise ServiceUnavailable(
            "Sign-in is temporarily unavailable. Please retry shortly.",
            code="auth.token_store_unavailable",
            retry_after=STORE_RETRY_AFTER,
        ) from None


def auth_of(state: Annotated[AppState, Depends(app_state)]) -> Auth:
    """Dependency: the app's auth components."""
    return state.auth


def not_in_maintenance(state: Annotated[AppState, Depends(app_state)]) -> None:
    """Dependency for auth routes: 503 with the configured message during maintenance."""
    settings = state.settings
    if settings.auth_maintenance_mode:
        retry = settings.auth_maintenance_retry_after
        raise MaintenanceMode(settings.auth_maintenance_message, retry_after=retry)


async def revoke_sessions(auth: Auth, user_id: str) -> None:
    """Sign the user out everywhere: every session, refresh and access token ends now."""
    await store_call(lambda: auth.refresh.revoke_all(user_id))


def _bad_token(reason: str) -> Unauthorized:
    return Unauthorized(
        "The access token is invalid.",
        code="auth.invalid_token",
        context={"reason": reason},
        headers={"www-authenticate": 'Bearer error="invalid_token"'},
    )


async def _session_active(auth: Auth, claims: AccessClaims) -> bool:
    try:
        return await auth.sessions.session_active(claims.sub, claims.sid)
    except StoreUnavailable:
        if auth.strict:
            raise ServiceUnavailable(
                "Sign-in is temporarily unavailable. Please retry shortly.",
                code="auth.token_store_unavailable",
                retry_after=STORE_RETRY_AFTER,
            ) from None
        _log.warning("auth.session_unchecked", user_id=claims.sub)
        return True


async def user_claims(auth: Auth, token: str) -> AccessClaims:
    """A user's verified access-token claims: signature, claims, shop, role, live session."""
    claims = auth.access.verify(token)
    # Signed by us, so these hold unless the key leaked or the format changed: refuse, never 500.
    try:
        uuid.UUID(claims.tenant)
    except ValueError:
        raise _bad_token("tenant_not_uuid") from None
    if claims.extra.get("role") not in ROLE_NAMES:
        raise _bad_token("unknown_role")
    if not await _session_active(auth, claims):
        raise revoked_error()
    return claims


def session_of_cookie(value: str | None) -> str | None:
    """The session (family id) a refresh-token cookie names, without verifying it."""
    parts = (value or "").split(".")
    return parts[1] if len(parts) == 3 and parts[1] else None


def revocation_listener(auth: Auth) -> AbstractAsyncContextManager[None]:
    """Apply revocations from every worker to this worker's sockets while the app runs."""
    return listening(auth.bus, auth.registry)
