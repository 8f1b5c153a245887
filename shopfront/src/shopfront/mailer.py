"""Outgoing account emails. No provider is wired yet (outbound governance comes later).

`OutboxMailer` keeps the last messages in memory: tests and development read
reset, invitation, verification and email-change links from it. The token
itself is never logged; only that a message was queued, to whom (redacted by
the logging pipeline).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import structlog

__all__ = ["Message", "OutboxMailer"]

_log = structlog.get_logger("shopfront.mailer")


@dataclass(frozen=True, slots=True)
class Message:
    kind: str
    shop: str
    email: str
    token: str


@dataclass
class OutboxMailer:
    """Holds the most recent messages (bounded) instead of sending them."""

    limit: int = 100
    sent: deque[Message] = field(default_factory=deque)

    def _queue(self, message: Message) -> None:
        self.sent.append(message)
        while len(self.sent) > self.limit:
            self.sent.popleft()
        _log.info(f"mail.{message.kind}_queued", shop=message.shop, email=message.email)

    async def password_reset(self, *, shop: str, email: str, token: str) -> None:
        self._queue(Message("password_reset", shop, email, token))

    async def invitation(self, *, shop: str, email: str, token: str) -> None:
        self._queue(Message("invitation", shop, email, token))

    async def email_verification(self, *, shop: str, email: str, token: str) -> None:
        """The sign-up mail: its link (``POST /auth/email/verify``) proves ``email`` is theirs."""
        self._queue(Message("email_verification", shop, email, token))

    async def email_change(self, *, shop: str, email: str, token: str) -> None:
        """Sent to the new address only: confirming proves the member receives mail there."""
        self._queue(Message("email_change", shop, email, token))
