"""Outgoing account emails. No provider is wired yet (outbound governance comes later).

`OutboxMailer` keeps the last messages in memory: tests and development read the
reset link from it. The token itself is never logged; only that a message was
queued, to whom (redacted by the logging pipeline).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import structlog

__all__ = ["OutboxMailer", "ResetMessage"]

_log = structlog.get_logger("shopfront.mailer")


@dataclass(frozen=True, slots=True)
class ResetMessage:
    shop: str
    email: str
    token: str


@dataclass
class OutboxMailer:
    """Holds the most recent messages (bounded) instead of sending them."""

    limit: int = 100
    sent: deque[ResetMessage] = field(default_factory=deque)

    async def password_reset(self, *, shop: str, email: str, token: str) -> None:
        self.sent.append(ResetMessage(shop, email, token))
        while len(self.sent) > self.limit:
            self.sent.popleft()
        _log.info("mail.password_reset_queued", shop=shop, email=email)
