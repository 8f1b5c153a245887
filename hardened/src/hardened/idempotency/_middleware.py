"""The idempotency middleware: claim, then replay, refuse or run and store, in pure ASGI.

Per guarded request one backend call claims the key (a replay needs nothing
more) and one stores the result; nothing is logged on those two paths, and a
lease that ends within one heartbeat interval costs one timer. The semantics
(what is stored, replayed, released, and how it fails closed) are in the
idempotency middleware guide; the refusals are in `_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from hardened.errors import HardenedError, PayloadTooLarge, StoreUnavailable, problem_for
from hardened.http import send_problem
from hardened.idempotency._config import HttpIdempotencyConfig, IdempotentRoute
from hardened.idempotency._contracts import Claimed, Completed, InFlight, Mismatch
from hardened.idempotency._errors import (
    IdempotencyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyResponseNotKept,
)
from hardened.idempotency._fastapi import STATE_KEY, IdempotencyKey
from hardened.idempotency._keys import fingerprints, key_hash_for_logs, scoped_key, validate_key
from hardened.idempotency._lease import FIRST_POLL, MAX_POLL, HeldLease
from hardened.idempotency._request import (
    Disconnected,
    fingerprint_payload,
    raw_key,
    read_body,
    sorted_query,
)
from hardened.idempotency._wire import (
    NOT_KEPT,
    NOT_KEPT_SIZE,
    STATUS,
    decode_response,
    encode_response,
)
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hardened.idempotency._contracts import Claim, IdempotencyBackend
    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["IdempotencyMiddleware"]

# A refused credential did nothing; storing it would replay the refusal after a fresh login.
_NEVER_STORED = frozenset({401, 403})
_REPLAYED_HEADER = (b"idempotent-replayed", b"true")

_log = structlog.get_logger("hardened.idempotency")
_requests = counter(
    "idempotency_requests_total",
    "Idempotency-guarded HTTP requests by outcome.",
    ["outcome"],
)
_OUTCOMES = (
    "executed",
    "replayed",
    "in_flight",
    "mismatch",
    "missing",
    "invalid",
    "released",
    "not_stored",
    "lease_lost",
    "unavailable",
)
_count = {outcome: _requests.labels(outcome).inc for outcome in _OUTCOMES}


class _Guarded:
    """What the executing request captured so far (a plain class: one per guarded request)."""

    __slots__ = (
        "body",
        "chunks",
        "client_gone",
        "disconnect",
        "done",
        "headers",
        "raw_key",
        "scoped",
        "settled",
        "size",
        "status",
        "storable",
        "token",
        "waiter",
    )

    def __init__(self, raw_key: str, scoped: str, token: int, body: bytes | None) -> None:
        self.raw_key, self.scoped, self.token = raw_key, scoped, token
        self.body = body  # the request body the middleware read, handed to the app first
        self.status = self.size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.storable = True
        self.settled = self.client_gone = False
        self.done = False  # the outcome is stored or released
        self.disconnect: Message | None = None  # held back from the app until done
        self.waiter: asyncio.Event | None = None

    def finish(self) -> None:
        self.done = True
        if self.waiter is not None:
            self.waiter.set()


def _holding_disconnect(receive: Receive, guarded: _Guarded) -> Receive:
    """The app's ``receive``: the body already read, then ``http.disconnect`` held until done.

    Frameworks cancel a response when the client leaves (Starlette's
    `StreamingResponse` does). The handler has done its work by then, so the
    app is left to finish into a send that drops the data, and the result is
    stored for the retry instead of released.
    """

    async def hold() -> Message:
        body = guarded.body
        if body is not None:
            guarded.body = None
            return {"type": "http.request", "body": body, "more_body": False}
        held = guarded.disconnect
        if held is None:
            message = await receive()
            if message["type"] != "http.disconnect" or guarded.done:
                return message
            held = guarded.disconnect = message
            guarded.client_gone = True
        if not guarded.done:
            if guarded.waiter is None:
                guarded.waiter = asyncio.Event()
            await guarded.waiter.wait()
        return held

    return hold


class _Admitted:
    """A request past its claim (a plain class: built on every guarded request)."""

    __slots__ = ("body", "claim", "key", "scoped")

    def __init__(self, key: str, scoped: str, body: bytes, claim: Claim) -> None:
        self.key, self.scoped, self.body, self.claim = key, scoped, body, claim


class _Refusal(Exception):
    def __init__(self, problem: HardenedError) -> None:
        super().__init__(problem.code)
        self.problem = problem


class IdempotencyMiddleware:
    """Pure-ASGI Idempotency-Key guard; other traffic passes through.

    The first rule matching a request decides; ``rules`` None guards every
    POST and PATCH, honouring a key when one is sent and requiring none.
    ``secret`` keys the fingerprint HMAC; keep it the same on every worker.
    To rotate it, pass the old value in ``previous_secrets`` for at least
    ``retention``: a claim that finds the key taken under another fingerprint
    is retried with the fingerprint under each previous secret, so a record
    stored before the rotation still replays (or is taken over, or answers
    409) instead of a 422. New records always get the current fingerprint; the
    retries cost a round trip each, on the mismatch path only.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        backend: IdempotencyBackend,
        secret: bytes,
        previous_secrets: Sequence[bytes] = (),
        rules: Sequence[IdempotentRoute] | None = None,
        config: HttpIdempotencyConfig | None = None,
    ) -> None:
        previous = tuple(previous_secrets)
        for old in previous:
            if not isinstance(old, bytes) or not old:
                raise ValueError("previous_secrets must be non-empty bytes")
            if old == secret:
                raise ValueError("previous_secrets must not repeat the current secret")
        self.app = app
        self.backend = backend
        self.secret = secret
        self.previous_secrets = previous
        self._secrets = (secret, *previous)
        self.rules = tuple(rules) if rules is not None else (IdempotentRoute("/", required=False),)
        self.config = config if config is not None else HttpIdempotencyConfig()
        self._names = tuple(name.encode("latin-1") for name in self.config.key_headers)
        self._replay_names = frozenset(
            name.encode("latin-1") for name in self.config.replay_headers
        )
        self._methods = frozenset(method for rule in self.rules for method in rule.methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in self._methods:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope.get("path", "")
        route = next((rule for rule in self.rules if rule.matches(method, path)), None)
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            admitted = await self._admit(scope, receive, route)
        except _Refusal as refusal:
            await send_problem(scope, send, refusal.problem, debug=self.config.debug)
            return
        except Disconnected:
            return  # nothing was claimed; the client is gone
        if admitted is None:
            await self.app(scope, receive, send)
            return
        claim = admitted.claim
        if isinstance(claim, Claimed):  # dispatched here, not in a coroutine of its own
            scope.setdefault("state", {})[STATE_KEY] = IdempotencyKey(
                admitted.key,
                guarded=True,
                record=admitted.scoped,
                token=claim.token,
                phase=claim.phase,
                data=claim.data,
            )
            guarded = _Guarded(admitted.key, admitted.scoped, claim.token, admitted.body)
            await self._execute(scope, receive, send, guarded)
        elif isinstance(claim, Completed):
            await self._replay(scope, send, claim.result, admitted.key)
        else:
            await self._refuse(scope, send, claim, admitted.key)

    async def _admit(
        self, scope: Scope, receive: Receive, route: IdempotentRoute
    ) -> _Admitted | None:
        """Key, body, fingerprint and claim; None when an optional key is absent."""
        try:
            raw = raw_key(scope, self._names)
            key = None if raw is None else validate_key(raw)
        except IdempotencyKeyInvalid as invalid:
            _count["invalid"]()
            raise _Refusal(invalid) from None
        if key is None:
            if not route.required:
                return None
            _count["missing"]()
            raise _Refusal(
                IdempotencyKeyMissing("This request requires an Idempotency-Key header.")
            )
        try:
            body = await read_body(receive, self.config.max_request_bytes)
        except PayloadTooLarge as too_large:
            raise _Refusal(too_large) from None
        method, path = scope["method"], scope.get("path", "")
        tenant, principal = self.config.scope_of(scope)
        scoped = scoped_key(
            tenant=tenant, principal=principal, method=method, route=route.template(path), key=key
        )
        mode, payload = fingerprint_payload(body, route.fingerprint_fields)
        query = sorted_query(scope.get("query_string", b""))
        digests = fingerprints(self._secrets, method.encode(), path.encode(), query, mode, payload)
        try:
            claim = await self._claim(scoped, next(digests), route)
            # Stored before a rotation: the same request fingerprints alike under its old secret.
            while isinstance(claim, Mismatch) and (digest := next(digests, None)) is not None:
                claim = await self._claim(scoped, digest, route)
        except StoreUnavailable as failure:
            _count["unavailable"]()
            _log.warning("idempotency.store_unavailable", key_hash=key_hash_for_logs(key))
            raise _Refusal(
                StoreUnavailable(
                    "Idempotency records are temporarily unavailable; retry later.",
                    retry_after=1,
                    context=failure.context,
                )
            ) from None
        return _Admitted(key, scoped, body, claim)

    async def _refuse(self, scope: Scope, send: Send, claim: Mismatch | InFlight, key: str) -> None:
        """Answer a claim that found the key taken: other payload (422) or still running (409)."""
        refusal: HardenedError
        if isinstance(claim, Mismatch):
            _count["mismatch"]()
            _log.info(
                "idempotency.mismatch",
                key_hash=key_hash_for_logs(key),
                path=scope.get("path"),
            )
            refusal = IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different request."
            )
        else:
            _count["in_flight"]()
            refusal = IdempotencyInFlight(
                "A request with this Idempotency-Key is still being processed; retry later.",
                retry_after=claim.retry_after,
            )
        await send_problem(scope, send, refusal, debug=self.config.debug)

    async def _claim(self, scoped: str, digest: bytes, route: IdempotentRoute) -> Claim:
        config = self.config
        claim = await self.backend.claim(
            scoped, digest, lease=config.lease, retention=config.retention
        )
        if not isinstance(claim, InFlight) or route.wait <= 0:
            return claim
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.wait
        delay = FIRST_POLL
        while isinstance(claim, InFlight):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining, max(claim.retry_after, FIRST_POLL)))
            delay = min(delay * 2, MAX_POLL)
            claim = await self.backend.claim(
                scoped, digest, lease=config.lease, retention=config.retention
            )
        return claim

    async def _replay(self, scope: Scope, send: Send, result: bytes, key: str) -> None:
        if result[:1] == NOT_KEPT and len(result) == NOT_KEPT_SIZE:
            _count["replayed"]()
            (original,) = STATUS.unpack_from(result, 1)
            gone = IdempotencyResponseNotKept(
                f"The request with this Idempotency-Key was executed (status {original}), but "
                "its response was too large to keep, so it cannot be replayed.",
                original_status=original,
                headers={"idempotent-replayed": "true"},
            )
            await send_problem(scope, send, gone, debug=self.config.debug)
            return
        try:
            status, headers, body = decode_response(result)
        except ValueError:
            _log.error("idempotency.corrupt_record", key_hash=key_hash_for_logs(key))
            await send_problem(scope, send, HardenedError(), debug=self.config.debug)
            return
        _count["replayed"]()
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append(_REPLAYED_HEADER)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _execute(self, scope: Scope, receive: Receive, send: Send, guarded: _Guarded) -> None:
        config = self.config
        beat = HeldLease(
            self.backend,
            guarded.scoped,
            guarded.token,
            lease=config.lease,
            interval=config.heartbeat_interval,
            log_key=guarded.raw_key,
        )
        replay_names = self._replay_names
        limit = config.max_stored_bytes

        async def capture(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                guarded.status = message["status"]
                guarded.headers = [
                    (bytes(name), bytes(value))
                    for name, value in message.get("headers", ())
                    if bytes(name).lower() in replay_names
                ]
            elif kind == "http.response.body" and not guarded.settled:
                chunk = message.get("body", b"")
                if guarded.storable and chunk:
                    guarded.size += len(chunk)
                    if guarded.size > limit:
                        guarded.storable = False
                        guarded.chunks.clear()
                    else:
                        guarded.chunks.append(chunk)
                if not message.get("more_body", False):
                    await beat.stop()
                    await self._settle(guarded, beat)
                    guarded.finish()
            if guarded.client_gone:
                return
            try:
                await send(message)
            except OSError:
                # The client left; the result is still stored for its retry.
                guarded.client_gone = True

        try:
            await self.app(scope, _holding_disconnect(receive, guarded), capture)
        except BaseException:
            if not guarded.settled:
                # Shielded: a cancelled request (server shutdown) still releases its claim.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._settle_failure(scope, guarded, beat))
            raise
        finally:
            guarded.finish()
        if not guarded.settled:
            # The app returned without finishing a response: nothing trustworthy to store.
            await beat.stop()
            await self._release(guarded, beat, "incomplete")

    async def _settle(self, guarded: _Guarded, beat: HeldLease) -> None:
        guarded.settled = True
        status = guarded.status
        if (
            status in _NEVER_STORED
            or status in self.config.transient_statuses
            or (status >= 500 and not self.config.store_server_errors)
        ):
            await self._release(guarded, beat, "status")
            return
        if not guarded.storable:
            _count["not_stored"]()
            _log.warning(
                "idempotency.not_stored",
                key_hash=key_hash_for_logs(guarded.raw_key),
                size=guarded.size,
                limit=self.config.max_stored_bytes,
            )
            # It ran: a retry must not run it again, so a marker is stored instead.
            await self._complete(guarded, NOT_KEPT + STATUS.pack(status), beat, count=False)
            return
        body = guarded.chunks[0] if len(guarded.chunks) == 1 else b"".join(guarded.chunks)
        await self._complete(guarded, encode_response(status, guarded.headers, body), beat)

    async def _settle_failure(self, scope: Scope, guarded: _Guarded, beat: HeldLease) -> None:
        guarded.settled = True
        await beat.stop()
        if not self.config.store_server_errors:
            await self._release(guarded, beat, "exception")
            return
        problem = problem_for(HardenedError(), instance=scope.get("path"))
        body = problem.body()
        headers = [
            (name, value) for name, value in problem.header_list() if name in self._replay_names
        ]
        await self._complete(guarded, encode_response(problem.status, headers, body), beat)

    async def _complete(
        self, guarded: _Guarded, result: bytes, beat: HeldLease, *, count: bool = True
    ) -> None:
        config = self.config
        stored = await beat.complete(
            result, retention=config.retention, retry_for=config.complete_retry_for
        )
        if stored is None:
            _count["unavailable"]()  # logged by the lease, which retries it in the background
        elif not stored:
            _count["lease_lost"]()  # marked and logged by the lease
        elif count:
            _count["executed"]()

    async def _release(
        self, guarded: _Guarded, beat: HeldLease, reason: str, *, count: bool = True
    ) -> None:
        if count:
            _count["released"]()
        released = await beat.release()
        if released is None:
            return  # logged by the lease, which retries it in the background
        _log.info(
            "idempotency.released",
            key_hash=key_hash_for_logs(guarded.raw_key),
            reason=reason,
            status=guarded.status or None,
            lease_lost=not released,
        )
