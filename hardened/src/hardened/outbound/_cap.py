"""The shared interval cap: at most ``calls`` per ``period`` plus ``burst``, for every process.

GCRA with reservation, in one store script per admission (``lua/outbound_cap.lua``)
on the store's clock (Redis ``TIME``), so processes on different hosts share
one schedule without trusting their own clocks. With ``I = period / calls``
(rounded up to a whole microsecond) and ``tau = burst * I``, a call reserves
the slot ``start = max(now, tat - tau)`` and moves the TAT on by ``I``; it
waits ``start - now`` and then calls. Any two slots ``k`` apart start at least
``k*I - tau`` apart, so any window of ``period`` holds at most
``calls + burst`` slot starts. A slot further away than the caller may wait is
refused without a write: refusals never push the schedule back.

A reservation is a promise to the other processes: a caller cancelled while
it waits for its slot loses the slot (nothing hands it back), which can only
make the dependency see fewer calls, never more.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hardened.errors import StoreUnavailable
from hardened.outbound._errors import CapExceeded
from hardened.outbound._scripts import RESERVE
from hardened.stores import tagged

if TYPE_CHECKING:
    from hardened.outbound._config import CapConfig
    from hardened.stores import AtomicScripts

__all__ = ["Admission", "IntervalCap"]

_US = 1_000_000
#: The longest wait (s) a script is asked about (~31 years): exact in Lua's doubles.
_LONGEST = 1e9
#: The refusal's code when the store is down and the cap fails closed.
_UNAVAILABLE = "outbound.cap_unavailable"


@dataclass(frozen=True, slots=True)
class Admission:
    """A reserved slot: how long to wait for it, and when it starts on the store's clock."""

    wait: float
    stamp: int | None


class IntervalCap:
    """One dependency's cap over a shared store; keyed ``hardened:{outbound:<name>}:cap``."""

    def __init__(self, name: str, config: CapConfig, store: AtomicScripts) -> None:
        self.name = name
        self.config = config
        self.store = store
        self.key = tagged("outbound", name, suffix="cap")
        period_us = round(config.period * _US)
        self.interval_us = max(1, -(-period_us // config.calls))  # rounded up: never over
        self._interval = b"%d" % self.interval_us
        self._tau = b"%d" % (config.burst * self.interval_us)
        #: Admissions let through uncapped because the store was down (``fail_open``).
        self.failed_open = 0

    async def reserve(self, max_wait: float) -> Admission:
        """Reserve the next slot if it starts within ``max_wait`` s; one store round trip.

        Refused with `CapExceeded` (``retry_after``: when such a slot would
        exist). The store down: an uncapped admission (``stamp`` None) when
        the config fails open, else `CapExceeded` coded ``outbound.cap_unavailable``.
        """
        if math.isnan(max_wait):
            raise ValueError("max_wait must be a number of seconds, got nan")
        longest = math.floor(min(max(max_wait, 0.0), _LONGEST) * _US)
        try:
            admitted, micros, stamp = await self.store.run(
                RESERVE, (self.key,), (self._interval, self._tau, b"%d" % longest)
            )
        except StoreUnavailable as exc:
            if self.config.fail_open:
                self.failed_open += 1
                return Admission(0.0, None)
            refusal = CapExceeded(
                "The dependency's call cap cannot be checked", dependency=self.name
            )
            refusal.code = _UNAVAILABLE  # type: ignore[misc]
            raise refusal from exc
        if not admitted:
            raise CapExceeded(dependency=self.name, retry_after=micros / _US)
        return Admission(micros / _US, int(stamp))

    async def admit(self, max_wait: float) -> Admission:
        """`reserve`, then wait for the slot; the admission says which slot it was."""
        admission = await self.reserve(max_wait)
        if admission.wait > 0:
            await asyncio.sleep(admission.wait)
        return admission
