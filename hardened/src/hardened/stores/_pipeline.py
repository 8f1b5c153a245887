"""Auto-pipelining for `RedisStore`: commands queued in one event-loop turn share one write.

Measured on the HTTP benches, most of a Redis round trip's cost is on the
client, per command: a ``write`` syscall (which also wakes Redis), the pool
checkout and return, and redis-py's read path. Concurrent requests issue their
commands within a few loop turns of each other, so while anything is in
flight `Pipeliner` queues new commands, packs those queued before its flush
runs into one buffer, sends it in one write on one pooled connection and reads
the replies in order, handing each to its caller's future. See the
``hardened.stores.redis`` docstring for what callers can rely on.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio.connection import AbstractConnection

__all__ = ["MAX_BATCH", "Pipeliner", "roundtrip"]

MAX_BATCH = 128  # commands per write; a wider burst starts another batch (another connection)

_Call = tuple[bytes, "asyncio.Future[Any]"]


def _failure(exc: BaseException) -> RedisError:
    """A fresh error per caller: one shared instance would collect every caller's traceback."""
    error: RedisError
    if isinstance(exc, RedisError):
        try:
            error = type(exc)(*exc.args)
        except TypeError:
            error = RedisConnectionError(str(exc))
    elif isinstance(exc, TimeoutError):
        error = RedisTimeoutError("Timeout on a pipelined batch")
    else:
        error = RedisConnectionError(f"Pipelined batch failed: {type(exc).__name__}")
    error.__cause__ = exc
    return error


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.cancelled():
        return  # its caller is gone: the reply was read, and is dropped
    if isinstance(reply, ResponseError):
        future.set_exception(reply)
    else:
        future.set_result(reply)


class _Pool(Protocol):
    async def get_connection(self) -> AbstractConnection: ...

    async def release(self, connection: AbstractConnection) -> None: ...


async def roundtrip(pool: _Pool, command: bytes, sent: Callable[[], None] | None = None) -> Any:
    """One packed command on a pooled connection: its reply, or redis-py's error for it.

    ``sent`` runs once the write is made. The connection goes back to the pool
    whatever happens; both ``send_packed_command`` and ``read_response``
    disconnect it themselves when they fail or are cancelled.
    """
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command([command])
        if sent is not None:
            sent()
        return await conn.read_response()
    finally:
        await pool.release(conn)


class Pipeliner:
    """Sends the commands queued in one loop turn together; each caller awaits its own reply.

    A command finding nothing queued or in flight is sent at once, as a lone
    command always was: nothing could share its write, and a sequential caller
    pays no extra loop turn. Otherwise it joins the open batch, whose flush
    runs one turn later. ``timeout`` bounds a batch's pool wait, write and
    reads together. A reply is the parsed value, or the ``ResponseError``
    redis-py raises for an error reply; a batch that fails (connection lost,
    timeout) fails every command not yet answered and disconnects its
    connection before it goes back. Nothing is sent twice. ``writes`` counts
    the writes made (for tests).
    """

    def __init__(self, pool: _Pool, timeout: float, *, max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._timeout = timeout
        self._max_batch = max_batch
        self._open: list[_Call] | None = None  # the batch still taking commands
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0  # commands and batches on the wire
        self._tasks: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references
        self.writes = 0

    async def call(self, command: bytes) -> Any:
        """Send one packed command; its reply, or the redis-py error for it."""
        if self._busy or self._open is not None:
            return await self._queue(command)
        self._busy += 1
        try:
            return await roundtrip(self._pool, command, self._sent)
        finally:
            self._busy -= 1

    def _sent(self) -> None:
        self.writes += 1

    def _queue(self, command: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        batch = self._open
        if batch is not None and len(batch) < self._max_batch and self._loop is loop:
            batch.append((command, future))
            return future
        batch = self._open = [(command, future)]
        self._loop = loop
        # The task's first step is scheduled with call_soon: it runs after every callback
        # already due in this turn, so their commands join the batch. Created after the
        # append, so even an eager task factory sends this command (alone).
        self._tasks.add(loop.create_task(self._flush(batch)))
        return future

    async def _flush(self, batch: list[_Call]) -> None:
        if self._open is batch:
            self._open = None
        # A caller cancelled before the write: its command is simply not sent.
        calls = [call for call in batch if not call[1].cancelled()]
        self._busy += 1
        try:
            if calls:
                await self._exchange(calls)
        finally:
            self._busy -= 1
            self._tasks.discard(asyncio.current_task())

    async def _exchange(self, calls: list[_Call]) -> None:
        pool = self._pool
        conn = None
        answered = 0
        try:
            async with asyncio.timeout(self._timeout):
                conn = await pool.get_connection()
                await conn.send_packed_command([b"".join([command for command, _ in calls])])
                self.writes += 1
                for _, future in calls:
                    # No per-read timer: the batch's timeout bounds every read. On any
                    # failure (the timeout's cancellation included) it disconnects.
                    try:
                        reply = await conn.read_response(timeout=math.inf)
                    except ResponseError as exc:
                        reply = exc
                    answered += 1
                    _settle(future, reply)
        except BaseException as exc:
            for _, future in calls[answered:]:
                if not future.done():
                    future.set_exception(_failure(exc))
            if conn is not None:
                await conn.disconnect(nowait=True)  # replies left unread: never reuse it as is
            if not isinstance(exc, Exception):
                raise
        finally:
            if conn is not None:
                await pool.release(conn)
