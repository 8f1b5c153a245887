"""Structured logs that are safe to ship: JSON in production, readable in development.

Every line carries the correlation id of the work it belongs to, and redaction
runs last, just before rendering, so nothing a processor, a library or a
traceback adds can slip past it. Standard-library records (uvicorn, SQLAlchemy,
procrastinate) go through the same chain via one root handler, so they get the
same fields and the same scrubbing as our own events.

Run uvicorn with ``log_config=None`` (and SQLAlchemy without ``echo=True``):
both otherwise attach handlers of their own that print unredacted lines.
"""

from __future__ import annotations

import logging
import sys
import uuid
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import structlog

from hardened._context import correlation_id_var
from hardened._redact import Redactor, redact_event, redact_value, use_redactor

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "Redactor",
    "add_correlation_id",
    "configure_logging",
    "correlation_scope",
    "get_logger",
    "new_correlation_id",
    "redact_event",
    "redact_value",
]

# Libraries that install handlers and levels of their own; configure_logging
# routes them to the root handler instead so their lines are redacted too.
_ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class _Handler(logging.StreamHandler[IO[str]]):
    """The root handler `configure_logging` owns (replaced, never stacked)."""


def new_correlation_id() -> str:
    """A fresh correlation id: 32 hex digits, unguessable and header-safe."""
    return uuid.uuid4().hex


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Tag every log line in the block with a correlation id (jobs, CLI, tasks).

    The id is set in `hardened._context` (read by errors and outbound calls)
    and bound in structlog's context variables; both are restored on exit, so
    scopes nest.
    """
    cid = correlation_id or new_correlation_id()
    token = correlation_id_var.set(cid)
    bound = structlog.contextvars.bind_contextvars(correlation_id=cid)
    try:
        yield cid
    finally:
        structlog.contextvars.reset_contextvars(**bound)
        correlation_id_var.reset(token)


def add_correlation_id(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Structlog processor: the current correlation id (``None`` outside any scope)."""
    event_dict.setdefault("correlation_id", correlation_id_var.get())
    return event_dict


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        msg = f"unknown log level {level!r}"
        raise ValueError(msg)
    return number


def _shared_processors() -> list[Processor]:
    # Run for structlog events and for stdlib records alike, in the caller's
    # context (the handler formats synchronously), so context variables hold.
    return [
        structlog.contextvars.merge_contextvars,
        add_correlation_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(*, json: bool, stream: IO[str]) -> Processor:
    if json:
        # Our redactor already turned unknown objects into scrubbed strings;
        # what is left (datetime, UUID, Decimal) renders fine with str().
        return structlog.processors.JSONRenderer(default=str)
    isatty = getattr(stream, "isatty", None)
    colors = bool(isatty and isatty())
    return structlog.dev.ConsoleRenderer(colors=colors)


def configure_logging(
    *,
    json: bool,
    level: str = "INFO",
    extra_processors: Sequence[Processor] = (),
    redactor: Redactor | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Configure structlog and the stdlib root logger; calling again replaces the setup.

    ``json`` selects one JSON object per line (production) or the console
    renderer (development). ``extra_processors`` run after the standard fields
    are added and before exceptions are formatted and the event is redacted.
    ``redactor`` replaces the default redaction policy (also used by
    `redact_value`). Lines go to ``stream``, standard output by default.
    """
    number = _level_number(level)
    use_redactor(redactor if redactor is not None else Redactor())
    shared = _shared_processors()
    # The structlog-side chain is the same on every call, which keeps
    # caching bound loggers safe across reconfiguration: everything that
    # varies lives in the formatter, which is rebuilt below.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        context_class=dict,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    out = stream if stream is not None else sys.stdout
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *extra_processors,
            # Tracebacks become text here so the redactor sees them; the
            # console renderer would otherwise format them after redaction.
            structlog.processors.format_exc_info,
            redact_event,
            _renderer(json=json, stream=out),
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(number)
    for name in _ROUTED_LOGGERS:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.setLevel(logging.NOTSET)  # ``level`` above governs them too
        routed.propagate = True
        routed.disabled = False


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger bound to the stdlib logger ``name`` (module ``__name__``)."""
    return structlog.stdlib.get_logger(name, **initial_values)
