"""Sign-up, sign-in, refresh, sign-out, sessions, passwords, email addresses; the socket.

Sign-up accepts an invitation; an email address is verified, or changed, by
redeeming a token mailed to it.

Two modes: bearer (tokens in the JSON body, for API clients) and cookie (HttpOnly
``session`` and ``access_token`` cookies plus a readable CSRF cookie, for
browsers; every unsafe request the identity step authenticated from a cookie
must echo the CSRF token, bound to the sign-in session, in a header).
"""

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response, WebSocket, WebSocketDisconnect, status
from pydantic import BaseModel, ConfigDict

from hardened.auth.tokens import AccessClaims
from hardened.auth.websockets import (
    BEARER_SUBPROTOCOL,
    MessageRateLimit,
    error_frame,
    websocket_credentials,
)
from hardened.errors import HardenedError, NotFound, Unauthorized
from hardened.fastapi import client_ip
from hardened.http import Credentials, Identity, issue_csrf_token
from hardened.ratelimit import Policy
from shopfront.auth import (
    ACCESS_COOKIE,
    SESSION_COOKIE,
    Auth,
    auth_of,
    not_in_maintenance,
    revoke_sessions,
    store_call,
)
from shopfront.identity import authenticator
from shopfront.limits import enforce
from shopfront.permissions import public, user_only
from shopfront.schemas import EmailStr, Password, ShopDomain, Token
from shopfront.services import accounts, members
from shopfront.state import AppState, app_state

__all__ = ["router", "sockets"]

router = APIRouter(prefix="/auth", tags=["auth"], dependencies=[Depends(not_in_maintenance)])
sockets = APIRouter(tags=["notifications"])

SOCKET_MESSAGES_PER_S = 5.0
SOCKET_BURST = 20
AuthDep = Annotated[Auth, Depends(auth_of)]
State = Annotated[AppState, Depends(app_state)]
User = Annotated[Identity, user_only()]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignupIn(_In):
    shop: ShopDomain
    invitation: Token
    password: Password


class LoginIn(_In):
    shop: ShopDomain
    email: EmailStr
    password: Password
    mode: Literal["bearer", "cookie"] = "bearer"


class RefreshIn(_In):
    refresh_token: Token | None = None


class PasswordChangeIn(_In):
    current_password: Password
    new_password: Password


class ResetRequestIn(_In):
    shop: ShopDomain
    email: EmailStr


class ResetConfirmIn(_In):
    shop: ShopDomain
    token: Token
    new_password: Password


class EmailTokenIn(_In):
    token: Token


class EmailChangeIn(_In):
    new_email: EmailStr
    password: Password


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str | None = None
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth token type name
    expires_in: int
    session_id: str


class SessionOut(BaseModel):
    session_id: str
    created_at: datetime
    last_used_at: datetime
    current: bool


def _utc(epoch_seconds: float) -> datetime:
    """The token store keeps epoch seconds; the API speaks ISO 8601 in UTC everywhere."""
    return datetime.fromtimestamp(epoch_seconds, tz=UTC)


def _answer(auth: Auth, tokens: accounts.Tokens, response: Response, *, cookie: bool) -> TokensOut:
    if not cookie:
        return TokensOut(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_in=tokens.expires_in,
            session_id=tokens.session_id,
        )
    secure = auth.csrf.cookie_secure
    response.set_cookie(
        SESSION_COOKIE,
        tokens.refresh_token,
        httponly=True,
        secure=secure,
        samesite="lax",
        max_age=int(auth.refresh.config.ttl),
    )
    response.set_cookie(
        ACCESS_COOKIE,
        tokens.access_token,
        httponly=True,
        secure=secure,
        samesite="lax",
        max_age=tokens.expires_in,
    )
    csrf = issue_csrf_token(auth.csrf, tokens.session_id)
    response.set_cookie(auth.csrf.csrf_cookie, csrf, secure=secure, samesite="lax")
    return TokensOut(
        access_token=tokens.access_token, expires_in=tokens.expires_in, session_id=tokens.session_id
    )


def _claims(user: Identity) -> AccessClaims:
    claims: AccessClaims = user.claims
    return claims


async def _tenant_or_none(state: AppState, domain: str) -> uuid.UUID | None:
    try:
        return await accounts.shop_id(state.db.sessions, domain)
    except NotFound:
        return None


@router.post("/signup", status_code=status.HTTP_201_CREATED, dependencies=[public()])
async def signup(body: SignupIn, request: Request, auth: AuthDep, state: State) -> dict[str, str]:
    """Join a shop by accepting an invitation (its email and role); any failure is the same 401.

    The new member is sent a verification mail: its token, redeemed at
    ``POST /auth/email/verify``, sets ``email_verified_at``. (The invitation
    does not prove the address: whoever invited sees its token.)
    """
    await enforce(state.limits, [(state.limits.signup_ip, client_ip(request) or "unknown")])
    tenant_id = await _tenant_or_none(state, body.shop)
    user_id = await members.accept_invitation(
        auth, state.db.sessions, tenant_id, token=body.invitation, password=body.password
    )
    assert tenant_id is not None  # noqa: S101 - accepting needs the shop
    email, token = await accounts.start_verification(auth, state.db.sessions, tenant_id, user_id)
    await state.mailer.email_verification(shop=body.shop, email=email, token=token)
    return {"user_id": str(user_id)}


@router.post("/login", dependencies=[public()])
async def login(
    body: LoginIn, request: Request, response: Response, auth: AuthDep, state: State
) -> TokensOut:
    """Sign in; starts a new session (refresh-token family), at most 10 per user."""
    limits = state.limits
    account = f"{body.shop.lower()}|{body.email}"
    client = client_ip(request) or "unknown"
    await enforce(limits, [(limits.login_account, account), (limits.login_ip, client)])
    meta = {"user_agent": request.headers.get("user-agent", "")[:200]}
    tokens = await accounts.login(
        auth, state.db.sessions, shop=body.shop, email=body.email, password=body.password, meta=meta
    )
    return _answer(auth, tokens, response, cookie=body.mode == "cookie")


@router.post("/refresh", dependencies=[public()])
async def refresh(
    body: RefreshIn, request: Request, response: Response, auth: AuthDep, state: State
) -> TokensOut:
    """Trade a refresh token for a new pair (body in bearer mode, cookie in cookie mode)."""
    cookie_token = request.cookies.get(SESSION_COOKIE)
    token = body.refresh_token or cookie_token
    if not token:
        raise Unauthorized("A refresh token is required.", code="auth.missing_credentials")
    tokens = await accounts.refresh(auth, state.db.sessions, token)
    return _answer(auth, tokens, response, cookie=body.refresh_token is None)


def _clear(response: Response, auth: Auth) -> None:
    for name in (SESSION_COOKIE, ACCESS_COOKIE, auth.csrf.csrf_cookie):
        response.delete_cookie(name)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(user: User, response: Response, auth: AuthDep) -> None:
    """Sign out this session: its refresh and access tokens stop working, its sockets close."""
    claims = _claims(user)
    await store_call(lambda: auth.refresh.revoke(claims.sub, claims.sid))
    _clear(response, auth)


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_all(user: User, response: Response, auth: AuthDep) -> None:
    """Sign out everywhere: every refresh and access token of the user fails from now on."""
    await revoke_sessions(auth, _claims(user).sub)
    _clear(response, auth)


@router.get("/sessions")
async def sessions(user: User, auth: AuthDep) -> list[SessionOut]:
    """The user's signed-in sessions."""
    claims = _claims(user)
    families = await store_call(lambda: auth.refresh.families(claims.sub))
    return [
        SessionOut(
            session_id=f.family_id,
            created_at=_utc(f.created_at),
            last_used_at=_utc(f.last_used_at),
            current=f.family_id == claims.sid,
        )
        for f in families
    ]


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(body: PasswordChangeIn, user: User, auth: AuthDep, state: State) -> None:
    """Change the password; every session, this one included, is signed out."""
    claims = _claims(user)
    await accounts.change_password(
        auth,
        state.db.sessions,
        tenant_id=uuid.UUID(claims.tenant),
        user_id=uuid.UUID(claims.sub),
        current=body.current_password,
        new=body.new_password,
    )


@router.post("/password-reset", status_code=status.HTTP_202_ACCEPTED, dependencies=[public()])
async def request_reset(body: ResetRequestIn, auth: AuthDep, state: State) -> dict[str, str]:
    """Ask for a reset link; the answer is the same whether or not the account exists."""
    account = f"{body.shop.lower()}|{body.email}"
    await enforce(state.limits, [(state.limits.password_reset, account)])
    token = await accounts.request_reset(auth, state.db.sessions, body.shop, body.email)
    if token is not None:
        await state.mailer.password_reset(shop=body.shop, email=body.email, token=token)
    return {"status": "accepted"}


@router.post(
    "/password-reset/confirm", status_code=status.HTTP_204_NO_CONTENT, dependencies=[public()]
)
async def confirm_reset(body: ResetConfirmIn, auth: AuthDep, state: State) -> None:
    """Set a new password with a single-use, expiring reset token."""
    await accounts.confirm_reset(auth, state.db.sessions, body.shop, body.token, body.new_password)


def _email_token_hits(state: AppState, request: Request) -> list[tuple[Policy, str]]:
    return [(state.limits.email_token_ip, client_ip(request) or "unknown")]


@router.post("/email/verify", status_code=status.HTTP_204_NO_CONTENT, dependencies=[public()])
async def verify_email(body: EmailTokenIn, request: Request, auth: AuthDep, state: State) -> None:
    """Confirm the address a sign-up mail went to: the token works once, for 48 hours.

    Unknown, used, superseded and expired tokens are all 400 ``auth.invalid_email_token``.
    """
    await enforce(state.limits, _email_token_hits(state, request))
    await accounts.verify_email(auth, state.db.sessions, body.token)


@router.post("/email/change", status_code=status.HTTP_202_ACCEPTED)
async def change_email(
    body: EmailChangeIn, user: User, auth: AuthDep, state: State
) -> dict[str, str]:
    """Ask to move the account to ``new_email`` (the current password is required).

    A confirmation token goes to the new address only, valid for an hour; the
    email changes when it is redeemed at ``POST /auth/email/change/confirm``.
    A wrong password is 401 ``auth.invalid_credentials``.
    """
    claims = _claims(user)
    await enforce(state.limits, [(state.limits.email_change, claims.sub)])
    shop, token = await accounts.request_email_change(
        auth,
        state.db.sessions,
        tenant_id=uuid.UUID(claims.tenant),
        user_id=uuid.UUID(claims.sub),
        new_email=body.new_email,
        password=body.password,
    )
    await state.mailer.email_change(shop=shop, email=body.new_email, token=token)
    return {"status": "accepted"}


@router.post(
    "/email/change/confirm", status_code=status.HTTP_204_NO_CONTENT, dependencies=[public()]
)
async def confirm_email_change(
    body: EmailTokenIn, request: Request, auth: AuthDep, state: State
) -> None:
    """Redeem an email-change token once: its address becomes the account's, verified.

    400 ``auth.invalid_email_token`` as for verification; 409 ``auth.email_taken`` when
    another member of the shop has the address by now (the token stays usable).
    """
    await enforce(state.limits, _email_token_hits(state, request))
    await accounts.confirm_email_change(auth, state.db.sessions, body.token)


@sockets.websocket("/ws/notifications")
async def notifications(websocket: WebSocket) -> None:
    """Order and campaign notifications; authenticated before accept, closed on sign-out."""
    state: AppState = websocket.app.state.shopfront
    auth = state.auth
    token = websocket_credentials(websocket.scope)
    claims: AccessClaims | None = None
    if token is not None:
        with contextlib.suppress(HardenedError):
            identity = await authenticator(state)(Credentials(bearer=token))
            claims = identity.claims if identity.kind == "user" else None
    if claims is None:  # closing before accept answers the handshake with 403
        await websocket.close(code=1008, reason="unauthorized")
        return
    await websocket.accept(subprotocol=BEARER_SUBPROTOCOL)
    handle = auth.registry.register(claims.sub, claims.sid, websocket.close)
    limit = MessageRateLimit(rate=SOCKET_MESSAGES_PER_S, burst=SOCKET_BURST)
    per_user = state.limits.socket_messages
    try:
        while True:
            message = await websocket.receive_text()
            # The socket's own burst check is free; the user's quota across all their
            # sockets and workers costs a store call, so it only sees what passed.
            if not limit.allow() or not (await per_user.check(claims.sub)).allowed:
                await websocket.send_text(error_frame("ratelimit.exceeded", "Too many messages."))
                await websocket.close(code=1008, reason="rate limited")
                break
            if message == "ping":
                await websocket.send_text("pong")
    except WebSocketDisconnect:
        pass
    finally:
        auth.registry.unregister(handle)
