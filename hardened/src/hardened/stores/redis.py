"""`RedisStore`: every store contract over ``redis.asyncio`` (redis-py >= 5).

One command per call: plain commands for `KeyValue` (``SET … PX … NX``,
``PTTL``…), one ``EVALSHA`` per script. A script's SHA1 is computed locally,
so the hot path never asks the server about it. On ``NOSCRIPT`` (first use on
this server, a restart, ``SCRIPT FLUSH``, a failover) the store sends
``SCRIPT LOAD`` and retries once; ``SCRIPT LOAD`` rather than ``EVAL``
because Redis 7.4+ may evict scripts cached by ``EVAL`` but never loaded ones.

Errors: every ``RedisError`` (connection refused or reset, timeouts, pool
exhausted, ``LOADING``, ``READONLY``, ``WRONGTYPE``…) becomes
`StoreUnavailable` at this boundary, chained (``from exc``), counted in
``hardened_store_errors_total{backend="redis",operation}``, with a context
naming the backend, the operation and the error type, never a key or a value.
Components then apply their own fail mode. The one exception is a script
refusing on purpose (``redis.error_reply('HARDENED …')``): that is a
`ScriptError`. ``asyncio.CancelledError`` passes through untouched.

`RedisStore.from_url` builds a client fit for bursts and outages: a
`BlockingConnectionPool` (a 200-wide burst waits for a connection instead of
failing with ``MaxConnectionsError``), one ``timeout`` bounding the pool wait,
the connect and every socket read, and **no automatic retries**: redis-py
retries on timeouts by default, which can apply ``INCR`` or a lease acquire
twice; retrying is each component's decision. A pooled connection the server
closed is replaced on checkout (redis-py 8 alone would hand it out and fail).

Hot path: the pool and connection `from_url` builds are thin subclasses of
redis-py's whose common case skips machinery that cost more than the round
trip itself. A checkout with a connection free and nobody queued takes it
directly (no ``Condition``, no timeout context); only a checkout that must
wait goes through ``BlockingConnectionPool``'s bounded wait, and while anyone
waits every return goes through it too, so waiters are woken in order. A
write the kernel accepts at once needs no timer (redis-py wraps every write
in ``asyncio.wait_for``, a new task per command); a write that must wait is
still bounded by ``timeout``. Scripts (``EVALSHA``) are sent on the pooled
connection directly, without ``Redis.execute_command``'s per-call wrappers
(a zero-retry loop, HIMPORT dispatch, response callbacks, which ``EVALSHA``
has none of); errors are the same redis-py exceptions, and a connection that
failed mid-command is disconnected before it goes back, as before. Not seen
on that path: redis-py's own optional OpenTelemetry command and pool metrics
(``hardened_store_errors_total`` still counts every failure). A client you
pass in keeps redis-py's full path, and so does every client on redis-py < 8.

Auto-pipelining (``from_url(..., pipeline=True)``, the default, on that fast
path): measured on the HTTP benches, most of what a Redis call costs is on the
client and per command (a ``write`` syscall that also wakes Redis, the pool
checkout and return, redis-py's read path), not on the wire. So every command
(scripts and plain ones) goes through ``_pipeline.Pipeliner``: a command
finding nothing queued or in flight is sent at once as above, so a lone or
sequential caller pays nothing extra; while a command or batch is in flight, the commands issued
meanwhile are queued, and a flush scheduled with ``call_soon`` when the first
of them is queued sends them in ONE write on one pooled connection (at most 128
per batch; a wider burst starts more batches, on other connections) and reads
the replies in order, each handed to its own caller. What a caller can observe
is lower cost and nothing else: each reply is parsed as before, an error reply
fails only its own call (``ScriptError`` or `StoreUnavailable` as above),
``NOSCRIPT`` still means ``SCRIPT LOAD`` and one retry (in a later batch), and
nothing is retried otherwise or sent twice. ``timeout`` bounds a batch's pool
wait, write and reads together. A caller cancelled while its command is on the
wire leaves the batch intact: its reply is read and dropped, so the connection
never gets out of step. A connection lost or timed out mid-batch fails every
call still waiting on that batch with `StoreUnavailable` (each counted) and is
disconnected before it goes back to the pool.

Redis Cluster: keys are hash-tagged (see `tagged`), but this class takes a
single-node ``redis.asyncio.Redis`` (or one behind Sentinel); a cluster
adapter would only differ in its client type.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hardened._extras import missing_extra

try:
    import redis
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.connection import AbstractConnection, Connection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.stores.redis", "redis") from exc

from hardened.errors import StoreUnavailable
from hardened.observability.metrics import counter
from hardened.stores._contracts import SCRIPT_ERROR_PREFIX, ScriptError, encode_args, ttl_ms
from hardened.stores._pipeline import Pipeliner, roundtrip
from hardened.stores._scripts import COUNTER_INCR, ScriptLeases

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from hardened.stores._contracts import Script, ScriptArg

__all__ = ["RedisStore"]

_BACKEND = "redis"
_DIRECT_SINCE = 8
_ERRORS = counter("store_errors_total", "Store operations that failed", ["backend", "operation"])
# The direct path relies on redis-py 8's pool and connection internals; older versions
# keep redis-py's own path (and get none of the speed-up).
_DIRECT = int(redis.__version__.split(".", 1)[0]) >= _DIRECT_SINCE


def _pack(command: Sequence[str | bytes | int], encoding: str, errors: str) -> bytes:
    """RESP for a command of str, bytes and int, in one buffer (redis-py's packer is 2x slower)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            raw = arg.encode(encoding, errors)
        elif isinstance(arg, int):
            raw = b"%d" % arg
        else:
            raw = arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _Connection(Connection):
    """A TCP connection whose writes skip ``wait_for`` when the kernel takes them at once."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        if (
            writer is None
            or not isinstance(command, list)
            or (check_health and self.health_check_interval)
        ):
            await super().send_packed_command(command, check_health)
            return
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                # The kernel buffer is full: wait for it to drain, within the socket timeout.
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
            else:
                await writer.drain()  # never suspends here; raises if the connection was lost
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket. {exc}.") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class _Pool(BlockingConnectionPool):
    """A `BlockingConnectionPool` whose uncontended checkout and return skip its ``Condition``.

    ``_queued`` counts checkouts inside the blocking path; while it is not
    zero every checkout and return takes that path, so a waiter is never
    overtaken and is always notified.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._queued = 0
        # A streaming credential provider re-authenticates on release: keep redis-py's path.
        self._direct = self.connection_kwargs.get("credential_provider") is None

    def _uncontended(self) -> bool:
        # During a maintenance event (MOVING) redis-py serialises pool changes: keep its path.
        return self._direct and not self._queued and not getattr(self, "_in_maintenance", False)

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        free = self._available_connections
        if free and self._uncontended():
            conn = free.pop()
            self._in_use_connections.add(conn)
            try:
                # A closed socket or unread bytes: let redis-py decide (reconnect, or keep
                # the bytes when they may be maintenance push notifications).
                if not conn.is_connected or await conn.can_read():
                    await self.ensure_connection(conn)
            except BaseException:
                await self.release(conn)
                raise
            return conn
        self._queued += 1
        try:
            return await super().get_connection()  # type: ignore[no-untyped-call]
        finally:
            self._queued -= 1

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        # redis-py 8 (RESP3, maintenance notifications on "auto") keeps a connection with
        # unread bytes, as they may be push notifications, and so also one the server
        # closed (restart, idle timeout, CLIENT KILL), failing the next command on it.
        reader = getattr(connection, "_reader", None)
        if reader is not None and reader.at_eof():
            await connection.disconnect()
        await super().ensure_connection(connection)

    async def release(self, connection: AbstractConnection) -> None:
        if not self._uncontended():
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)


class RedisStore(ScriptLeases):
    """Redis-backed `Store` (`KeyValue`, `Counters`, `AtomicScripts`, `Leases`, `Lifecycle`).

    ``prefix`` (no braces) is prepended to every key sent, script keys
    included, so several deployments or test runs can share one database.
    The store closes ``client`` on `aclose` only if ``owns_client`` (as
    `from_url` does); a client you pass in stays yours to close.
    """

    def __init__(self, client: Redis, *, prefix: str = "", owns_client: bool = False) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain braces (it would change hash slots)")
        self._client = client
        # execute_command is untyped in redis-py; every reply is parsed by its callbacks.
        self._execute: Callable[..., Awaitable[Any]] = client.execute_command
        pool = client.connection_pool
        self._pool: _Pool | None = None  # set: scripts take the direct path (see the module doc)
        self._encoding = ("utf-8", "strict")
        if isinstance(pool, _Pool) and not client.single_connection_client:
            self._pool = pool
            encoder = pool.get_encoder()  # type: ignore[no-untyped-call]
            self._encoding = (encoder.encoding, encoder.encoding_errors)
        self._pipeliner: Pipeliner | None = None  # set by from_url(pipeline=True)
        self._prefix = prefix
        self._owns_client = owns_client

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_connections: int = 50,
        timeout: float = 1.0,
        prefix: str = "",
        pipeline: bool = True,
    ) -> RedisStore:
        """A store owning a client on a blocking pool; ``timeout`` (s) bounds every wait.

        ``pipeline``: commands issued while others are in flight share one write (module doc).
        """
        fast: dict[str, Any] = {"connection_class": _Connection} if _DIRECT else {}
        pool = (_Pool if _DIRECT else BlockingConnectionPool).from_url(
            url,
            **fast,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        store = cls(Redis(connection_pool=pool), prefix=prefix, owns_client=True)
        if pipeline and store._pool is not None:
            store._pipeliner = Pipeliner(store._pool, timeout)
        return store

    @property
    def client(self) -> Redis:
        """The underlying client (for commands outside the contracts)."""
        return self._client

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _unavailable(self, operation: str, exc: RedisError) -> StoreUnavailable:
        _ERRORS.labels(_BACKEND, operation).inc()
        context = {"backend": _BACKEND, "operation": operation, "error": type(exc).__name__}
        return StoreUnavailable(context=context)

    async def _command(self, operation: str, *args: Any) -> Any:
        try:
            if self._pipeliner is not None:
                # Raw replies: the callers below convert them as the callbacks would.
                return await self._pipeliner.call(_pack(args, *self._encoding))
            return await self._execute(*args)
        except RedisError as exc:
            raise self._unavailable(operation, exc) from exc

    # -- KeyValue ----------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._command("get", "GET", self._key(key))
        return value

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        if not isinstance(value, bytes):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        args: list[Any] = ["SET", self._key(key), value]
        if ttl is not None:
            args += ["PX", ttl_ms(ttl)]
        if only_if_absent:
            args.append("NX")
        return bool(await self._command("set", *args))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._command("delete", "DEL", *map(self._key, keys)))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._command("ttl", "PTTL", self._key(key)))
        return None if ms < 0 else ms / 1000

    # -- Counters ----------------------------------------------------------

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError("amount must be an int")
        if ttl is not None:
            return int(await self.run(COUNTER_INCR, (key,), (amount, ttl_ms(ttl))))
        return int(await self._command("incr", "INCRBY", self._key(key), amount))

    # -- AtomicScripts -----------------------------------------------------

    async def _send(self, command: Sequence[Any]) -> Any:
        """One command, pipelined or on a pooled connection (not via ``execute_command``)."""
        if self._pipeliner is not None:
            return await self._pipeliner.call(_pack(command, *self._encoding))
        pool = self._pool
        if pool is None:
            return await self._execute(*command)
        return await roundtrip(pool, _pack(command, *self._encoding))

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        prefix = self._prefix
        command = (
            "EVALSHA",
            script.sha,
            len(keys),
            *([prefix + k for k in keys] if prefix else keys),
            *encode_args(args),
        )
        try:
            try:
                return await self._send(command)
            except NoScriptError:
                if self._pipeliner is not None:
                    await self._send(("SCRIPT", "LOAD", script.source))
                else:
                    await self._execute("SCRIPT LOAD", script.source)
                return await self._send(command)
        except ResponseError as exc:
            message = str(exc)
            if message.startswith(SCRIPT_ERROR_PREFIX):
                raise ScriptError(message.removeprefix(SCRIPT_ERROR_PREFIX)) from exc
            raise self._unavailable(script.name, exc) from exc
        except RedisError as exc:
            raise self._unavailable(script.name, exc) from exc

    # -- Lifecycle ---------------------------------------------------------

    async def ping(self) -> None:
        await self._command("ping", "PING")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose(close_connection_pool=True)
