"""Prove the hardened wheel works alone, bare and with each extra.

The workspace installs every extra and the dev tools together, so a module
that needs an undeclared package, or a core module that quietly imports an
optional one, passes every test there. This builds the wheel, installs it
into one fresh virtual environment per flavour (bare, and each extra), pinned
to the lock's versions, and in each, away from the repository's sources:

- the flavour installs nothing beyond its declared dependency closure (no dev
  tool, no shopfront);
- every public module the flavour enables imports, and every name in its
  ``__all__`` resolves, or (for a lazily imported name) says which extra to
  install;
- every public module the flavour does not enable fails with an ImportError
  naming an extra that enables it;
- a small smoke test drives the flavour's components once.

``MODULES`` is the design: which flavour enables which public module. A public
module in no list fails the run, so a new module must be classified.

Run: ``uv run python .ci/wheel_check.py`` (needs Redis and PostgreSQL, as
``.ci/run`` provides). The same file is the child run inside each venv
(``--child``); it imports nothing but the standard library at module level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "hardened"

# Core (a bare install): errors, config, logging, HTTP guards, memory stores and
# what is built only on them. hardened.auth's roles, refresh families and socket
# registry need no third-party package; only its password and token modules do.
CORE = (
    "hardened",
    "hardened.auth",
    "hardened.auth.permissions",
    "hardened.auth.refresh",
    "hardened.auth.websockets",
    "hardened.cache",
    "hardened.config",
    "hardened.domains",
    "hardened.errors",
    "hardened.fields",
    "hardened.http",
    "hardened.idempotency",
    "hardened.logging",
    "hardened.observability",
    "hardened.observability.metrics",
    "hardened.ratelimit",
    "hardened.stores",
    "hardened.stores.memory",
    "hardened.testing",
    "hardened.testing.authorization",
    "hardened.testing.isolation",
    "hardened.types",
)
_SQL = (
    "hardened.db",
    "hardened.db.csv_import",
    "hardened.db.integrity",
    "hardened.db.limits",
    "hardened.db.rls",
    "hardened.db.tenancy",
    "hardened.db.transaction",
    "hardened.ledger",
)
# What each extra enables on top of the core ("all": everything).
MODULES: dict[str, tuple[str, ...]] = {
    "redis": ("hardened.stores.redis",),
    "postgres": _SQL,
    "sqlite": _SQL,
    "fastapi": ("hardened.fastapi", "hardened.openapi"),
    "auth": ("hardened.auth.passwords", "hardened.auth.tokens", "hardened.crypto"),
    "outbound": ("hardened.outbound",),
    # derive_key needs only cryptography (auth has it); the rest of it needs SQLAlchemy too.
    "crypto": (*_SQL, "hardened.crypto"),
    "all": (),
}
FLAVOURS = ("bare", *MODULES)


def enabled(flavour: str) -> set[str]:
    if flavour == "all":
        return {*CORE, *(m for mods in MODULES.values() for m in mods)}
    return {*CORE, *MODULES.get(flavour, ())}


def enabling_extras(module: str) -> list[str]:
    return [extra for extra in MODULES if module in enabled(extra)]


# --- parent: build, install, compare ---------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        msg = f"cannot read a package name from {requirement!r}"
        raise ValueError(msg)
    return _norm(match.group(1))


def _run(cmd: list[str], **kwargs: Any) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        msg = f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}".rstrip()
        raise RuntimeError(msg)
    return str(done.stdout)


def _static_checks(wheel: Path, extras: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The wheel's public modules, and what is wrong with the wheel or the mapping."""
    problems: list[str] = []
    if set(MODULES) != set(extras):
        problems.append(
            f"flavours {sorted(MODULES)} != extras in hardened/pyproject.toml {sorted(extras)}"
        )
    others = set(extras) - {"all"}
    all_lists = {_norm(e) for r in extras.get("all", []) for e in _extras_of(r, "hardened")}
    if all_lists != others:
        problems.append(f"extra all names {sorted(all_lists)}, not every extra {sorted(others)}")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("hardened/")}
    source = LIBRARY / "src"
    expected = {
        p.relative_to(source).as_posix()
        for p in (source / "hardened").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    if missing := sorted(expected - shipped):
        problems.append(f"the wheel lacks source files: {', '.join(missing)}")
    public = []
    for name in sorted(shipped):
        if not name.endswith(".py"):
            continue
        parts = name.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts.pop()
        if not any(part.startswith("_") for part in parts):
            public.append(".".join(parts))
    if unclassified := sorted(set(public) - enabled("all")):
        problems.append(f"public modules in no flavour (classify them): {', '.join(unclassified)}")
    if stale := sorted(enabled("all") - set(public)):
        problems.append(f"classified modules that do not exist: {', '.join(stale)}")
    return public, problems


def _extras_of(requirement: str, name: str) -> list[str]:
    match = re.match(rf"\s*{re.escape(name)}\s*\[([^\]]*)\]", requirement)
    return [e.strip() for e in match.group(1).split(",")] if match else []


def _dev_names() -> set[str]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    groups: dict[str, list[str]] = root.get("dependency-groups", {})
    names = {_req_name(r) for reqs in groups.values() for r in reqs if isinstance(r, str)}
    return names | {"shopfront"}


def _install(flavour: str, wheel: Path, tmp: Path, dev: set[str]) -> tuple[Path, int, list[str]]:
    """A fresh venv with ``flavour`` installed: its python, package count and problems.

    Installs run one at a time: concurrent ``uv pip install`` runs wait on the
    cache's locks and take several times longer.
    """
    here = tmp / flavour
    here.mkdir()
    extra = [] if flavour == "bare" else ["--extra", flavour]
    closure_txt = _run(
        [
            *("uv", "export", "--frozen", "--no-dev", "--package", "hardened", *extra),
            *("--no-hashes", "--no-emit-workspace", "--no-header", "--no-annotate"),
        ],
        cwd=ROOT,
    )
    constraints = here / "constraints.txt"
    constraints.write_text(closure_txt)
    closure = {_req_name(line) for line in closure_txt.splitlines() if line.strip()}
    venv = here / "venv"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run(["uv", "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=here)
    spec = str(wheel) if flavour == "bare" else f"{wheel}[{flavour}]"
    _run(["uv", "pip", "install", "--quiet", "--python", str(python), "-c", str(constraints), spec])
    frozen = _run(["uv", "pip", "freeze", "--python", str(python)])
    installed = {_req_name(line) for line in frozen.splitlines() if line.strip()} - {"hardened"}
    problems = []
    if leaked := sorted(installed & dev - closure):
        problems.append(f"dev or workspace packages installed: {', '.join(leaked)}")
    if beyond := sorted(installed - closure - dev):
        problems.append(f"installed beyond the declared closure: {', '.join(beyond)}")
    return python, len(installed), problems


def _run_child(flavour: str, python: Path, tmp: Path, public: list[str]) -> dict[str, Any]:
    """The child's report from ``flavour``'s venv, run with cwd outside the repository."""
    work = tmp / flavour / "cwd"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    started = time.monotonic()
    try:
        child = subprocess.run(
            [str(python), "-I", str(Path(__file__).resolve()), "--child", flavour],
            input=json.dumps({"public": public, "root": str(ROOT)}),
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"problems": ["the child ran over 120 s"], "smoke": [], "modules": 0, "seconds": 120}
    try:
        report: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        tail = (child.stdout + child.stderr).strip().splitlines()[-5:]
        problem = f"child exited {child.returncode}: " + " | ".join(tail)
        report = {"problems": [problem], "smoke": [], "modules": 0}
    report["seconds"] = time.monotonic() - started
    return report


def main() -> int:
    project = tomllib.loads((LIBRARY / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    lines: list[str] = []
    seen: dict[str, list[str]] = {}  # problem -> where it occurs, in order
    with tempfile.TemporaryDirectory(prefix="hardened-wheel-") as tmp_name:
        tmp = Path(tmp_name)
        build = ["uv", "build", "--quiet", "--package", "hardened", "--wheel", "-o", str(tmp)]
        _run(build, cwd=ROOT)
        (wheel,) = tmp.glob("hardened-*.whl")
        public, problems = _static_checks(wheel, extras)
        lines.append(_line("wheel", problems, f"{wheel.name}, {len(public)} public modules"))
        for problem in problems:
            seen.setdefault(problem, []).append("wheel")
        dev = _dev_names()
        installed: dict[str, tuple[Path, int, list[str]]] = {}
        install_seconds: dict[str, float] = {}
        reports: dict[str, Future[dict[str, Any]]] = {}
        # Installs one at a time (see _install); each child starts once its venv is ready.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for flavour in FLAVOURS:
                started = time.monotonic()
                try:
                    installed[flavour] = _install(flavour, wheel, tmp, dev)
                except Exception as exc:
                    installed[flavour] = Path(), 0, [str(exc)]
                    continue
                finally:
                    install_seconds[flavour] = time.monotonic() - started
                python = installed[flavour][0]
                reports[flavour] = pool.submit(_run_child, flavour, python, tmp, public)
            for flavour in FLAVOURS:
                _, packages, problems = installed[flavour]
                if flavour not in reports:
                    lines.append(_line(flavour, problems, "not installed"))
                else:
                    report = reports[flavour].result()
                    problems += report["problems"]
                    summary = (
                        f"{packages} packages, {report['modules']} modules;"
                        f" smoke: {', '.join(report['smoke']) or '-'}"
                        f" (install {install_seconds[flavour]:.1f} s,"
                        f" run {report['seconds']:.1f} s)"
                    )
                    lines.append(_line(flavour, problems, summary))
                for problem in problems:
                    seen.setdefault(problem, []).append(flavour)
    print("\n".join(lines))
    if seen:
        print(f"{len(seen)} problems (and where):")
        for problem, where in seen.items():
            print(f"  - {problem} [{', '.join(where)}]")
    return 1 if seen else 0


def _line(what: str, problems: list[str], summary: str) -> str:
    verdict = f"FAIL ({len(problems)})" if problems else "ok"
    return f"{what:<9} {verdict:<9} {summary}"


# --- child: runs inside a flavour's venv ------------------------------------------


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _names_extra(message: str, extras: Iterable[str]) -> bool:
    return any(f"hardened[{extra}]" in message for extra in extras)


def _check_modules(flavour: str, public: list[str]) -> list[str]:
    import importlib

    problems = []
    wanted = enabled(flavour)
    missing_extras = [e for e in MODULES if e != "all" and not enabled(e) <= wanted]
    for name in public:
        if name not in enabled("all"):
            continue  # unclassified: the parent's static check reports it
        if name in wanted:
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                problems.append(f"import {name}: {_first_line(exc)}")
                continue
            for attr in getattr(module, "__all__", ()):
                try:
                    getattr(module, attr)
                except ImportError as exc:
                    if not _names_extra(str(exc), missing_extras):
                        problems.append(f"{name}.{attr}: {_first_line(exc)}")
                except Exception as exc:
                    problems.append(f"{name}.{attr}: {_first_line(exc)}")
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if not _names_extra(str(exc), enabling_extras(name)):
                wanted_extras = " or ".join(f"hardened[{e}]" for e in enabling_extras(name)[:2])
                problems.append(f"import {name}: {_first_line(exc)} (should name {wanted_extras})")
        except Exception as exc:
            problems.append(f"import {name}: {_first_line(exc)}")
        else:
            problems.append(f"import {name} works without its extra: move it to this flavour")
    return problems


def _isolation_problems(root: str) -> list[str]:
    import hardened

    problems = []
    location = Path(hardened.__file__).resolve()
    if not location.is_relative_to(Path(sys.prefix).resolve()):
        problems.append(f"hardened imported from {location}, not the venv")
    if any(Path(p or ".").resolve().is_relative_to(root) for p in sys.path):
        problems.append("the repository is on sys.path")
    return problems


async def _asgi(
    app: Any, method: str, path: str, *, host: str = "api.example.com", body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request through ``app`` by hand: status, headers, body."""
    headers = [(b"host", host.encode())]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    finished = asyncio.Event()
    status = 0
    out_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers.update((k.decode(), v.decode()) for k, v in message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    await app(scope, receive, send)
    return status, out_headers, b"".join(chunks)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


async def _smoke_bare() -> str:
    import io
    import secrets

    from hardened.config import secret_problem
    from hardened.errors import NotFound, problem_for
    from hardened.http import (
        BodyLimitMiddleware,
        ContentTypeMiddleware,
        RequestIdMiddleware,
        SecurityHeadersMiddleware,
        TrustedHostMiddleware,
    )
    from hardened.idempotency import Claimed, Completed, StoreBackend
    from hardened.logging import configure_logging, get_logger
    from hardened.ratelimit import Policy, RateLimiter
    from hardened.stores import MemoryStore

    problem = problem_for(NotFound("no such thing"))
    _expect(json.loads(problem.body())["code"] == "resource.not_found", "problem code")
    _expect(secret_problem("short") is not None, "a short secret refused")
    _expect(secret_problem(secrets.token_urlsafe(48)) is None, "a random secret accepted")

    stream = io.StringIO()
    configure_logging(json=True, app_loggers=["smoke"], stream=stream)
    get_logger("smoke").info("smoke.signed_in", email="alice@example.com")
    logged = stream.getvalue()
    _expect("smoke.signed_in" in logged and "alice@example.com" not in logged, "email redacted")

    async def hello(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"hello": "world"}'})

    app = RequestIdMiddleware(
        SecurityHeadersMiddleware(
            TrustedHostMiddleware(
                BodyLimitMiddleware(ContentTypeMiddleware(hello), max_bytes=16),
                allowed_hosts=["api.example.com"],
            )
        )
    )
    status, headers, body = await _asgi(app, "GET", "/")
    _expect(status == 200 and json.loads(body) == {"hello": "world"}, f"GET / answered {status}")
    _expect(headers.get("x-content-type-options") == "nosniff", "security headers")
    _expect(bool(headers.get("x-request-id")), "request id")
    status, headers, body = await _asgi(app, "GET", "/", host="evil.example")
    _expect(status == 400 and json.loads(body)["code"] == "request.bad_host", "bad host refused")
    _expect(headers["content-type"].startswith("application/problem+json"), "problem+json")
    status, _, _ = await _asgi(app, "POST", "/", body=b'{"padding": "' + b"x" * 32 + b'"}')
    _expect(status == 413, f"oversized body answered {status}")

    store = MemoryStore()
    limiter = RateLimiter(store)
    policy = Policy("smoke", limit=1, period=60)
    first = await limiter.check([(policy, "k")])
    second = await limiter.check([(policy, "k")])
    _expect(first.allowed and not second.allowed, "rate limit admits exactly one")

    backend = StoreBackend(store)
    claim = await backend.claim("k", b"fp", lease=5, retention=60)
    _expect(isinstance(claim, Claimed), f"first claim answered {claim!r}")
    token = cast("Claimed", claim).token
    _expect(await backend.complete("k", token, b"ok", retention=60), "completion stored")
    _expect(await backend.claim("k", b"fp", lease=5, retention=60) == Completed(b"ok"), "replay")
    await store.aclose()
    return "http guards, problem, redaction, rate limit, idempotency"


def _service_url(env: str, default: str, *, path: str, scheme: str | None = None) -> str:
    """``env``'s URL (or ``default``) with its path replaced: same server, our own database."""
    parts = urlsplit(os.environ.get(env) or default)
    return urlunsplit(parts._replace(scheme=scheme or parts.scheme, path=path, query=""))


async def _smoke_redis() -> str:
    import uuid

    from hardened.ratelimit import Policy, RateLimiter
    from hardened.stores import RedisStore

    url = _service_url("REDIS_URL", "redis://127.0.0.1:6379/14", path="/14")
    prefix = f"wheel-check:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        await store.ping()
        policy = Policy("smoke", limit=1, period=60)
        decisions = [await RateLimiter(store).check([(policy, "k")]) for _ in range(2)]
        _expect([d.allowed for d in decisions] == [True, False], "Redis rate limit script")
        _expect(await store.incr("n", ttl=60) == 1, "Redis counter")
    finally:
        keys = [k async for k in store.client.scan_iter(match=f"{prefix}*")]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()
    return "RedisStore ping, script, counter"


async def _select_one(url: str, *, sqlite: bool) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    from hardened.db import run_transaction, sqlite_immediate_transactions

    engine = create_async_engine(url)
    if sqlite:
        sqlite_immediate_transactions(engine)
    try:

        async def one(session: AsyncSession) -> Any:
            return (await session.execute(text("SELECT 1"))).scalar_one()

        sessions = async_sessionmaker(engine)
        timeout = None if sqlite else 5.0
        _expect(await run_transaction(sessions, one, statement_timeout=timeout) == 1, "SELECT 1")
    finally:
        await engine.dispose()


async def _smoke_postgres() -> str:
    url = _service_url(
        "DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        path="/postgres",
        scheme="postgresql+psycopg",
    )
    await _select_one(url, sqlite=False)
    return "run_transaction SELECT 1 on PostgreSQL"


async def _smoke_sqlite() -> str:
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import create_async_engine

    from hardened.idempotency import Claimed, Completed, SqlBackend, idempotency_table

    await _select_one("sqlite+aiosqlite://", sqlite=True)
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        metadata = MetaData()
        backend = SqlBackend(engine, idempotency_table(metadata))
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        claim = await backend.claim("k", b"fp", lease=5, retention=60)
        _expect(isinstance(claim, Claimed), f"SQL claim answered {claim!r}")
        token = cast("Claimed", claim).token
        _expect(await backend.complete("k", token, b"ok", retention=60), "SQL completion")
        _expect(await backend.claim("k", b"fp", lease=5, retention=60) == Completed(b"ok"), "SQL")
    finally:
        await engine.dispose()
    return "run_transaction SELECT 1 and SqlBackend on SQLite"


async def _smoke_fastapi() -> str:
    from fastapi import FastAPI

    from hardened.errors import NotFound
    from hardened.fastapi import install_problem_handlers
    from hardened.openapi import install_openapi

    app = FastAPI()
    install_problem_handlers(app)
    install_openapi(app)

    @app.get("/items/{n}")
    async def item(n: int) -> dict[str, int]:
        if n == 0:
            raise NotFound("no item zero")
        return {"n": n}

    status, _, body = await _asgi(app, "GET", "/items/1")
    _expect(status == 200 and json.loads(body) == {"n": 1}, f"GET /items/1 answered {status}")
    status, headers, body = await _asgi(app, "GET", "/items/0")
    _expect(status == 404 and json.loads(body)["code"] == "resource.not_found", "404 problem")
    _expect(headers["content-type"].startswith("application/problem+json"), "problem+json")
    status, _, body = await _asgi(app, "GET", "/items/x")
    _expect(status == 422 and "code" in json.loads(body), f"bad path answered {status}")
    _expect("Problem" in app.openapi()["components"]["schemas"], "OpenAPI problem schema")
    return "FastAPI problems, OpenAPI"


async def _smoke_auth() -> str:
    import secrets

    from hardened.auth.passwords import PasswordHasher
    from hardened.auth.tokens import AccessTokenConfig, AccessTokens
    from hardened.crypto import derive_key

    hasher = PasswordHasher()
    stored = await hasher.hash("correct horse battery staple")
    _expect((await hasher.verify("correct horse battery staple", stored)).ok, "password verifies")
    _expect(not (await hasher.verify("wrong horse battery staple", stored)).ok, "wrong refused")
    config = AccessTokenConfig(
        issuer="wheel-check", audience="wheel-check", signing_key=secrets.token_urlsafe(48)
    )
    tokens = AccessTokens(config)
    token = tokens.issue(subject="u1", tenant="t1", session_id="s1")
    _expect(tokens.verify(token).sub == "u1", "token verifies")
    _expect(len(derive_key("a" * 48, "smoke")) == 32, "derived key")
    return "password hash/verify, token issue/verify, derive_key"


async def _smoke_outbound() -> str:
    import httpx

    from hardened.outbound import GovernedTransport, Governor, GovernorConfig, RetryConfig

    answers = [503, 200]

    def provider(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answers.pop(0))

    config = GovernorConfig("smoke", retry=RetryConfig(base=0.001, cap=0.002), cap=None)
    transport = GovernedTransport(Governor(config), httpx.MockTransport(provider))
    async with httpx.AsyncClient(transport=transport, base_url="http://provider.test") as client:
        response = await client.get("/x")
    _expect(response.status_code == 200 and not answers, "503 retried, then 200")
    return "governed GET retried through stamina"


async def _smoke_crypto() -> str:
    import uuid

    from sqlalchemy import MetaData, create_engine

    from hardened.crypto import (
        DataKeyStore,
        DecryptionFailed,
        Keyring,
        LocalKeyProvider,
        data_keys_table,
        generate_keyring_entry,
    )

    metadata = MetaData()
    table = data_keys_table(metadata)
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    store = DataKeyStore(table, LocalKeyProvider(Keyring.parse(generate_keyring_entry("k1"))))
    tenant, row = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        cipher = store.ensure(conn, tenant).column("kyc", "national_id")
    sealed = cipher.encrypt(b"4991 1866 5246", row)
    _expect(cipher.decrypt(sealed, row) == b"4991 1866 5246", "value decrypts")
    try:
        cipher.decrypt(sealed, uuid.uuid4())
    except DecryptionFailed:
        pass
    else:
        raise AssertionError("a value moved to another row decrypted")
    return "data key wrapped in SQLite, field sealed, moved value refused"


SMOKES: dict[str, Callable[[], Awaitable[str]]] = {
    "bare": _smoke_bare,
    "redis": _smoke_redis,
    "postgres": _smoke_postgres,
    "sqlite": _smoke_sqlite,
    "fastapi": _smoke_fastapi,
    "auth": _smoke_auth,
    "outbound": _smoke_outbound,
    "crypto": _smoke_crypto,
}


async def _smoke(flavour: str) -> tuple[list[str], list[str]]:
    names = list(SMOKES) if flavour == "all" else list(dict.fromkeys(["bare", flavour]))
    done, problems = [], []
    for name in names:
        try:
            done.append(await SMOKES[name]())
        except Exception as exc:
            ours = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
            line = f" (wheel_check.py line {ours[-1].lineno})" if ours else ""
            problems.append(f"smoke {name}: {_first_line(exc)}{line}")
    return done, problems


def child(flavour: str) -> int:
    given = json.loads(sys.stdin.read())
    public: list[str] = given["public"]
    problems = _isolation_problems(given["root"])
    problems += _check_modules(flavour, public)
    smoke, smoke_problems = asyncio.run(_smoke(flavour))
    problems += smoke_problems
    modules = len(enabled(flavour) & set(public))
    print(json.dumps({"problems": problems, "smoke": smoke, "modules": modules}))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=FLAVOURS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.exit(child(args.child) if args.child else main())
