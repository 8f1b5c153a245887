"""`RedisStore`: every store contract over ``redis.asyncio`` (redis-py >= 5).

One round trip per call: plain commands for `KeyValue` (``SET … PX … NX``,
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
twice; retrying is each component's decision. A stale pooled connection is
still replaced on checkout by the pool itself.

Redis Cluster: keys are hash-tagged (see `tagged`), but this class takes a
single-node ``redis.asyncio.Redis`` (or one behind Sentinel); a cluster
adapter would only differ in its client type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from hardened.errors import StoreUnavailable
from hardened.observability._metrics import counter
from hardened.stores._contracts import SCRIPT_ERROR_PREFIX, ScriptError, encode_args, ttl_ms
from hardened.stores._scripts import COUNTER_INCR, ScriptLeases

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from hardened.stores._contracts import Script, ScriptArg

__all__ = ["RedisStore"]

_BACKEND = "redis"
_ERRORS = counter("store_errors_total", "Store operations that failed", ["backend", "operation"])


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
    ) -> RedisStore:
        """A store owning a client on a blocking pool; ``timeout`` (s) bounds every wait."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(Redis(connection_pool=pool), prefix=prefix, owns_client=True)

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

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *map(self._key, keys), *encode_args(args))
        execute = self._execute
        try:
            try:
                return await execute(*command)
            except NoScriptError:
                await execute("SCRIPT LOAD", script.source)
                return await execute(*command)
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
