"""What ``migrate`` and ``check`` do beyond Alembic: the login role, and checks that connect.

The documented production start is: set ``MIGRATION_DATABASE_URL`` (the schema
owner) and ``DATABASE_URL`` (the service, as the app role, with its password),
run ``shopfront migrate``, run ``shopfront serve``. For that to work as written,
``migrate`` must leave the role in ``DATABASE_URL`` able to log in with the
password it names: the migrations create the app role ``NOLOGIN`` (no password
belongs in a migration), and this step, run with the URL in hand, turns it into
a login role or makes the URL's user a member of it. The password is turned into
a SCRAM verifier on this side, so the server never sees or logs it.

``check`` connects the way the service will (``DATABASE_URL``, ``REDIS_URL``) and
reports what it finds there: the migration revision against the packaged head,
and whether the role it connects as is kept inside row-level security.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis.asyncio as redis
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from hardened.config import Check, ConfigError, SettingProblem
from hardened.db.rls import login_role_statements
from shopfront.migrate import alembic_config
from shopfront.models import Base
from shopfront.settings import async_database_url

if TYPE_CHECKING:
    from shopfront.settings import Settings

__all__ = ["live_checks", "provision_login"]

_CONNECT_TIMEOUT = 3
_DML = ("SELECT", "INSERT", "UPDATE", "DELETE")


def _tenant_tables() -> list[str]:
    return sorted(t.name for t in Base.metadata.sorted_tables if "tenant_id" in t.c)


async def _verifier(conn: AsyncConnection, user: str, password: str) -> str:
    raw = await conn.get_raw_connection()
    pgconn = raw.driver_connection.pgconn  # type: ignore[union-attr]
    encrypted = pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256")
    return bytes(encrypted).decode("ascii")


async def _provision(settings: Settings) -> str:
    service = make_url(settings.sqlalchemy_url)
    owner = make_url(async_database_url(settings.migrations_url))
    login, app_role = service.username or "", settings.db_app_role
    if login == (owner.username or ""):
        return (
            f"warning: DATABASE_URL connects as {login or 'the default user'}, the schema "
            f"owner; set it to the app role ({app_role}) so row-level security binds the service"
        )
    engine = create_async_engine(owner.render_as_string(hide_password=False))
    try:
        async with engine.begin() as conn:
            verifier = None
            if service.password:
                verifier = await _verifier(conn, login, service.password)
            for statement in login_role_statements(
                login, app_role=app_role, password_verifier=verifier
            ):
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()
    how = "is the app role" if login == app_role else f"is a member of {app_role}"
    secret = "its password from DATABASE_URL" if service.password else "no password set"
    return f"role {login} can log in ({how}; {secret})"


def provision_login(settings: Settings) -> str | None:
    """Make ``DATABASE_URL``'s user able to log in as (or through) the app role.

    Runs with the owner connection, after the migrations; SQLite has no roles.
    Returns the line to print. Must not run inside an event loop.
    """
    if settings.is_sqlite:
        return None
    try:
        return asyncio.run(_provision(settings))
    except ValueError as exc:  # a role name the identifier rules refuse
        raise ConfigError([SettingProblem("DATABASE_URL", str(exc))]) from None


async def _database_checks(settings: Settings) -> list[Check]:
    url = settings.sqlalchemy_url
    engine = create_async_engine(
        url, connect_args={} if settings.is_sqlite else {"connect_timeout": _CONNECT_TIMEOUT}
    )
    head = ScriptDirectory.from_config(alembic_config(settings.migrations_url)).get_current_head()
    try:
        async with engine.connect() as conn:
            checks = [Check("database reachable", ok=True, detail=_where(settings))]
            current = await _revision(conn)
            checks.append(
                Check(
                    "migrations at head",
                    current == head,
                    f"at {current or 'nothing'}, head {head}"
                    + ("" if current == head else ": run shopfront migrate"),
                )
            )
            if not settings.is_sqlite:
                checks += await _role_checks(conn)
            return checks
    except Exception as exc:  # noqa: BLE001 - every failure to connect is one FAIL line
        return [Check("database reachable", ok=False, detail=f"{_where(settings)}: {_cause(exc)}")]
    finally:
        await engine.dispose()


async def _revision(conn: AsyncConnection) -> str | None:
    try:
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except Exception:  # noqa: BLE001 - no alembic_version table: never migrated
        await conn.rollback()
        return None


async def _role_checks(conn: AsyncConnection) -> list[Check]:
    row = (
        await conn.execute(
            text(
                "SELECT current_user, r.rolsuper, r.rolbypassrls,"
                " (SELECT count(*) FROM pg_tables t WHERE t.schemaname = current_schema()"
                "  AND t.tableowner = current_user)"
                " FROM pg_roles r WHERE r.rolname = current_user"
            )
        )
    ).one()
    user, superuser, bypass, owned = row
    bound = not (superuser or bypass or owned)
    why = ", ".join(
        reason
        for reason, present in (
            ("superuser", superuser),
            ("BYPASSRLS", bypass),
            (f"owns {owned} tables", owned),
        )
        if present
    )
    tables = [t.name for t in Base.metadata.sorted_tables]
    missing = [
        name
        for name in tables
        if not (
            await conn.execute(
                text("SELECT to_regclass(:t) IS NOT NULL AND has_table_privilege(:t, :p)"),
                {"t": name, "p": ",".join(_DML)},
            )
        ).scalar()
    ]
    unprotected = (
        (
            await conn.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relname = ANY(:names)"
                    " AND relkind = 'r' AND NOT (relrowsecurity AND relforcerowsecurity)"
                ),
                {"names": _tenant_tables()},
            )
        )
        .scalars()
        .all()
    )
    return [
        Check(
            "app role bound by row-level security",
            bound,
            f"{user}: not superuser, no BYPASSRLS, owns no table" if bound else f"{user}: {why}",
        ),
        Check(
            "app role can read and write",
            not missing,
            f"{len(_DML)} rights on {len(tables)} tables"
            if not missing
            else f"{user} lacks {'/'.join(_DML)} on {', '.join(missing)}",
        ),
        Check(
            "row-level security forced on tenant tables",
            not unprotected,
            f"{len(_tenant_tables())} tables" if not unprotected else ", ".join(unprotected),
        ),
    ]


async def _redis_check(url: str) -> Check:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_CONNECT_TIMEOUT
    )
    where = _redis_where(url)
    try:
        await client.ping()
        return Check("Redis reachable", ok=True, detail=where)
    except Exception as exc:  # noqa: BLE001 - every failure is one FAIL line
        return Check("Redis reachable", ok=False, detail=f"{where}: {_cause(exc)}")
    finally:
        await client.aclose()


def _where(settings: Settings) -> str:
    url = make_url(settings.sqlalchemy_url)
    if settings.is_sqlite:
        return f"SQLite {url.database}"
    return f"{url.username}@{url.host}:{url.port or 5432}/{url.database}"


def _redis_where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def _cause(exc: BaseException) -> str:
    """The reason, one line, never a URL (it may carry a password)."""
    text_ = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return type(exc).__name__ + (f": {text_[:160]}" if text_ and "://" not in text_ else "")


async def _live(settings: Settings) -> list[Check]:
    checks = await _database_checks(settings)
    if settings.redis_url is not None:
        checks.append(await _redis_check(settings.redis_url))
    return checks


def live_checks(settings: Settings) -> list[Check]:
    """Connect to the database and Redis as the service would, and report what is there."""
    return asyncio.run(_live(settings))
