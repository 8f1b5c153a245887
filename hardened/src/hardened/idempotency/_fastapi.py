"""The handler's side: the request's `IdempotencyKey` and the FastAPI dependency for it.

Claim and replay stay in the middleware, the only place that can capture and
replay a whole response; the dependency checks the key early (400) and hands
the handler what the middleware claimed, e.g. as the ledger's operation key.
FastAPI is imported only when the dependency is built, so it stays optional.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hardened.idempotency._errors import IdempotencyKeyMissing, IdempotencyUnguarded
from hardened.idempotency._keys import MAX_KEY_LENGTH, validate_key
from hardened.idempotency._request import raw_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["STATE_KEY", "IdempotencyKey", "idempotency_key"]

STATE_KEY = "idempotency"
"""Where the middleware leaves a guarded request's `IdempotencyKey` in ``scope["state"]``."""


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """The validated key of a request, and whether the middleware holds its claim.

    When guarded, ``record`` and ``token`` name the claim, so a handler on a
    `SqlBackend` can write a recovery point in its own transaction
    (``checkpoint_in(session, record, token, phase, data)``); after a crash
    the retry finds it in ``phase``/``data`` and finishes instead of redoing.
    """

    value: str
    guarded: bool = False
    record: str | None = None
    token: int | None = None
    phase: str | None = None
    data: bytes | None = None


def idempotency_key(
    *,
    required: bool = True,
    guarded: bool = False,
    headers: Sequence[str] = ("idempotency-key", "x-idempotency-key"),
) -> Callable[..., Awaitable[IdempotencyKey | None]]:
    """A FastAPI dependency: the request's validated `IdempotencyKey` (None if optional and absent).

    Missing on a required route → 400 ``idempotency.key_missing``; malformed →
    400. It does not claim or replay; `IdempotencyMiddleware` does. With
    ``guarded=True`` a request that the middleware did not guard is a 500
    ``idempotency.unguarded``: the route would otherwise run without its
    exactly-once protection. The first of ``headers`` is declared in the route's
    OpenAPI (optional there, so a missing key gets this 400, not FastAPI's 422).
    """
    from fastapi import Header  # noqa: PLC0415 - fastapi stays optional
    from starlette.requests import Request  # noqa: PLC0415

    names = tuple(h.lower().encode("latin-1") for h in headers)
    need = "Required" if required else "Optional"
    declared = Header(
        None,
        alias="-".join(part.capitalize() for part in headers[0].split("-")),
        description=f"{need}: 1-{MAX_KEY_LENGTH} visible ASCII characters (a UUID), one per "
        "operation; a retry with the same key gets the first answer.",
    )

    async def dependency(request: Request, key: str | None = None) -> IdempotencyKey | None:
        state = request.scope.get("state") or {}
        found = state.get(STATE_KEY)
        if isinstance(found, IdempotencyKey):
            return found
        raw = raw_key(request.scope, names)
        if raw is None and required:
            raise IdempotencyKeyMissing("This request requires an Idempotency-Key header.")
        if guarded:
            raise IdempotencyUnguarded(context={"path": request.url.path})
        return None if raw is None else IdempotencyKey(validate_key(raw), guarded=False)

    params = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter(
            "key",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=declared,
        ),
    ]
    dependency.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return dependency
