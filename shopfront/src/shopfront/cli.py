"""``shopfront`` command line: serve, check, migrate, create-shop, top-up, keygen, keys.

Configuration errors exit with status 2 and a message naming each bad
variable (never its value); ``check`` exits 1 when the deploy is not ready.

``serve`` shuts down without resetting a request. Closing the listener at the
first SIGTERM resets what clients are already sending on keep-alive
connections, so the first SIGTERM or SIGINT starts a drain instead: readiness
answers 503 ``draining`` and every response carries ``Connection: close``
while the server keeps serving for ``SHUTDOWN_DRAIN_SECONDS`` (0: no drain),
long enough for the load balancer to take the instance out, and no shorter
than uvicorn's keep-alive timeout (5 s), so that idle keep-alive connections
are closed by that timeout rather than by the listener's close. Then uvicorn's
graceful exit stops accepting and gives requests in flight
``SHUTDOWN_GRACE_SECONDS`` to finish; the process exits 0. A second signal
exits at once (status 1). With ``--workers N`` every worker drains: uvicorn's
supervisor forwards one SIGTERM to each.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from hardened.config import ConfigError, SettingProblem, readiness
from hardened.http import Drain
from shopfront.settings import DEV_SECRETS_FILE, Settings

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from types import FrameType

__all__ = ["main"]

_log = structlog.get_logger("shopfront.serve")


def _load() -> Settings:
    return Settings.load()


class _ServeConfig(uvicorn.Config):
    """uvicorn's config plus the drain period; pickled into every worker process with it."""

    def __init__(self, app: str, *, drain_seconds: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.drain_seconds = drain_seconds


def _drain_of(app: object) -> Drain | None:
    """The drain of the app uvicorn loaded (``app.state.shopfront.drain``), under its wrappers."""
    for _ in range(8):
        state = getattr(getattr(app, "state", None), "shopfront", None)
        if state is not None:
            drain = getattr(state, "drain", None)
            return drain if isinstance(drain, Drain) else None
        app = getattr(app, "app", None)
    return None


class _DrainingServer(uvicorn.Server):
    """uvicorn's server: its first signal drains before the graceful exit, a second forces it.

    A ``supervised`` server is a ``--workers`` child. Its supervisor forwards a
    SIGTERM on every shutdown, and a Ctrl+C reaches the child too (SIGINT goes
    to the whole process group), so there only a SIGINT counts as a second
    signal. The signals are not re-raised after the graceful exit (uvicorn's
    default): a drained shutdown is a clean exit, status 0.
    """

    def __init__(self, config: _ServeConfig, *, supervised: bool = False) -> None:
        super().__init__(config)
        self.drain_seconds = config.drain_seconds
        self.supervised = supervised
        self.forced = False
        self._drain_until: float | None = None
        self._announced = False

    def _start_drain(self) -> None:
        drain = _drain_of(getattr(self.config, "loaded_app", None))
        if drain is not None:
            drain.start()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags (no logging, no event-loop calls).
        if self._drain_until is None:
            self._start_drain()
            self._drain_until = time.monotonic() + self.drain_seconds
            self.should_exit = self.drain_seconds <= 0
            return
        if self.supervised and sig != signal.SIGINT:
            return
        self.should_exit = self.force_exit = self.forced = True

    async def on_tick(self, counter: int) -> bool:
        until = self._drain_until
        if until is not None:
            if not self._announced:
                self._announced = True
                self._start_drain()  # again, in case the signal came before the app was loaded
                _log.info("shutdown_draining", drain_seconds=self.drain_seconds)
            if not self.should_exit and time.monotonic() >= until:
                _log.info("shutdown_drained")
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Logged before uvicorn closes the listener, with no await in between.
        _log.info("shutdown_closing", in_flight=len(self.server_state.tasks))
        await super().shutdown(sockets)


class _WorkerProcess(multiprocess.Process):
    """A ``--workers`` child that runs `_DrainingServer` instead of uvicorn's plain one."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            config = self.config
            assert isinstance(config, _ServeConfig)  # noqa: S101 - _run builds it
            self._server = _DrainingServer(config, supervised=True)
        return self._server


def _run(config: _ServeConfig) -> int:
    """What ``uvicorn.run`` does for a TCP socket, with the draining server in every process."""
    if config.workers > 1:
        sock = config.bind_socket()
        # uvicorn's supervisor builds every worker's server as a plain uvicorn.Server and has
        # no hook for a subclass: while it runs (in this parent only) it builds ours instead.
        plain = multiprocess.Process
        multiprocess.Process = _WorkerProcess  # type: ignore[misc]
        try:
            multiprocess.Multiprocess(config, sockets=[sock]).run()
        finally:
            multiprocess.Process = plain  # type: ignore[misc]
        return 0
    server = _DrainingServer(config)
    try:
        server.run()
    except KeyboardInterrupt:  # a Ctrl+C before the server installed its handlers
        return 130
    if not server.started:
        return STARTUP_FAILURE
    return 1 if server.forced else 0


def _serve(args: argparse.Namespace) -> int:
    from shopfront.migrate import upgrade  # noqa: PLC0415

    if args.access_log:
        os.environ["ACCESS_LOG"] = "true"  # read by every worker's create_app
    settings = _load()
    if settings.is_development:
        sys.stderr.write(
            f"shopfront: development mode; generated secrets are kept in {DEV_SECRETS_FILE}"
            " (git-ignored). Set JWT_SECRET, SESSION_SECRET and COOKIE_SECRET elsewhere.\n"
        )
    if settings.should_auto_migrate:
        upgrade(settings.migrations_url, app_role=settings.db_app_role)
    config = _ServeConfig(
        "shopfront.app:create_app",
        drain_seconds=settings.shutdown_drain_seconds,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=False,  # client IPs come from TRUSTED_PROXIES, not uvicorn's default trust
        server_header=False,
        access_log=settings.access_log,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
    )
    return _run(config)


def _check(_args: argparse.Namespace) -> int:
    from shopfront.provision import live_checks  # noqa: PLC0415

    settings = _load()
    ready, report = readiness(settings, live_checks(settings))
    lines = report.splitlines()
    # Warnings do not decide readiness: listed above the verdict, names only, never values.
    lines[-1:-1] = [f"[warn] {warning}" for warning in settings.secret_warnings()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if ready else 1


def _migrate(args: argparse.Namespace) -> int:
    from shopfront.migrate import upgrade  # noqa: PLC0415
    from shopfront.provision import provision_login  # noqa: PLC0415

    settings = _load()
    upgrade(settings.migrations_url, args.revision, app_role=settings.db_app_role)
    sys.stdout.write(f"database at revision {args.revision}\n")
    line = provision_login(settings)
    if line is not None:
        sys.stdout.write(line + "\n")
    return 0


def _secret_from(env_name: str | None, what: str) -> str:
    """A password from the environment variable named, else asked for (never an argument)."""
    if env_name:
        value = os.environ.get(env_name)
        if not value:
            raise ConfigError([SettingProblem(env_name, f"is required (it holds the {what})")])
        return value
    return getpass.getpass(f"{what}: ")


def _create_shop(args: argparse.Namespace) -> int:
    from shopfront.admin import AdminError, create_shop  # noqa: PLC0415

    password = _secret_from(args.owner_password_env, "owner password")
    try:
        shop = create_shop(
            _load(),
            name=args.name,
            domain=args.domain,
            owner_email=args.owner_email,
            owner_password=password,
            key_role=args.api_key_role,
        )
    except AdminError as exc:
        sys.stderr.write(f"shopfront: {exc}\n")
        return 1
    sys.stdout.write(
        f"shop {shop.domain} ({shop.tenant_id})\n"
        f"owner {shop.owner_email} ({shop.owner_id}): sign in with POST /auth/login\n"
        f"api key ({shop.api_key_role}, shown once): {shop.api_key}\n"
    )
    return 0


def _top_up(args: argparse.Namespace) -> int:
    from shopfront.admin import AdminError, top_up  # noqa: PLC0415

    try:
        balance = top_up(_load(), domain=args.domain, amount=args.amount)
    except AdminError as exc:
        sys.stderr.write(f"shopfront: {exc}\n")
        return 1
    sys.stdout.write(f"{args.domain}: +{args.amount} credits, {balance} available\n")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from hardened.crypto import generate_keyring_entry  # noqa: PLC0415

    sys.stdout.write(generate_keyring_entry(args.id) + "\n")
    return 0


def _keys(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from shopfront.keys import KeyCommands  # noqa: PLC0415

    if args.action in ("rotate", "shred") and not args.shop:
        sys.stderr.write(f"shopfront: keys {args.action} needs --shop\n")
        return 1
    if args.action == "shred" and not args.yes:
        sys.stderr.write("shopfront: shredding cannot be undone; add --yes to confirm\n")
        return 1

    async def run() -> object:
        commands = KeyCommands(_load())
        try:
            if args.action == "status":
                return await commands.status()
            if args.action == "rewrap":
                return {"rewrapped": await commands.rewrap()}
            if args.action == "rotate":
                return {"version": await commands.rotate(args.shop)}
            if args.action == "reencrypt":
                return await commands.reencrypt(batch=args.batch, rows_per_second=args.rate)
            return {"destroyed_keys": await commands.shred(args.shop)}
        finally:
            await commands.aclose()

    try:
        result = asyncio.run(run())
    except LookupError as exc:
        sys.stderr.write(f"shopfront: {exc.args[0]}\n")
        return 1
    sys.stdout.write(json.dumps(result, default=str) + "\n")
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
    shop = sub.add_parser("create-shop", help="open a shop with its owner and an API key")
    shop.add_argument("--name", required=True)
    shop.add_argument("--domain", required=True, help="e.g. acme.myshopify.com")
    shop.add_argument("--owner-email", required=True)
    shop.add_argument(
        "--owner-password-env",
        metavar="VAR",
        help="read the owner's password from this environment variable (default: prompt)",
    )
    shop.add_argument(
        "--api-key-role", default="admin", choices=("read_only", "staff", "admin", "owner")
    )
    shop.set_defaults(handler=_create_shop)
    top = sub.add_parser(
        "top-up", help="development only: grant credits to a shop's wallet (a security event)"
    )
    top.add_argument("--domain", required=True)
    top.add_argument("--amount", type=int, required=True)
    top.set_defaults(handler=_top_up)
    keygen = sub.add_parser("keygen", help="print a new ENCRYPTION_KEY entry (id:key)")
    keygen.add_argument("--id", default="k1", help="the key id (e.g. k2 for the next KEK)")
    keygen.set_defaults(handler=_keygen)
    keys = sub.add_parser("keys", help="field encryption: status, rewrap, rotate, reencrypt, shred")
    keys.add_argument("action", choices=("status", "rewrap", "rotate", "reencrypt", "shred"))
    keys.add_argument("--shop", help="the shop's domain (rotate, shred)")
    keys.add_argument("--batch", type=int, default=500, help="rows per transaction (reencrypt)")
    keys.add_argument("--rate", type=float, default=None, help="max rows per second (reencrypt)")
    keys.add_argument("--yes", action="store_true", help="confirm shredding")
    keys.set_defaults(handler=_keys)
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
