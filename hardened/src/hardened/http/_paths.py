"""Route paths as the rate-limit and idempotency rules write them.

One syntax for every rule table, so ``/orders`` means the same thing to both:

* ``/orders``: a prefix on whole segments. It matches ``/orders`` and
  ``/orders/7``, never ``/ordersx``. ``/`` matches everything.
* ``/login$``: exact.
* ``/orders/{id}/cancel$``: a ``{name}`` segment matches any one segment, and
  the spec (without ``$``) is the route template, the same for every order.

Paths without ``{`` are matched with string operations (they are on every
request's path); only templated ones compile a regular expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["PathPattern"]


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
