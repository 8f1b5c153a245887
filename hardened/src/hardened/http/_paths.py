"""Route paths as every per-route setting writes them.

One syntax for every rule table (rate-limit rules, idempotent routes, body
limits, accepted media types, CSP overrides, CSRF and load-shedding
exemptions), so ``/orders`` means the same thing to all of them:

* ``/orders``: a prefix on whole segments. It matches ``/orders`` and
  ``/orders/7``, never ``/ordersx``. ``/`` matches everything.
* ``/login$``: exact.
* ``/orders/{id}/cancel$``: a ``{name}`` segment matches any one segment, and
  the spec (without ``$``) is the route template, the same for every order.

Paths without ``{`` are matched with string operations (they are on every
request's path); only templated ones compile a regular expression.

Rule lists (rate limits, idempotent routes) apply the rules that match, in
order. Settings keyed by path (`PathMap`) take the most specific spec
covering the path: the longest one, so ``/docs/raw`` beats ``/docs`` and
``/login$`` beats ``/login``; of specs of one length the first declared wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar, overload

__all__ = ["PathMap", "PathPattern"]

_V = TypeVar("_V")
_D = TypeVar("_D")


def _compile(body: str, *, exact: bool) -> re.Pattern[str]:
    parts = []
    for segment in body.split("/"):
        if segment.startswith("{") and segment.endswith("}") and len(segment) > 2:
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
    regex = "/".join(parts)
    if exact:
        return re.compile(regex + r"\Z")
    return re.compile(regex + r"(?:/.*)?\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A rule's path spec (see the module docstring); ValueError unless it starts with ``/``."""

    spec: str
    exact: bool = field(init=False, repr=False)
    template: str | None = field(init=False, repr=False)
    _body: str = field(init=False, repr=False)
    _regex: re.Pattern[str] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.spec.startswith("/"):
            msg = f"rule path must start with '/': {self.spec!r}"
            raise ValueError(msg)
        exact = self.spec.endswith("$")
        body = self.spec[:-1] if exact else self.spec.rstrip("/")
        named = "{" in body
        object.__setattr__(self, "exact", exact)
        object.__setattr__(self, "_body", body)
        object.__setattr__(self, "template", body if named else None)
        object.__setattr__(self, "_regex", _compile(body, exact=exact) if named else None)

    def matches(self, path: str) -> bool:
        """Whether ``path`` is covered by this spec."""
        regex = self._regex
        if regex is not None:
            return regex.match(path) is not None
        body = self._body
        if self.exact:
            return path == body
        return not body or path == body or path.startswith(body + "/")


class PathMap(Mapping[str, _V]):
    """A read-only ``{spec: value}`` mapping that looks values up by request path.

    The keys are `PathPattern` specs, checked when the map is built (ValueError
    names ``what``); `lookup` returns the value of the most specific spec
    covering a path (see the module docstring).
    """

    __slots__ = ("_entries", "_items")

    def __init__(self, entries: Mapping[str, _V] | None = None, *, what: str = "path") -> None:
        items = dict(entries or {})
        patterns = []
        for spec in items:
            try:
                patterns.append(PathPattern(spec))
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from None
        patterns.sort(key=lambda p: -len(p.spec))  # stable: equal lengths keep their order
        self._entries = tuple((p, items[p.spec]) for p in patterns)
        self._items = MappingProxyType(items)

    @overload
    def lookup(self, path: str) -> _V | None: ...
    @overload
    def lookup(self, path: str, default: _D) -> _V | _D: ...
    def lookup(self, path: str, default: object = None) -> object:
        """The value of the most specific spec covering ``path``, else ``default``."""
        for pattern, value in self._entries:
            if pattern.matches(path):
                return value
        return default

    def covers(self, path: str) -> bool:
        """Whether any spec covers ``path``."""
        return any(pattern.matches(path) for pattern, _ in self._entries)

    def __getitem__(self, spec: str) -> _V:
        return self._items[spec]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"PathMap({dict(self._items)!r})"
