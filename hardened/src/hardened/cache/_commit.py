"""Invalidate cache tags after a SQLAlchemy transaction commits, never before.

Invalidating before the commit lets a reader load the old rows and store
them again before the new ones are visible; invalidating after it, from
code that runs after ``session.commit()``, is forgotten on the first early
return. `invalidate_after_commit` records the tags on the session and an
``after_commit`` listener bumps them while ``commit()`` is still running (on
an `AsyncSession` the listener awaits the store through SQLAlchemy's greenlet
bridge), so when ``commit()`` returns the invalidation has been made. A
rollback drops them. An invalidation the store refuses is logged, counted
and re-sent before this process next reads the cache; the commit stands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from hardened._extras import missing_extra
from hardened.errors import StoreUnavailable

try:
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.util import await_only
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.cache.invalidate_after_commit", "postgres", "sqlite") from exc

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.orm import Session

    from hardened.cache._cache import Namespace

__all__ = ["invalidate_after_commit"]

_KEY = "hardened.cache.after_commit"
_LISTENING = "hardened.cache.after_commit.listening"
_log = structlog.get_logger("hardened.cache")


def _pending(session: Session) -> list[tuple[Namespace[Any], tuple[str, ...], Any]]:
    found: list[tuple[Namespace[Any], tuple[str, ...], Any]] | None = session.info.get(_KEY)
    if found is None:
        found = session.info[_KEY] = []
        if not session.info.get(_LISTENING):
            # Listeners on this session only, for its lifetime (removing one while its
            # event is being dispatched is not allowed).
            session.info[_LISTENING] = True
            event.listen(session, "after_commit", _after_commit)
            event.listen(session, "after_soft_rollback", _after_rollback)
    return found


def _after_commit(session: Session) -> None:
    for namespace, tags, tenant in session.info.pop(_KEY, None) or ():
        try:
            await_only(namespace.invalidate(*tags, tenant=tenant))
        except StoreUnavailable:
            _log.warning("cache.invalidation_deferred", namespace=namespace.name, tags=list(tags))


def _after_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction: nothing committed
        session.info.pop(_KEY, None)


def invalidate_after_commit(
    session: AsyncSession | Session,
    namespace: Namespace[Any],
    *tags: str,
    tenant: uuid.UUID | str | None = None,
) -> None:
    """Invalidate ``tags`` of ``namespace`` when ``session``'s transaction commits.

    The tenant is resolved now (from ``tenant`` or the context), so a commit
    made elsewhere still invalidates the right one.
    """
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    resolved = tenant if tenant is not None or not namespace.tenant_scoped else namespace.tenant()
    _pending(sync).append((namespace, tags, resolved))
