"""Structured logs that are safe to ship: JSON in production, readable in development.

Every line carries the correlation id of the work it belongs to, and redaction
runs last, just before rendering, so nothing a processor, a library or a
traceback adds can slip past it. Standard-library records (uvicorn, SQLAlchemy,
procrastinate) go through the same chain via one root handler, so they get the
same fields and the same scrubbing as our own events.

Run uvicorn with ``log_config=None`` (and SQLAlchemy without ``echo=True``):
both otherwise attach handlers of their own that print unredacted lines.

The configured level is the application's, not every library's: turning on
DEBUG for the app must not open aiosqlite's, asyncio's or httpcore's debug
streams, which drown the app's lines (thousands per minute) and carry raw
statements and payloads. Third-party loggers stay at ``library_level``
(INFO by default) unless a logger is named in ``levels``.

During an outage every request ends in the same refusal; `Sampler` lets the
first of each kind through and then one per interval, counting the rest.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import structlog

from hardened._context import correlation_id_var
from hardened._redact import Redactor, redact_event, redact_value, use_redactor

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence

    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "Redactor",
    "Sampler",
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
# Our own loggers: they follow the application's level, like the ``app_loggers``.
_OWN_LOGGERS = ("hardened",)
# Loggers whose level the last configure_logging call set, undone by the next one.
_leveled: set[str] = set()


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
    app_loggers: Sequence[str] = (),
    library_level: str = "INFO",
    levels: Mapping[str, str] | None = None,
    extra_processors: Sequence[Processor] = (),
    redactor: Redactor | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Configure structlog and the stdlib root logger; calling again replaces the setup.

    ``json`` selects one JSON object per line (production) or the console
    renderer (development). ``level`` applies to the application's loggers:
    ``hardened`` and those named in ``app_loggers`` (with their children, e.g.
    ``("shopfront",)``). Every other logger, third-party libraries and uvicorn
    included, is never more verbose than ``library_level`` (nor than
    ``level``), so ``level="DEBUG"`` does not open their debug output.
    ``levels`` sets chosen loggers (and their children) exactly (``{"sqlalchemy.engine": "INFO"}``
    to see statements). ``extra_processors`` run after the standard fields
    are added and before exceptions are formatted and the event is redacted.
    ``redactor`` replaces the default redaction policy (also used by
    `redact_value`). Lines go to ``stream``, standard output by default.
    """
    number = _level_number(level)
    library_number = max(number, _level_number(library_level))
    exact = {name: _level_number(value) for name, value in (levels or {}).items()}
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
    root.setLevel(library_number)
    for name in _ROUTED_LOGGERS:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.setLevel(logging.NOTSET)  # the root's level governs them too
        routed.propagate = True
        routed.disabled = False
    _set_levels(
        {
            **dict.fromkeys((*_OWN_LOGGERS, *app_loggers), number),
            **exact,
        }
    )


def _set_levels(wanted: dict[str, int]) -> None:
    for name in _leveled - wanted.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)  # back to following the root
    for name, number in wanted.items():
        logging.getLogger(name).setLevel(number)
    _leveled.clear()
    _leveled.update(wanted)


class _Kind:
    __slots__ = ("last", "suppressed")

    def __init__(self, last: float) -> None:
        self.last = last
        self.suppressed = 0


class Sampler:
    """Let the first event of each kind through, then at most one per ``interval`` seconds.

    An outage turns every request into the same refusal: a line each buries
    the first (the useful one) and costs I/O when the service can least afford
    it. Each line let through says how many of its kind were dropped since the
    previous one (``suppressed``), so totals survive sampling. At most
    ``max_keys`` kinds are remembered (the least recently logged is forgotten,
    with its count), so keys derived from input cannot grow memory.
    ``interval=0`` lets everything through. Thread-safe; ``clock`` is
    injectable for tests.
    """

    def __init__(
        self,
        interval: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        if interval < 0 or max_keys < 1:
            msg = "interval must be >= 0 and max_keys >= 1"
            raise ValueError(msg)
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._kinds: dict[Hashable, _Kind] = {}
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> int | None:
        """None to drop this event; else how many of its kind were dropped since the last."""
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is not None and now - kind.last < self.interval:
                kind.suppressed += 1
                return None
            dropped = kind.suppressed if kind is not None else 0
            self._kinds.pop(key, None)  # re-inserted last: the dict is in logging order
            if len(self._kinds) >= self._max_keys:
                del self._kinds[next(iter(self._kinds))]
            self._kinds[key] = _Kind(now)
            return dropped

    def pending(self) -> dict[Hashable, int]:
        """Per kind, the events dropped since its last line (no line has reported them yet)."""
        with self._lock:
            return {key: kind.suppressed for key, kind in self._kinds.items() if kind.suppressed}

    def log(self, logger: Any, level: str, event: str, /, **fields: Any) -> bool:
        """Log ``event`` at ``level``, with ``suppressed=N``, unless dropped; kind = event, code."""
        suppressed = self.admit((event, fields.get("code")))
        if suppressed is None:
            return False
        getattr(logger, level)(event, suppressed=suppressed, **fields)
        return True


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger bound to the stdlib logger ``name`` (module ``__name__``)."""
    return structlog.stdlib.get_logger(name, **initial_values)
