"""Reading request headers from an ASGI scope and editing response header lists.

Every middleware reads headers through these, so they all agree on what a
header is: names are lower-case bytes (what the caller passes) compared
case-insensitively (HTTP names are; ASGI servers lower-case them, but a
hand-written scope or a test client may not), values are returned as sent,
duplicates kept in order. Decoding is latin-1, the only lossless one for
header bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from hardened.types import Scope

__all__ = [
    "cookie_values",
    "first_header",
    "header_strings",
    "header_values",
    "headers_named",
    "with_header",
    "without_header",
]

Headers = list[tuple[bytes, bytes]]


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lower case), in the order sent."""
    return [bytes(value) for key, value in scope.get("headers", ()) if key.lower() == name]


def headers_named(scope: Scope, names: Collection[bytes]) -> Headers:
    """Every ``(name, value)`` whose name (lower-cased) is in ``names``, in one pass, in order."""
    found: Headers = []
    for key, value in scope.get("headers", ()):
        name = key.lower()
        if name in names:
            found.append((name, bytes(value)))
    return found


def header_strings(scope: Scope, name: bytes) -> list[str]:
    """`header_values` decoded as latin-1."""
    return [value.decode("latin-1") for value in header_values(scope, name)]


def first_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` as text, or None when it is absent."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def cookie_values(scope: Scope, name: str) -> list[str]:
    """Every value of cookie ``name`` in all ``Cookie`` headers (a stray copy may be there too)."""
    found: list[str] = []
    for header in header_values(scope, b"cookie"):
        for pair in header.decode("latin-1").split(";"):
            cookie, sep, raw = pair.strip().partition("=")
            if sep and cookie == name:
                found.append(raw.strip())
    return found


def without_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> Headers:
    """``headers`` (any iterable, as ASGI allows) without any ``name`` header."""
    return [(key, value) for key, value in headers if key.lower() != name]


def with_header(headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes) -> Headers:
    """``headers`` carrying exactly one ``name`` header, set to ``value``."""
    listed = list(headers)  # ASGI allows any iterable, a generator included
    if [v for k, v in listed if k.lower() == name] == [value]:
        return listed
    return [*without_header(listed, name), (name, value)]
