"""Authentication and authorization: passwords, tokens, refresh families, roles, WebSockets.

Passwords and access tokens need the ``auth`` extra: their names are imported
on first use, so roles, permissions and the refresh/WebSocket pieces work
without it (``redis`` is needed only for the Redis-backed buses).
`RevocationEvent` is what the refresh store reports (a family revoked, and
why); `SocketRevocation` is what the socket bus carries to every worker (close
this user's sockets, or one session's).
"""

from typing import TYPE_CHECKING

from hardened._extras import lazy_exports
from hardened.auth._errors import (
    InvalidRefreshToken,
    PasswordTooLong,
    PasswordTooShort,
    TokenReused,
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
    Issued,
    RefreshConfig,
    RefreshTokens,
    RevocationEvent,
    Rotated,
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

if TYPE_CHECKING:
    from hardened.auth.passwords import PasswordHasher, PasswordPolicy, Verification
    from hardened.auth.tokens import (
        AccessClaims,
        AccessTokenConfig,
        AccessTokens,
        VerificationKey,
        revoked_error,
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
    "VerificationKey",
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

__getattr__ = lazy_exports(
    __name__,
    {
        "PasswordHasher": "passwords",
        "PasswordPolicy": "passwords",
        "Verification": "passwords",
        "AccessClaims": "tokens",
        "AccessTokenConfig": "tokens",
        "AccessTokens": "tokens",
        "VerificationKey": "tokens",
        "revoked_error": "tokens",
    },
)
