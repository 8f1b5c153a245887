"""User authentication for shopfront: the hardened.auth parts wired to settings.

Keys: every secret purpose gets its own HKDF subkey (refresh-token hashing,
reset-token hashing, CSRF signing), so one configured secret never does two
jobs. Token store: Redis when configured; in strict mode
(``AUTH_REQUIRE_REDIS_FOR_TOKENS``) an unreachable store is a 503 with
``Retry-After``, otherwise a visible in-process fallback (`FallbackStore`:
tokens issued during the outage live in that worker only and die with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Request

from hardened.auth.passwords import PasswordHasher, PasswordPolicy
from hardened.auth.refresh import RefreshConfig, RefreshTokens
from hardened.auth.tokens import AccessClaims, AccessTokenConfig, AccessTokens, issued_before
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
from shopfront.state import AppState, app_state

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from hardened._types import Scope
    from hardened.auth.websockets import RevocationBus
    from hardened.stores import Store
    from shopfront.settings import Settings

__all__ = [
    "ACCESS_COOKIE",
    "SESSION_COOKIE",
    "Auth",
    "CurrentUser",
    "build_auth",
    "secret_value",
    "store_call",
]

T = TypeVar("T")

SESSION_COOKIE = "session"
ACCESS_COOKIE = "access_token"
STORE_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class Auth:
    hasher: PasswordHasher
    access: AccessTokens
    refresh: RefreshTokens
    reset_key: bytes
    csrf: CSRFPolicy
    registry: SocketRegistry
    bus: RevocationBus
    strict: bool
    access_ttl: int


def secret_value(settings: Settings, name: str) -> str:
    """A secret setting's value (config fills or refuses missing ones before we get here)."""
    value = getattr(settings, name)
    assert value is not None  # noqa: S101 - filled in development, required elsewhere
    return str(value.get_secret_value())


def build_auth(settings: Settings, store: Store, redis_client: Any | None) -> Auth:
    """Every auth component of the service, from its settings."""
    session_secret = secret_value(settings, "session_secret")
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
            )
        ),
        refresh=RefreshTokens(
            store,
            key=derive_key(session_secret, "shopfront refresh tokens"),
            config=RefreshConfig(
                ttl=float(settings.refresh_token_ttl), grace=settings.refresh_grace_seconds
            ),
            on_revoked=on_revoked,
        ),
        reset_key=derive_key(session_secret, "shopfront password resets"),
        csrf=CSRFPolicy(
            secret=derive_key(secret_value(settings, "cookie_secret"), "shopfront csrf"),
            session_cookie=SESSION_COOKIE,
            cookie_secure=settings.cookie_secure,
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
    s = state.settings
    if s.auth_maintenance_mode:
        retry = s.auth_maintenance_retry_after
        raise MaintenanceMode(s.auth_maintenance_message, retry_after=retry)


def bearer_token(request: Request) -> str | None:
    """The access token from ``Authorization: Bearer`` or, in cookie mode, its cookie."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.cookies.get(ACCESS_COOKIE)


_VERIFIED = "shopfront.verified_access"


def verified_access(scope: Scope, access: AccessTokens, token: str) -> AccessClaims:
    """``access.verify(token)``, once per request: the verdict is kept in the ASGI state.

    The idempotency scope (middleware) and the route's auth dependency both need
    the token's claims; the signature is checked once, by whichever asks first.
    """
    state = scope.setdefault("state", {})
    kept = state.get(_VERIFIED)
    if kept is not None and kept[0] == token:
        claims: AccessClaims = kept[1]
        return claims
    claims = access.verify(token)
    state[_VERIFIED] = (token, claims)
    return claims


async def verify_access(auth: Auth, token: str, scope: Scope | None = None) -> AccessClaims:
    """Verify a JWT and refuse it when the user logged out everywhere after it was issued."""
    access = auth.access
    claims = access.verify(token) if scope is None else verified_access(scope, access, token)
    not_before = await store_call(lambda: auth.refresh.not_before(claims.sub))
    if issued_before(claims, not_before):
        raise Unauthorized("The session was signed out.", code="auth.token_revoked")
    return claims


async def current_user(request: Request, auth: Annotated[Auth, Depends(auth_of)]) -> AccessClaims:
    """Dependency: the signed-in user's verified access-token claims."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized(
            "Sign in first.",
            code="auth.missing_credentials",
            headers={"www-authenticate": "Bearer"},
        )
    return await verify_access(auth, token, request.scope)


CurrentUser = Annotated[AccessClaims, Depends(current_user)]


def revocation_listener(auth: Auth) -> AbstractAsyncContextManager[None]:
    """Apply revocations from every worker to this worker's sockets while the app runs."""
    return listening(auth.bus, auth.registry)
