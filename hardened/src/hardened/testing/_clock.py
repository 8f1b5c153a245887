"""A clock tests move by hand, for the memory backends' injectable ``clock``."""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """Returns ``now``; advance it by assigning or adding to ``now``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
