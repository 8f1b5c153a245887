"""Who is calling shopfront, worked out once per request by `hardened.http.IdentityMiddleware`.

Credentials, as the identity step hands them over:

* ``Authorization: Bearer sfk_…``: a shop API key (`shopfront.services.api_keys`),
  principal ``key:<key id>``, its own role;
* ``Authorization: Bearer <JWT>``: a member's access token, principal
  ``user:<user id>``, the role it was issued with, its session (``sid``) live;
* cookies (browsers): the ``access_token`` cookie, verified like the header,
  and the ``session`` cookie (the refresh token), which names the session a
  CSRF token is bound to. A session cookie alone (the access cookie has
  expired) is still a cookie session: `/auth/refresh` acts on it, so the CSRF
  guard checks it.

Every other component reads the `Identity` recorded here: the route's
permission, the tenant session, the idempotency scope (tenant + principal),
rate-limit keys, the CSRF guard. A lookup that cannot be made (the database
is unavailable) is recorded as its 503, never a 500.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from hardened.db import unavailable_error
from hardened.errors import HardenedError
from hardened.http import Credentials, Identity
from shopfront.auth import ACCESS_COOKIE, SESSION_COOKIE, session_of_cookie, user_claims
from shopfront.services.api_keys import API_KEY_PREFIX, authenticate_key

if TYPE_CHECKING:
    from hardened.auth.tokens import AccessClaims
    from hardened.http import Authenticate
    from shopfront.state import AppState

__all__ = ["CREDENTIAL_COOKIES", "authenticator", "tenant_of", "user_identity"]

CREDENTIAL_COOKIES = (ACCESS_COOKIE, SESSION_COOKIE)


def user_identity(claims: AccessClaims) -> Identity:
    """The identity a verified access token gives."""
    return Identity(
        principal=f"user:{claims.sub}",
        kind="user",
        tenant=claims.tenant,
        role=str(claims.extra["role"]),
        session=claims.sid,
        claims=claims,
    )


def authenticator(state: AppState) -> Authenticate:
    """The identity step's verifier for this app."""

    async def bearer(token: str) -> Identity:
        if token.startswith(API_KEY_PREFIX):
            key = await authenticate_key(state.db.sessions, token)
            return Identity(
                principal=f"key:{key.id}",
                kind="api_key",
                tenant=str(key.tenant_id),
                role=key.role,
                claims=key,
            )
        return user_identity(await user_claims(state.auth, token))

    async def cookies(found: dict[str, str]) -> Identity:
        session = session_of_cookie(found.get(SESSION_COOKIE))
        access = found.get(ACCESS_COOKIE)
        if not access:
            return Identity(session=session)
        try:
            return user_identity(await user_claims(state.auth, access))
        except HardenedError as refused:
            if session is None:
                raise
            return Identity(session=session, error=refused)

    async def authenticate(credentials: Credentials) -> Identity:
        try:
            if credentials.bearer is not None:
                return await bearer(credentials.bearer)
            return await cookies(dict(credentials.cookies))
        except HardenedError:
            raise
        except Exception as exc:
            unavailable = unavailable_error(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    return authenticate


def tenant_of(identity: Identity) -> uuid.UUID:
    """The tenant of an authenticated identity (validated when it was recorded)."""
    assert identity.tenant is not None  # noqa: S101 - every shopfront credential names one
    return uuid.UUID(identity.tenant)
