"""Tenant isolation for SQLAlchemy sessions: one session, one tenant, no way around it.

Seed 003 found tenant queries that "generally include shopId": a filter every call site
must remember leaks at the first one that forgets. Here a session is bound to one tenant
when it is made (`tenant_session`) and its class enforces that on every statement:

* reads: each ORM SELECT, including ``Session.get``, lazy and eager relationship loads,
  expired-attribute refreshes and aliased entities, gets
  ``with_loader_criteria(TenantScoped, tenant_id == tid)``;
* writes: ``before_flush`` stamps new rows and refuses rows of another tenant or a changed
  ``tenant_id`` (`CrossTenantWrite`); attaching a detached foreign object is refused at once,
  so it never reaches the identity map;
* ORM bulk UPDATE/DELETE must pin the tenant themselves: some top-level AND term of the
  WHERE clause must be ``Model.tenant_id == <bound value equal to the session's tenant>``
  (``OR``, ``IN`` and sub-queries do not count), else `UnscopedBulkWrite`. The guard
  refuses instead of adding the term, so the code says what it does. ORM INSERT rows are
  stamped when they omit the tenant and refused when they name another;
* raw SQL (``text()``, Core statements on tenant tables) is refused (`UnscopedRawSQL`)
  unless marked ``execution_options(tenant_checked=True)``: the author vouches for the
  tenant predicate, and on PostgreSQL row-level security (`hardened.db.rls`) is the net;
* a session without a tenant may use only non-tenant models: anything else is
  `TenantContextMissing`, a server bug, never "all rows".

Events live on `TenantSession` (pass it as ``sync_session_class``) or on a class given to
`install_tenancy`, never on ``Session`` itself, so other apps' sessions are untouched.
Not inspected, so left to RLS: ``session.connection().execute(...)`` (no session events)
and ``text()`` fragments or plain ``Table`` objects inside an ORM statement (walking every
statement would cost ~30 µs each). Refusals are 500s whose reason goes to the log and the
``hardened_tenancy_refusals_total`` counter, never to the client. Point at other tenant
tables with a composite foreign key ``(tenant_id, id)`` so no row can reference a foreign one.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import structlog
from sqlalchemy import Uuid, event, inspect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, Mapper, Session, mapped_column, sessionmaker
from sqlalchemy.orm import with_loader_criteria as _criteria
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnElement,
    Grouping,
    TextClause,
)
from sqlalchemy.sql.selectable import TableClause

from hardened._context import tenant_id_var
from hardened.db._errors import (
    CrossTenantWrite,
    TenantContextMissing,
    UnscopedBulkWrite,
    UnscopedRawSQL,
)
from hardened.db.rls import TENANT_INFO_KEY, install_rls_tenant_setting
from hardened.observability import counter

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from sqlalchemy import Select
    from sqlalchemy.orm import ORMExecuteState, UOWTransaction
    from sqlalchemy.orm.state import InstanceState

    from hardened.errors import HardenedError

__all__ = [
    "CrossTenantWrite",
    "TenantContextMissing",
    "TenantScoped",
    "TenantSession",
    "UnscopedBulkWrite",
    "UnscopedRawSQL",
    "current_tenant_id",
    "install_tenancy",
    "session_tenant",
    "tenant_context",
    "tenant_id_var",
    "tenant_session",
]

_AS = TypeVar("_AS", bound=AsyncSession)
_S = TypeVar("_S", bound=Session)
_MARK = "hardened.tenant_column"
_log = structlog.get_logger("hardened.db")
_REFUSED = counter("tenancy_refusals_total", "Statements or flushes refused by tenancy", ["code"])


def _refuse(exc: type[HardenedError], detail: str, **context: Any) -> HardenedError:
    _REFUSED.labels(exc.code).inc()
    _log.warning("tenant.refused", code=exc.code, reason=detail, **context)
    return exc(context={"reason": detail, **context})


@contextmanager
def tenant_context(tenant_id: uuid.UUID) -> Iterator[uuid.UUID]:
    """Make ``tenant_id`` the current tenant inside the block (jobs, CLI commands)."""
    token = tenant_id_var.set(_as_uuid(tenant_id))
    try:
        yield tenant_id
    finally:
        tenant_id_var.reset(token)


def current_tenant_id() -> uuid.UUID:
    """The tenant of the request or job being served; missing is a server bug."""
    tenant = tenant_id_var.get()
    if tenant is None:
        raise _refuse(TenantContextMissing, "no tenant in context")
    return tenant


class TenantScoped:
    """Mixin for models whose rows belong to one tenant (works with any DeclarativeBase).

    ``tenant_id`` gets no index of its own: every tenant query filters on it
    together with something else, so lead the table's composite indexes and
    unique constraints with it (``Index("ix", "tenant_id", "x")``) rather than
    paying for a second index on every write.
    """

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, info={_MARK: True})


class TenantSession(Session):
    """A Session with tenancy installed (``orm_filter`` and ``rls`` on).

    Use it as ``async_sessionmaker(engine, sync_session_class=TenantSession)``.
    """


@dataclass(frozen=True, slots=True)
class _Options:
    orm_filter: bool
    rls: bool


_installed: weakref.WeakKeyDictionary[Any, _Options] = weakref.WeakKeyDictionary()


def _as_uuid(value: object) -> uuid.UUID:
    if not isinstance(value, uuid.UUID):
        msg = f"tenant id must be a uuid.UUID, not {type(value).__name__}"
        raise TypeError(msg)
    return value


def session_tenant(session: Session | AsyncSession) -> uuid.UUID | None:
    """The tenant a session is bound to, or None for an unscoped session."""
    tenant = session.info.get(TENANT_INFO_KEY)
    return None if tenant is None else _as_uuid(tenant)


def _session_class(
    target: type[Session] | sessionmaker[Any] | async_sessionmaker[Any] | Session,
) -> type[Session] | Session:
    if isinstance(target, async_sessionmaker):
        return target.kw.get("sync_session_class") or target.class_.sync_session_class  # type: ignore[no-any-return]
    if isinstance(target, sessionmaker):
        return target.class_
    return target


def _options_for(target: type[Session] | Session) -> _Options | None:
    keys = (target, *type(target).__mro__) if isinstance(target, Session) else target.__mro__
    return next((_installed[k] for k in keys if k in _installed), None)


@overload
def tenant_session(
    sessions: async_sessionmaker[_AS], tenant_id: uuid.UUID | None = None
) -> _AS: ...
@overload
def tenant_session(sessions: sessionmaker[_S], tenant_id: uuid.UUID | None = None) -> _S: ...
def tenant_session(
    sessions: async_sessionmaker[Any] | sessionmaker[Any], tenant_id: uuid.UUID | None = None
) -> Any:
    """A new session bound to ``tenant_id`` (default: the context's tenant) for its life."""
    target = _session_class(sessions)
    if _options_for(target) is None:
        msg = f"{target!r} has no tenancy installed: use TenantSession or install_tenancy()"
        raise TypeError(msg)
    tenant = current_tenant_id() if tenant_id is None else _as_uuid(tenant_id)
    return sessions(info={TENANT_INFO_KEY: tenant})


def install_tenancy(
    target: type[Session] | sessionmaker[Any] | async_sessionmaker[Any] | Session = TenantSession,
    *,
    orm_filter: bool = True,
    rls: bool = True,
) -> None:
    """Enforce tenancy on every session of ``target`` (idempotent for the same options).

    ``orm_filter=False`` drops the read criteria and exists only to prove in a test that
    PostgreSQL alone still hides foreign rows; ``rls`` sets ``app.tenant_id`` per
    transaction (`hardened.db.rls.install_rls_tenant_setting`).
    """
    resolved = _session_class(target)
    if resolved is Session:
        msg = "tenancy on Session itself would leak into every app: use a Session subclass"
        raise TypeError(msg)
    options = _Options(orm_filter=orm_filter, rls=rls)
    existing = _options_for(resolved)
    if existing is not None:
        if existing != options:
            msg = f"tenancy already installed on {resolved!r} with {existing}"
            raise ValueError(msg)
        return
    _installed[resolved] = options
    event.listen(resolved, "do_orm_execute", partial(_execute, orm_filter=orm_filter))
    event.listen(resolved, "before_flush", _before_flush)
    event.listen(resolved, "before_attach", _before_attach)
    if rls:
        install_rls_tenant_setting(resolved)


def _tenant_tables(statement: Any) -> tuple[bool, bool]:
    """(touches a tenant table, contains raw text) anywhere in ``statement``."""
    tenant = raw = False
    for element in visitors.iterate(statement):
        if isinstance(element, TextClause):
            raw = True
        elif isinstance(element, TableClause) and any(c.info.get(_MARK) for c in element.c):
            tenant = True
    return tenant, raw


def _pins_tenant(clauses: Iterable[Any], column: ColumnElement[Any], tenant: uuid.UUID) -> bool:
    """Some top-level AND term is ``column == <bind equal to tenant>``."""
    for term in clauses:
        clause = term.element if isinstance(term, Grouping) else term
        if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
            if _pins_tenant(clause.clauses, column, tenant):
                return True
        elif isinstance(clause, BinaryExpression) and clause.operator is operators.eq:
            pairs = ((clause.left, clause.right), (clause.right, clause.left))
            if any(
                isinstance(a, ColumnElement)
                and a._deannotate() is column
                and isinstance(b, BindParameter)
                and b.effective_value == tenant
                for a, b in pairs
            ):
                return True
    return False


def _tenant_mapper(state: ORMExecuteState) -> Mapper[Any] | None:
    return next((m for m in state.all_mappers if issubclass(m.class_, TenantScoped)), None)


def _check_values(values: Any, column: ColumnElement[Any], tenant: uuid.UUID) -> bool:
    """Refuse a foreign tenant in ``.values()``; True if the tenant is given."""
    for key, value in dict(values or {}).items():
        if key == "tenant_id" if isinstance(key, str) else key._deannotate() is column:
            given = value.effective_value if isinstance(value, BindParameter) else value
            if given != tenant:
                raise _refuse(CrossTenantWrite, "statement writes another tenant's id")
            return True
    return False


def _check_bulk(state: ORMExecuteState, tenant: uuid.UUID, orm_filter: bool) -> None:
    mapper = _tenant_mapper(state)
    if mapper is None:
        return
    column, stmt, name = mapper.columns["tenant_id"], state.statement, mapper.class_.__name__
    _check_values(getattr(stmt, "_values", None), column, tenant)
    params = state.parameters
    for row in params if isinstance(params, list | tuple) else [params]:
        _check_values(row, column, tenant)
    if not _pins_tenant(getattr(stmt, "_where_criteria", ()), column, tenant):
        raise _refuse(UnscopedBulkWrite, "bulk write without tenant predicate", model=name)
    if orm_filter:  # also scope sub-queries on other tenant models
        state.statement = stmt.options(_scope(tenant))


def _check_insert(state: ORMExecuteState, tenant: uuid.UUID) -> None:
    mapper = _tenant_mapper(state)
    if mapper is None:
        return
    column, stmt = mapper.columns["tenant_id"], state.statement
    conflict = getattr(stmt, "_post_values_clause", None)
    if getattr(stmt, "select", None) is not None or (
        hasattr(conflict, "update_whereclause")
        and not _pins_tenant([conflict.update_whereclause], column, tenant)  # type: ignore[union-attr]
    ):
        raise _refuse(UnscopedBulkWrite, "insert from select / upsert without tenant predicate")
    rows = list(chain.from_iterable(getattr(stmt, "_multi_values", ())))
    if rows:
        if not all(_check_values(row, column, tenant) for row in rows):
            raise _refuse(UnscopedBulkWrite, "multi-row VALUES must name the tenant")
        return
    given = _check_values(getattr(stmt, "_values", None), column, tenant)
    params = state.parameters
    one = isinstance(params, Mapping)
    params_rows = [params] if isinstance(params, Mapping) else list(params or ())
    for row in params_rows:
        _check_values(row, column, tenant)
    if given:
        return
    if params_rows:
        stamped = [{"tenant_id": tenant, **row} for row in params_rows]
        state.parameters = stamped[0] if one else stamped
    else:
        state.statement = stmt.values({column: tenant})  # type: ignore[attr-defined]


def _scope(tenant: uuid.UUID) -> Any:
    return _criteria(TenantScoped, lambda cls: cls.tenant_id == tenant, include_aliases=True)


def _nothing() -> Any:
    return _criteria(TenantScoped, lambda cls: cls.tenant_id.is_(None), include_aliases=True)


def _execute(state: ORMExecuteState, orm_filter: bool) -> None:
    stmt, tenant = state.statement, session_tenant(state.session)
    if not state.is_orm_statement:
        if state.execution_options.get("tenant_checked") is True:
            return
        touches, raw = _tenant_tables(stmt)
        if touches or raw:
            raise _refuse(UnscopedRawSQL, "raw SQL needs execution_options(tenant_checked=True)")
        return
    if tenant is None:
        if _tenant_tables(stmt)[0]:
            raise _refuse(TenantContextMissing, "tenant model used by an unscoped session")
        if state.is_select:  # a tenant relationship eagerly joined from a global model
            state.statement = stmt.options(_nothing())
    elif state.is_select and orm_filter:
        stmt = cast("Select[Any]", stmt).options(_scope(tenant))
        if state.is_column_load:  # SQLAlchemy skips loader criteria when refreshing
            for mapper in state.all_mappers:
                if issubclass(mapper.class_, TenantScoped):
                    stmt = stmt.where(mapper.columns["tenant_id"] == tenant)
        state.statement = stmt
    elif state.is_update or state.is_delete:
        _check_bulk(state, tenant, orm_filter)
    elif state.is_insert:
        _check_insert(state, tenant)


def _before_flush(session: Session, context: UOWTransaction, instances: object) -> None:
    """Stamp new rows; refuse foreign or re-tenanted rows before any SQL is sent."""
    tenant, new = session_tenant(session), session.new
    for obj in chain(new, session.dirty, session.deleted):
        if not isinstance(obj, TenantScoped):
            continue
        name = type(obj).__name__
        if tenant is None:
            raise _refuse(TenantContextMissing, "tenant model flushed without tenant", model=name)
        if obj in new and cast("uuid.UUID | None", obj.tenant_id) is None:
            obj.tenant_id = tenant
        elif obj.tenant_id != tenant or inspect(obj).attrs.tenant_id.history.deleted:
            raise _refuse(CrossTenantWrite, "row of another tenant in flush", model=name)


def _before_attach(session: Session, obj: object) -> None:
    """Refuse a detached object of another (or unknown) tenant before the identity map."""
    if not isinstance(obj, TenantScoped):
        return
    state: InstanceState[Any] = inspect(obj)
    if state.key is None:
        return  # transient: checked (and stamped) at flush
    tenant, given, name = session_tenant(session), state.dict.get("tenant_id"), type(obj).__name__
    if tenant is None:
        raise _refuse(TenantContextMissing, "tenant object attached without tenant", model=name)
    if given != tenant:  # unloaded counts as foreign: merge() reloads under the filter
        raise _refuse(CrossTenantWrite, "object of another tenant attached", model=name)


install_tenancy(TenantSession)
