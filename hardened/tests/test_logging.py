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
    configure_logging,
    correlation_scope,
    get_logger,
    new_correlation_id,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from structlog.typing import EventDict, WrappedLogger

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Configure logging into a fresh buffer; the previous logging state is restored after."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()

    def _configure(**kwargs: Any) -> io.StringIO:
        buf = io.StringIO()
        configure_logging(**{"json": True, "stream": buf, **kwargs})
        return buf

    yield _configure
    root.handlers[:] = handlers
    root.setLevel(level)
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
