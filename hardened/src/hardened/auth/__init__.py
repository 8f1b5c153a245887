"""Authentication and authorization: passwords, tokens, refresh families, roles, WebSockets.

Needs the ``auth`` extra (and ``redis`` for the Redis-backed pieces).
`RevocationEvent` is what the refresh store reports (a family revoked, and
why); `SocketRevocation` is what the socket bus carries to every worker (close
this user's sockets, or one session's).
"""

from hardened.auth.passwords import (
    PasswordHasher,
    PasswordPolicy,
    PasswordTooLong,
    PasswordTooShort,
    Verification,
)
from hardened.auth.permissions import (
    Requirement,
    Roles,
    public,
    require_identity,
    requirement_of,
    signed_in,
)
from hardened.auth.refresh import (
    FamilyInfo,
    InvalidRefreshToken,
    Issued,
    RefreshConfig,
    RefreshTokens,
    RevocationEvent,
    Rotated,
    TokenReused,
)
from hardened.auth.tokens import (
    AccessClaims,
    AccessTokenConfig,
    AccessTokens,
    revoked_error,
)
from hardened.auth.websockets import (
    BEARER_SUBPROTOCOL,
    MemoryRevocationBus,
    MessageRateLimit,
    RedisRevocationBus,
    RevocationBus,
    SocketRegistry,
    SocketRevocation,
    TicketStore,
    error_frame,
    listening,
    reject,
    websocket_credentials,
    websocket_ticket,
)

__all__ = [
    "BEARER_SUBPROTOCOL",
    "AccessClaims",
    "AccessTokenConfig",
    "AccessTokens",
    "FamilyInfo",
    "InvalidRefreshToken",
    "Issued",
    "MemoryRevocationBus",
    "MessageRateLimit",
    "PasswordHasher",
    "PasswordPolicy",
    "PasswordTooLong",
    "PasswordTooShort",
    "RedisRevocationBus",
    "RefreshConfig",
    "RefreshTokens",
    "Requirement",
    "RevocationBus",
    "RevocationEvent",
    "Roles",
    "Rotated",
    "SocketRegistry",
    "SocketRevocation",
    "TicketStore",
    "TokenReused",
    "Verification",
    "error_frame",
    "listening",
    "public",
    "reject",
    "require_identity",
    "requirement_of",
    "revoked_error",
    "signed_in",
    "websocket_credentials",
    "websocket_ticket",
]
