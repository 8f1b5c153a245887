"""Logging pipeline: fields on every line, redaction last, stdlib records included."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from hardened._context import get_correlation_id
from hardened._redact import EMAIL, REDACTED, use_redactor
from hardened.logging import (
    Redactor,
    Sampler,
    configure_logging,
    correlation_scope,
    get_logger,
    new_correlation_id,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from structlog.typing import EventDict, WrappedLogger

Configure = Callable[..., io.StringIO]
# Loggers whose levels the tests below may set; restored afterwards.
LEVELED = ("hardened", "shopfront", "sqlalchemy", "sqlalchemy.engine", "aiosqlite", "asyncio")


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Configure logging into a fresh buffer; the previous logging state is restored after."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    levels = {name: logging.getLogger(name).level for name in LEVELED}

    def _configure(**kwargs: Any) -> io.StringIO:
        buf = io.StringIO()
        configure_logging(**{"json": True, "stream": buf, **kwargs})
        return buf

    yield _configure
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, number in levels.items():
        logging.getLogger(name).setLevel(number)
    structlog.configure(**config)
    use_redactor(Redactor())


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_line_has_the_standard_fields(configure: Configure) -> None:
    """A JSON line carries event, level, logger, an ISO UTC timestamp and correlation_id."""
    buf = configure()
    get_logger("orders").info("order.created", order="A-1")
    [line] = _lines(buf)
    assert line["event"] == "order.created"
    assert line["level"] == "info"
    assert line["logger"] == "orders"
    assert line["order"] == "A-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
    assert "correlation_id" in line


def test_correlation_id_is_on_every_line_of_a_scope(configure: Configure) -> None:
    """Structlog and stdlib lines inside a scope all carry its id; lines outside carry null."""
    buf = configure()
    with correlation_scope("req-42") as cid:
        get_logger("a").info("one")
        logging.getLogger("uvicorn.error").warning("two")
        get_logger("b").error("three")
    get_logger("a").info("after")
    lines = _lines(buf)
    assert cid == "req-42"
    assert [line["correlation_id"] for line in lines] == ["req-42"] * 3 + [None]


def test_correlation_scope_nests_and_restores() -> None:
    """An inner scope shadows the outer one and both are undone on exit."""
    with correlation_scope() as outer:
        assert re.fullmatch(r"[0-9a-f]{32}", outer)
        with correlation_scope("inner"):
            assert get_correlation_id() == "inner"
            assert structlog.contextvars.get_contextvars()["correlation_id"] == "inner"
        assert get_correlation_id() == outer
    assert get_correlation_id() is None
    assert "correlation_id" not in structlog.contextvars.get_contextvars()


def test_generated_ids_are_unique() -> None:
    """new_correlation_id never repeats across many calls."""
    assert len({new_correlation_id() for _ in range(1000)}) == 1000


def test_configure_twice_installs_one_handler(configure: Configure) -> None:
    """Calling configure_logging again replaces its handler, so a line is written once."""
    configure()
    buf = configure()
    get_logger("x").info("once")
    assert len(_lines(buf)) == 1
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_Handler"]
    assert len(ours) == 1


def test_exception_message_is_redacted_in_the_traceback(configure: Configure) -> None:
    """A password and an email in an exception message do not survive the rendered traceback."""
    buf = configure()
    log = get_logger("auth")
    try:
        raise ValueError("login failed: password=hunter2 user=alice@example.com")  # noqa: TRY301
    except ValueError:
        log.exception("login.error")
    [line] = _lines(buf)
    assert "Traceback (most recent call last)" in line["exception"]
    assert "hunter2" not in buf.getvalue()
    assert "alice@example.com" not in buf.getvalue()
    assert f"password={REDACTED}" in line["exception"]


def test_console_renderer_redacts_tracebacks_too(configure: Configure) -> None:
    """The development renderer prints the redacted traceback, without colours off a TTY."""
    buf = configure(json=False)
    try:
        raise KeyError("secret=s3cr3t-value")  # noqa: TRY301
    except KeyError:
        get_logger("dev").exception("failed", email="bob@example.com")
    out = buf.getvalue()
    assert "s3cr3t-value" not in out
    assert "bob@example.com" not in out
    assert EMAIL in out
    assert "\x1b[" not in out


def test_stdlib_records_are_redacted(configure: Configure) -> None:
    """Records from plain logging (uvicorn, SQLAlchemy) get the same fields and scrubbing."""
    buf = configure()
    logging.getLogger("sqlalchemy.engine").warning("params token=%s for %s", "abc123", "x@y.io")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("uvicorn.error").exception("crash for Bearer tok-123456789")
    first, second = _lines(buf)
    assert first["event"] == f"params token={REDACTED} for {EMAIL}"
    assert first["logger"] == "sqlalchemy.engine"
    assert first["level"] == "warning"
    assert second["event"] == f"crash for Bearer {REDACTED}"
    assert "ZeroDivisionError" in second["exception"]


def test_uvicorn_loggers_are_routed_to_our_handler(configure: Configure) -> None:
    """Handlers and levels uvicorn puts on its loggers are reset so lines reach our handler."""
    stray = logging.StreamHandler(io.StringIO())
    access = logging.getLogger("uvicorn.access")
    access.addHandler(stray)
    access.propagate = False
    access.setLevel(logging.ERROR)
    buf = configure()
    access.info('%s - "GET /?token=abc HTTP/1.1" 200', "1.2.3.4")
    assert stray not in access.handlers
    assert access.propagate
    [line] = _lines(buf)
    assert line["event"] == f'1.2.3.4 - "GET /?token={REDACTED} HTTP/1.1" 200'


def test_extra_processors_run_before_redaction(configure: Configure) -> None:
    """What an extra processor adds is still redacted, because redaction runs last."""

    def add_user(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["user_email"] = "carol@example.com"
        event_dict["api_key"] = "k"
        return event_dict

    buf = configure(extra_processors=[add_user])
    get_logger("x").info("hello")
    [line] = _lines(buf)
    assert line["user_email"] == EMAIL
    assert line["api_key"] == REDACTED


def test_level_filters_structlog_and_stdlib(configure: Configure) -> None:
    """Below the configured level nothing is written, from either API."""
    buf = configure(level="warning")
    get_logger("x").info("quiet")
    logging.getLogger("y").info("quiet")
    get_logger("x").warning("loud")
    assert [line["event"] for line in _lines(buf)] == ["loud"]


def test_unknown_level_is_refused(configure: Configure) -> None:
    """A typo in the level fails at startup instead of silently logging everything."""
    with pytest.raises(ValueError, match="VERBOSE"):
        configure(level="VERBOSE")


def test_custom_redactor_applies_and_reconfigure_resets_it(configure: Configure) -> None:
    """A redactor given to configure_logging applies until reconfigured without one."""
    buf = configure(redactor=Redactor(extra_keys=frozenset({"tenant"})))
    get_logger("x").info("a", tenant_name="acme")
    assert _lines(buf)[0]["tenant_name"] == REDACTED
    buf = configure()
    get_logger("x").info("a", tenant_name="acme")
    assert _lines(buf)[0]["tenant_name"] == "acme"


def test_loggers_created_before_configure_follow_it(configure: Configure) -> None:
    """A module-level logger obtained before configuration writes through the new setup."""
    early = get_logger("early")
    buf = configure()
    early.info("late", password="pw")
    [line] = _lines(buf)
    assert line["password"] == REDACTED
    assert line["logger"] == "early"


def _library_chatter() -> None:
    """What aiosqlite, asyncio, httpcore and SQLAlchemy say below INFO, through plain logging."""
    logging.getLogger("aiosqlite").debug("executing %s", "SELECT 1")
    logging.getLogger("aiosqlite").debug("operation %s completed", "<function>")
    logging.getLogger("asyncio").debug("Using selector: EpollSelector")
    logging.getLogger("httpcore.connection").debug("connect_tcp.started host='x'")
    logging.getLogger("sqlalchemy.engine.Engine").debug("Row (1,)")


def test_debug_level_does_not_open_library_debug_output(configure: Configure) -> None:
    """At DEBUG the library's own debug lines appear; aiosqlite's and other libraries' do not."""
    buf = configure(level="DEBUG")
    _library_chatter()
    get_logger("hardened.idempotency").debug("idempotency.replayed")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    logging.getLogger("aiosqlite").warning("still heard")
    assert [(line["logger"], line["event"]) for line in _lines(buf)] == [
        ("hardened.idempotency", "idempotency.replayed"),
        ("uvicorn.error", "Application startup complete."),
        ("aiosqlite", "still heard"),
    ]


def test_app_loggers_follow_the_level_and_levels_open_one_library(configure: Configure) -> None:
    """app_loggers get the app's DEBUG, levels= opens one library, library_level quiets the rest."""
    buf = configure(
        level="DEBUG",
        app_loggers=("shopfront",),
        library_level="WARNING",
        levels={"sqlalchemy.engine": "DEBUG"},
    )
    _library_chatter()
    get_logger("shopfront.app").debug("app.detail")
    logging.getLogger("httpx").info("HTTP Request: GET /")  # below library_level
    assert [(line["logger"], line["event"]) for line in _lines(buf)] == [
        ("sqlalchemy.engine.Engine", "Row (1,)"),
        ("shopfront.app", "app.detail"),
    ]
    # Reconfiguring without them puts those loggers back under the root's level.
    buf = configure(level="DEBUG")
    _library_chatter()
    get_logger("shopfront.app").debug("app.detail")
    logging.getLogger("httpx").info("HTTP Request: GET /")
    assert [line["logger"] for line in _lines(buf)] == ["httpx"]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sampler_lets_the_first_through_then_one_per_interval_with_the_count() -> None:
    """Per key: the first passes with 0, the rest of the interval is dropped and counted."""
    clock = Clock()
    sampler = Sampler(1.0, clock=clock)
    outcomes = []
    for _ in range(10):
        outcomes.append(sampler.admit("a"))
        clock.now += 0.25  # four per interval
    assert outcomes == [0, None, None, None, 3, None, None, None, 3, None]
    assert sampler.pending() == {"a": 1}
    assert sampler.admit("b") == 0  # another kind is not held back by the first
    clock.now += 5
    assert (sampler.admit("a"), sampler.pending()) == (1, {})


def test_sampler_log_adds_suppressed_and_keys_on_event_and_code() -> None:
    """Sampler.log writes suppressed=N and treats another code of the same event apart."""
    clock = Clock()
    sampler = Sampler(clock=clock)
    with structlog.testing.capture_logs() as logs:
        log = structlog.get_logger("t")
        for code in ["x.a", "x.a", "x.b", "x.a"]:
            sampler.log(log, "warning", "request.refused", code=code, status=503)
        clock.now += 1
        sampler.log(log, "warning", "request.refused", code="x.a", status=503)
    assert [(e["code"], e["suppressed"], e["log_level"]) for e in logs] == [
        ("x.a", 0, "warning"),
        ("x.b", 0, "warning"),
        ("x.a", 2, "warning"),
    ]


def test_sampler_bounds_its_keys_and_interval_zero_admits_all() -> None:
    """At most max_keys kinds are remembered; interval=0 drops nothing."""
    clock = Clock()
    sampler = Sampler(clock=clock, max_keys=2)
    assert [sampler.admit(k) for k in ["a", "b", "c", "a"]] == [0, 0, 0, 0]  # "a" was forgotten
    assert sampler.admit("c") is None
    every = Sampler(0, clock=clock)
    assert [every.admit("a") for _ in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="interval"):
        Sampler(-1)
