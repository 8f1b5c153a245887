"""``shopfront`` command line: serve, check, migrate.

Configuration errors exit with status 2 and a message naming each bad
variable (never its value); ``check`` exits 1 when the deploy is not ready.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from hardened.config import ConfigError, readiness
from shopfront.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _load() -> Settings:
    return Settings.load()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - only the serve command needs the server

    from shopfront.migrate import upgrade  # noqa: PLC0415

    settings = _load()
    if settings.should_auto_migrate:
        upgrade(settings.migrations_url, app_role=settings.db_app_role)
    uvicorn.run(
        "shopfront.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=False,  # client IPs come from TRUSTED_PROXIES, not uvicorn's default trust
        server_header=False,
        access_log=args.access_log,
        log_config=None,
    )
    return 0


def _check(_args: argparse.Namespace) -> int:
    ready, report = readiness(_load())
    sys.stdout.write(report + "\n")
    return 0 if ready else 1


def _migrate(args: argparse.Namespace) -> int:
    from shopfront.migrate import upgrade  # noqa: PLC0415

    settings = _load()
    upgrade(settings.migrations_url, args.revision, app_role=settings.db_app_role)
    sys.stdout.write(f"database at revision {args.revision}\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopfront", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)
    check = sub.add_parser("check", help="report deploy readiness (exit 1 if not ready)")
    check.set_defaults(handler=_check)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(handler=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shopfront`` script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        sys.stderr.write(f"shopfront: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
