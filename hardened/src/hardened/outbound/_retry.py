"""Retry decisions: full-jitter backoff, the retry budget, deadlines and ``Retry-After``.

The loop itself runs on stamina (attempt counting, its testing mode and its
retry instrumentation apply); what stamina leaves to its caller is decided
here: how long to wait (full jitter, or the upstream's ``Retry-After``),
and whether to retry at all (deadline, budget).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hardened.outbound._config import RetryConfig

__all__ = [
    "RetryBudget",
    "ambient_deadline",
    "backoff",
    "deadline",
    "deadline_left",
    "parse_retry_after",
]

_deadline_var: ContextVar[float | None] = ContextVar("hardened_outbound_deadline", default=None)
_rng = random.SystemRandom()


def backoff(config: RetryConfig, retry: int) -> float:
    """Seconds before retry number ``retry`` (1-based), at most ``cap``; ``jitter`` of it random."""
    ceiling = config.cap if retry > 60 else min(config.cap, config.base * 2 ** (retry - 1))
    fixed = ceiling * (1.0 - config.jitter)
    return fixed + _rng.uniform(0, ceiling - fixed) if config.jitter else ceiling


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date), None if unusable.

    A date in the past is 0; a malformed value is None (the caller falls back
    to its own backoff), never an exception.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


@contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Bound every governed call in the block to ``seconds`` from now (nested: the earliest wins).

    For a request's whole budget: a handler that makes three calls in a row
    gives them what is left, not three full lane deadlines.
    """
    at = time.monotonic() + seconds
    outer = _deadline_var.get()
    token = _deadline_var.set(at if outer is None else min(outer, at))
    try:
        yield seconds
    finally:
        _deadline_var.reset(token)


def deadline_left() -> float | None:
    """Seconds left of the innermost `deadline` block, None outside one."""
    at = _deadline_var.get()
    return None if at is None else at - time.monotonic()


def ambient_deadline() -> float | None:
    """The innermost `deadline` block's monotonic instant, None outside one."""
    return _deadline_var.get()


class RetryBudget:
    """Retries as a share of calls: each call deposits ``ratio``, each retry spends one.

    The balance starts at ``reserve`` and never exceeds it, so a quiet
    dependency can absorb a short burst of retries, while under a lasting
    outage retries fall to ``ratio`` of calls (Finagle's retry budget,
    without its time decay: the cap bounds the reserve instead).
    """

    __slots__ = ("_balance", "_ratio", "_reserve", "exhausted", "spent")

    def __init__(self, ratio: float, reserve: int) -> None:
        self._ratio = ratio
        self._reserve = float(max(reserve, 1))
        self._balance = self._reserve
        self.spent = 0
        self.exhausted = 0

    def deposit(self) -> None:
        """A call started (its first attempt)."""
        self._balance = min(self._reserve, self._balance + self._ratio)

    def withdraw(self) -> bool:
        """Take one retry if the budget has it; counted either way."""
        if self._balance >= 1.0:
            self._balance -= 1.0
            self.spent += 1
            return True
        self.exhausted += 1
        return False

    @property
    def balance(self) -> float:
        return self._balance
