"""PostgreSQL row-level security: the database refuses foreign rows even if the ORM forgets.

`hardened.db.tenancy` scopes every ORM statement, but an ORM filter is code, and code has
holes (a raw query, a new loader, a bug). Row-level security is the second wall: each
tenant table gets a policy comparing its tenant column with the transaction-local setting
``app.tenant_id``, ``FORCE`` makes it bind the table owner too, and the service connects as
a role that owns nothing and lacks ``BYPASSRLS`` (migrations run as the owner). With no
setting the policy compares against NULL, so a connection without a tenant sees no rows at
all, never every row.

The setting is written with ``set_config(..., true)`` at the start of every transaction,
so it dies with the transaction and a pooled connection never carries a tenant into the
next checkout. Statements here are plain strings for Alembic's ``op.execute``; every name
is validated against ``^[a-z_][a-z0-9_]*$`` and double-quoted, so none can inject SQL.

That ``set_config`` is the first statement of every tenant transaction, so it is where a
dead pooled connection shows. ``pool_pre_ping`` catches backends that died while idle, but
not one killed after the ping (``pg_terminate_backend``, a failover, an idle timeout
firing): the ping's round trip is a check, not a guarantee. So the hook itself retries: if
``set_config`` fails because the connection died, and nothing of the transaction has
reached the server (a root transaction on a connection the session checked out itself,
driver status idle), the connection is replaced under the same transaction and the
statement runs again, up to twice. Why here and not around the session: the hook runs for
every way a transaction starts (``execute``, ``get``, a flush, ``connection()``, inside an
explicit ``session.begin()``), before any of the caller's statements, so the retry is
invisible and provably repeats nothing; a session-level retry could not survive the
caller's ``async with session.begin():``, and a checkout-time check (the ping) always
leaves the race. SQLAlchemy refuses to reconnect a Connection inside a transaction, so the
empty Core transaction is rolled back and a new one begun on a fresh connection (execution
options such as the isolation level re-applied), and the session's record of its
transaction is pointed at it: the one private detail here, guarded by shape checks (when
they fail the error propagates as before) and by the tests. If no fresh connection can be
had, the connection leaves the transaction and the connect error propagates (a 503 through
`hardened.db.unavailable_error`), the session still closable. Failures anywhere later in a
transaction are not retried here: they are `hardened.db.unavailable_error`'s 503s, and
`hardened.db.run_transaction` re-runs its whole unit of work.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from hardened.observability import counter

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import SessionTransaction

__all__ = [
    "SETTING",
    "TENANT_INFO_KEY",
    "app_role_statements",
    "drop_rls_statements",
    "install_rls_tenant_setting",
    "login_role_statements",
    "rls_statements",
]

SETTING = "app.tenant_id"
# Where a session carries its tenant (`hardened.db.tenancy.tenant_session` writes it).
TENANT_INFO_KEY = "hardened.tenant_id"

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_SET_TENANT = text(f"SELECT set_config('{SETTING}', :tenant, true)")
_RECONNECTS = 2
_IDLE = 0  # libpq PQTRANS_IDLE (psycopg 3 TransactionStatus.IDLE, psycopg2 alike)
_RECONNECTED = counter(
    "db_reconnects_total",
    "Transactions moved to a fresh connection: the pooled one was dead at their first statement.",
)


def _ident(name: str, what: str) -> str:
    if not _NAME.fullmatch(name) or len(name) > 63:
        msg = f"invalid {what} name {name!r}: use lower-case letters, digits and _"
        raise ValueError(msg)
    return f'"{name}"'


def _table(name: str) -> str:
    """A table name, optionally schema-qualified (``schema.table``), quoted."""
    return ".".join(_ident(part, "table") for part in name.split("."))


def _predicate(column: str) -> str:
    return f"{_ident(column, 'column')} = NULLIF(current_setting('{SETTING}', true), '')::uuid"


def rls_statements(
    table: str, *, column: str = "tenant_id", policy: str = "tenant_isolation"
) -> list[str]:
    """Enable and force RLS on ``table`` with one policy for reads and writes.

    ``USING`` hides other tenants' rows from SELECT/UPDATE/DELETE; ``WITH CHECK`` refuses
    INSERT/UPDATE of a row carrying another tenant's id. Re-running replaces the policy.
    """
    qualified, name, expr = _table(table), _ident(policy, "policy"), _predicate(column)
    return [
        f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {name} ON {qualified}",
        f"CREATE POLICY {name} ON {qualified} USING ({expr}) WITH CHECK ({expr})",
    ]


def drop_rls_statements(
    table: str, *, column: str = "tenant_id", policy: str = "tenant_isolation"
) -> list[str]:
    """Undo `rls_statements` (for a migration's downgrade)."""
    _ident(column, "column")
    qualified, name = _table(table), _ident(policy, "policy")
    return [
        f"DROP POLICY IF EXISTS {name} ON {qualified}",
        f"ALTER TABLE {qualified} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {qualified} DISABLE ROW LEVEL SECURITY",
    ]


def app_role_statements(role: str, *, schema: str = "public") -> list[str]:
    """Create (if missing) the non-owner role the service connects as, and grant it DML.

    The role is created ``NOLOGIN NOSUPERUSER NOBYPASSRLS``: grant it to a login user or
    ``ALTER ROLE … LOGIN`` out of band, so no password lives in a migration. An existing
    role that is superuser or has ``BYPASSRLS`` makes the block fail: RLS would not apply
    to it. Default privileges cover tables later created by the role running this.
    """
    quoted, ns = _ident(role, "role"), _ident(schema, "schema")
    return [
        # Names are validated by _ident above, so interpolating them is safe.
        "DO $$ BEGIN "  # noqa: S608
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {quoted} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE; "
        f"ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}' "
        "AND (rolsuper OR rolbypassrls)) THEN "
        f"RAISE EXCEPTION 'role {role} bypasses row-level security'; "
        "END IF; END $$",
        f"GRANT USAGE ON SCHEMA {ns} TO {quoted}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {ns} TO {quoted}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {ns} TO {quoted}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {ns} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {quoted}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {ns} GRANT USAGE, SELECT ON SEQUENCES TO {quoted}",
    ]


_B64 = "[A-Za-z0-9+/=]+"
_SCRAM_VERIFIER = re.compile(rf"SCRAM-SHA-256\$[0-9]+:{_B64}\${_B64}:{_B64}")


def login_role_statements(
    login: str, *, app_role: str, password_verifier: str | None = None
) -> list[str]:
    """Let the service log in as ``login`` with (at most) the app role's rights.

    ``login`` equal to ``app_role`` turns the app role itself into a login role;
    any other name is created when missing (``NOSUPERUSER NOBYPASSRLS``) and made
    a member of the app role. ``password_verifier`` is a SCRAM-SHA-256 verifier
    computed on the client (libpq's ``PQencryptPasswordConn``, psycopg's
    ``pgconn.encrypt_password``), so the password itself never reaches the server
    or its statement log. A role that is superuser or has ``BYPASSRLS`` makes the
    block fail, as in `app_role_statements`.
    """
    quoted, app = _ident(login, "role"), _ident(app_role, "role")
    password = ""
    if password_verifier is not None:
        if not _SCRAM_VERIFIER.fullmatch(password_verifier):
            msg = "password_verifier must be a SCRAM-SHA-256 verifier, never a password"
            raise ValueError(msg)
        password = f" PASSWORD '{password_verifier}'"
    statements = [
        # Names are validated by _ident and the verifier by its pattern: safe to interpolate.
        "DO $$ BEGIN "  # noqa: S608
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN "
        f"CREATE ROLE {quoted} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE; "
        f"ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}' "
        "AND (rolsuper OR rolbypassrls)) THEN "
        f"RAISE EXCEPTION 'role {login} bypasses row-level security'; "
        "END IF; END $$",
        f"ALTER ROLE {quoted} LOGIN{password}",
    ]
    if login != app_role:
        statements.append(f"GRANT {app} TO {quoted}")
    return statements


def _untouched(transaction: SessionTransaction, connection: Connection) -> bool:
    """Nothing of this transaction has reached the server, and the session owns the connection.

    Only then may a dead connection be swapped: a nested transaction, a session bound to
    the caller's Connection, or a driver already inside a transaction means earlier work
    that a swap would silently drop.
    """
    if transaction.nested or transaction.parent is not None:
        return False
    entry = getattr(transaction, "_connections", {}).get(connection)
    if not (
        isinstance(entry, tuple)
        and len(entry) == 4
        and entry[0] is connection
        and entry[1] is connection.get_transaction()
        and entry[3] is True  # autoclose: checked out from an Engine for this transaction
    ):
        return False
    info = getattr(connection.connection.driver_connection, "info", None)
    return getattr(info, "transaction_status", None) == _IDLE


def _move_to_fresh_connection(transaction: SessionTransaction, connection: Connection) -> None:
    """Put ``connection`` (dead, in an empty transaction) on a fresh pooled connection."""
    connections = transaction._connections
    entry = connections[connection]
    connection.rollback()  # the empty Core transaction; now the Connection may reconnect
    try:
        # Re-apply what lived on the dead DBAPI connection (isolation level, read-only...).
        # This checks out a fresh one: SQLAlchemy recycles every connection older than the
        # dead one at checkout, and the pool's pre-ping (if on) vets the rest.
        options = connection.get_execution_options()
        connection.dialect.set_connection_execution_options(connection, options)
        fresh = connection.begin()
    except BaseException:
        # No connection to be had: leave the transaction without one, as SQLAlchemy does
        # when provisioning fails, so closing the session finds nothing half-replaced.
        connections.pop(connection, None)
        connections.pop(connection.engine, None)
        connection.close()
        raise
    connections[connection] = connections[connection.engine] = (
        connection,
        fresh,
        entry[2],
        entry[3],
    )


def _set_tenant(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    """``after_begin``: write the session's tenant (or '' for none) into this transaction.

    A connection that turns out dead here, before anything else ran, is replaced and the
    statement retried (see the module docstring).
    """
    if connection.dialect.name != "postgresql":
        return
    tenant = session.info.get(TENANT_INFO_KEY)
    value = str(uuid.UUID(str(tenant))) if tenant is not None else ""
    movable = _untouched(transaction, connection)
    attempt = 0
    while True:
        try:
            connection.execute(_SET_TENANT, {"tenant": value})
        except DBAPIError as exc:
            if not (movable and exc.connection_invalidated) or attempt >= _RECONNECTS:
                raise
        else:
            return
        attempt += 1
        _move_to_fresh_connection(transaction, connection)
        _RECONNECTED.inc()


def install_rls_tenant_setting(target: type[Session] | sessionmaker[Any] | Session) -> None:
    """Set ``app.tenant_id`` per transaction for every session of ``target`` (idempotent).

    Unscoped sessions set it to '' explicitly, so nothing a previous user of the pooled
    connection left at session level can leak in. On other dialects this is a no-op.
    """
    if target is Session:
        msg = "install on a Session subclass (e.g. TenantSession), not on Session itself"
        raise TypeError(msg)
    if not event.contains(target, "after_begin", _set_tenant):
        event.listen(target, "after_begin", _set_tenant)
