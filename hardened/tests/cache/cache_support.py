"""Cache test helpers: a backend pair and a counting loader."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hardened.stores import AtomicScripts

__all__ = ["Backend", "Source"]


@dataclass
class Backend:
    name: str
    store: AtomicScripts
    advance: Callable[[float], Awaitable[None]]


class Source:
    """A loader that counts its calls and returns what ``value`` is when it runs."""

    def __init__(self, value: object = "v1", *, delay: float = 0.0) -> None:
        self.value = value
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.fail: Exception | None = None
        self.cancelled = 0

    async def __call__(self) -> object:
        self.calls += 1
        self.running += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return self.value
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
