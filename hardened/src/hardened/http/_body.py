"""Request body guards: a byte limit enforced while streaming, and a media-type allow-list.

A body limit that only trusts ``Content-Length`` is bypassed by a chunked
upload or a lying header. A limit checked after the framework has buffered the
body has already spent the memory. `BodyLimitMiddleware` therefore refuses a
declared oversize body (413) before the app runs. Otherwise it counts bytes as
the app pulls them through ``receive``, and the message that would cross the
limit is never handed over: the app sees at most ``limit`` bytes. A malformed
``Content-Length`` is a 400, since it is a request-smuggling signal and not
something to guess at.

When the limit is crossed, the wrapped ``receive`` raises a private subclass of
`PayloadTooLarge`. If the app lets it propagate and has not started its
response, the middleware sends the 413 problem. If the response has already
started, a problem can no longer be sent, so the middleware re-raises and the
server aborts the connection. That is better than letting a truncated upload
pass as a complete answer. A framework handler for `HardenedError` may render
the 413 itself, since the exception is a `PayloadTooLarge`.

`ContentTypeMiddleware` answers 415 when a body's media type is not one the
route parses. A JSON endpoint then never sees form-encoded or multipart input,
which shuts out CSRF-by-HTML-form and parser-confusion tricks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hardened._asgi import header_values
from hardened.errors import BadRequest, UnsupportedMediaType
from hardened.http._errors import _BodyLimitExceeded
from hardened.http._paths import PathMap
from hardened.http._problem import send_problem

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

    from hardened.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "BodyLimitMiddleware",
    "BodyLimits",
    "ContentTypeMiddleware",
    "ContentTypePolicy",
]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_HUGE = 1 << 62  # any Content-Length with more digits than this is "too large", not parsed
_TCHARS = r"[a-z0-9!#$&^_.+-]+"
_MEDIA_TYPE = re.compile(rf"{_TCHARS}/{_TCHARS}", re.ASCII)  # what a request may declare
_MEDIA_RANGE = re.compile(rf"{_TCHARS}/(?:\*|{_TCHARS})|\*/\*", re.ASCII)  # what a policy may list


def _declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or ``None``; `BadRequest` when malformed."""
    values = [
        part.strip() for raw in header_values(scope, b"content-length") for part in raw.split(b",")
    ]
    if not values:
        return None
    if not all(v.isdigit() for v in values):  # bytes.isdigit() is ASCII-only: no "+1", "-1", "1e3"
        raise BadRequest(
            "Content-Length must be a non-negative integer.", code="request.bad_content_length"
        )
    lengths = {int(d or b"0") if len(d := v.lstrip(b"0")) <= 18 else _HUGE for v in values}
    if len(lengths) != 1:
        raise BadRequest("Conflicting Content-Length values.", code="request.bad_content_length")
    return lengths.pop()


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Maximum request body size in bytes, with per-path overrides.

    ``path_overrides`` maps a `PathPattern` spec (most specific wins, see
    `PathMap`) to its own limit, e.g. ``{"/imports": 20 * 1024 * 1024}``.
    """

    max_bytes: int = DEFAULT_MAX_BODY_BYTES
    path_overrides: Mapping[str, int] = field(default_factory=dict, hash=False)
    _paths: PathMap[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for limit in (self.max_bytes, *self.path_overrides.values()):
            if limit < 0:
                msg = f"body limits must be >= 0, got {limit}"
                raise ValueError(msg)
        paths = PathMap(self.path_overrides, what="path_overrides")
        object.__setattr__(self, "path_overrides", paths)
        object.__setattr__(self, "_paths", paths)

    def limit_for(self, path: str) -> int:
        """The limit that applies to ``path``."""
        return self._paths.lookup(path, self.max_bytes)


class BodyLimitMiddleware:
    """Refuse request bodies larger than the limit for their path with 413."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        path_overrides: Mapping[str, int] | None = None,
        debug: bool = False,
    ) -> None:
        self.app = app
        self.limits = BodyLimits(max_bytes, path_overrides or {})
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.limit_for(scope.get("path", ""))
        try:
            declared = _declared_length(scope)
        except BadRequest as exc:
            await send_problem(scope, send, exc, debug=self.debug)
            return
        if declared is not None and declared > limit:
            await send_problem(scope, send, self._too_large(limit), debug=self.debug)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:  # the app swallowed the first refusal: never read past the limit
                raise self._too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise self._too_large(limit)
            return message

        replaced = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                started = True
                if exceeded:
                    # The app answered a body we refused (FastAPI turns any body-read
                    # error into its own 400): the client gets the 413 instead.
                    replaced = True
                    await send_problem(scope, send, self._too_large(limit), debug=self.debug)
                    return
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyLimitExceeded as exc:
            if started:
                raise  # too late for a 413: abort rather than pretend the response is whole
            await send_problem(scope, send, exc, debug=self.debug)
            return
        if exceeded and not started:
            await send_problem(scope, send, self._too_large(limit), debug=self.debug)

    @staticmethod
    def _too_large(limit: int) -> _BodyLimitExceeded:
        return _BodyLimitExceeded(
            f"The request body exceeds the limit of {limit} bytes.", context={"limit": limit}
        )


def _normalise_types(types: Iterable[str], what: str) -> frozenset[str]:
    normalised = frozenset(t.strip().lower() for t in types)
    for media_type in normalised:
        if not _MEDIA_RANGE.fullmatch(media_type):
            msg = f"{what}: {media_type!r} is not a media type (type/subtype, or type/*)"
            raise ValueError(msg)
    return normalised


def _accepts(allowed: frozenset[str], media_type: str) -> bool:
    if media_type in allowed or "*/*" in allowed:
        return True
    return media_type.split("/", 1)[0] + "/*" in allowed


@dataclass(frozen=True, slots=True)
class ContentTypePolicy:
    """Media types accepted for request bodies on ``methods``, per path (`PathMap` specs).

    An override replaces (does not extend) ``allowed`` for its subtree, e.g.
    ``{"/imports": {"text/csv", "multipart/form-data"}}``. Entries may be
    ``type/*``. Parameters (``charset``, ``boundary``) are ignored, case too.
    """

    allowed: Collection[str] = frozenset({"application/json"})
    path_overrides: Mapping[str, Collection[str]] = field(default_factory=dict, hash=False)
    methods: Collection[str] = frozenset({"POST", "PUT", "PATCH"})
    _paths: PathMap[frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", _normalise_types(self.allowed, "allowed"))
        overrides = {
            prefix: _normalise_types(types, f"path_overrides[{prefix!r}]")
            for prefix, types in self.path_overrides.items()
        }
        paths = PathMap(overrides, what="path_overrides")
        object.__setattr__(self, "path_overrides", paths)
        object.__setattr__(self, "_paths", paths)
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def allowed_for(self, path: str) -> frozenset[str]:
        """The media types accepted under ``path``."""
        return frozenset(self._paths.lookup(path, self.allowed))


def _has_body(scope: Scope) -> bool:
    if header_values(scope, b"transfer-encoding"):
        return True  # chunked: assume a body rather than read it to find out
    lengths = header_values(scope, b"content-length")
    return any(part.strip().lstrip(b"0") for raw in lengths for part in raw.split(b","))


class ContentTypeMiddleware:
    """Refuse request bodies of a media type the route does not accept with 415."""

    def __init__(
        self, app: ASGIApp, *, policy: ContentTypePolicy | None = None, debug: bool = False
    ) -> None:
        self.app = app
        self.policy = policy if policy is not None else ContentTypePolicy()
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.policy.methods and _has_body(scope):
            allowed = self.policy.allowed_for(scope.get("path", ""))
            values = header_values(scope, b"content-type")
            media_type = (
                values[0].decode("latin-1").split(";", 1)[0].strip().lower() if values else ""
            )
            if (
                len(values) != 1
                or not _MEDIA_TYPE.fullmatch(media_type)
                or not _accepts(allowed, media_type)
            ):
                refusal = UnsupportedMediaType(
                    f"Content-Type must be one of: {', '.join(sorted(allowed))}.",
                    context={"content_type": media_type[:100]},
                )
                await send_problem(scope, send, refusal, debug=self.debug)
                return
        await self.app(scope, receive, send)
