"""Every route of an ASGI app, from Starlette/FastAPI routing tables (shared by the harnesses)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["RouteKey", "route_table"]

RouteKey = tuple[str, str]
"""(METHOD, path template), e.g. ("GET", "/orders/{order_id}")."""

_IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})


def route_table(app: Any) -> dict[RouteKey, Any]:
    """(method, path) → the route object that serves it (a FastAPI route context or a route).

    WebSocket routes appear as ("WEBSOCKET", path). HEAD and OPTIONS are left
    out: they follow from GET and from CORS, not from a route of their own.
    """
    found: dict[RouteKey, Any] = {}

    def add(path: str, methods: Iterable[str] | None, route: Any) -> None:
        if methods:
            found.update(((m, path), route) for m in methods if m not in _IGNORED_METHODS)
        else:
            found[("WEBSOCKET", path)] = route

    def walk_included(included: Any, prefix: str) -> None:
        include_prefix = getattr(getattr(included, "include_context", None), "prefix", "")
        for candidate in included.effective_candidates():
            if callable(getattr(candidate, "effective_candidates", None)):
                walk_included(candidate, prefix)  # its context already combines the prefixes
                continue
            # HTTP contexts carry the full path; WebSocket ones leave it empty.
            path = candidate.path or include_prefix + candidate.original_route.path
            add(prefix + path, getattr(candidate, "methods", None), candidate)

    def walk(routes: Iterable[Any], prefix: str) -> None:
        for route in routes:
            # FastAPI includes routers lazily; their routes are only reachable this way.
            if callable(getattr(route, "effective_candidates", None)):
                walk_included(route, prefix)
                continue
            path = prefix + getattr(route, "path", "")
            sub = getattr(route, "routes", None)
            if getattr(route, "methods", None) or sub is None:
                if hasattr(route, "path"):
                    add(path, getattr(route, "methods", None), route)
            else:
                walk(sub, path)

    walk(getattr(app, "routes", ()), "")
    return found
