"""Authentication: passwords, access tokens, refresh-token families, WebSockets.

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
    issued_before,
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
    "RevocationBus",
    "RevocationEvent",
    "Rotated",
    "SocketRegistry",
    "SocketRevocation",
    "TicketStore",
    "TokenReused",
    "Verification",
    "error_frame",
    "issued_before",
    "listening",
    "reject",
    "revoked_error",
    "websocket_credentials",
    "websocket_ticket",
]
