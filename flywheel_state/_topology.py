"""Clients for each topology: single node, Sentinel, Redis Cluster; durable acknowledgements.

``Store._new_client`` builds the single-node client itself and asks this module for the
others. With ``Settings.wait_replicas > 0`` (or ``wait_aof``) the client class is
:class:`DurableRedis`: every write command (and every pipeline holding one) is followed, on the
same connection, by ``WAIT n timeout`` (``WAITAOF 1 n timeout`` with ``wait_aof``); fewer
acknowledgements than asked raise OutcomeUnknownError.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_exc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff

from flywheel_state.errors import OutcomeUnknownError

if TYPE_CHECKING:
    from flywheel_state._redis import Client
    from flywheel_state.config import Settings

__all__ = [
    "READ_COMMANDS",
    "DurablePipeline",
    "DurableRedis",
    "client_class",
    "is_cluster_client",
    "is_cluster_pipeline",
    "is_write",
    "new_cluster_client",
    "new_sentinel_client",
    "queue_script",
    "wait_acknowledged",
    "wait_timeout_ms",
]

_READS = """
    PING ECHO INFO COMMAND MODULE TIME HELLO AUTH SELECT CLIENT ROLE CONFIG DBSIZE MEMORY OBJECT
    SLOWLOG LATENCY CLUSTER SENTINEL READONLY READWRITE WAIT WAITAOF SCRIPT WATCH UNWATCH
    GET MGET STRLEN GETRANGE EXISTS TYPE TTL PTTL EXPIRETIME PEXPIRETIME SCAN KEYS RANDOMKEY
    HGET HMGET HGETALL HLEN HEXISTS HKEYS HVALS HSCAN LRANGE LLEN LINDEX SMEMBERS SCARD
    SISMEMBER SSCAN ZRANGE ZCARD ZSCORE ZSCAN XRANGE XREVRANGE XLEN XREAD XINFO
    EVAL_RO EVALSHA_RO FCALL_RO
    JSON.GET JSON.MGET JSON.TYPE JSON.OBJKEYS JSON.OBJLEN JSON.ARRLEN JSON.STRLEN JSON.RESP
    JSON.DEBUG
    FT.SEARCH FT.AGGREGATE FT.INFO FT._LIST FT.EXPLAIN FT.EXPLAINCLI FT.PROFILE FT.CURSOR
    FT.TAGVALS FT.CONFIG FT.SPELLCHECK FT.SYNDUMP FT.DICTDUMP
"""
READ_COMMANDS = frozenset(_READS.split())
"""Commands that never change data: no WAIT follows them. Every other command counts as a
write (so a command this list forgets costs a WAIT, never durability)."""


def is_write(command: Any) -> bool:
    """True unless ``command`` (a name, possibly ``"SCRIPT LOAD"``-style) is a known read."""
    if isinstance(command, bytes):
        command = command.decode("ascii", "replace")
    name = str(command).split(" ", 1)[0].upper()
    return name not in READ_COMMANDS


def wait_timeout_ms(command_timeout: float) -> int:
    """The WAIT timeout: most of the command timeout, so WAIT replies before the socket gives
    up (and the caller learns how many replicas acknowledged)."""
    return max(1, int(command_timeout * 1000 * 0.8))


async def wait_acknowledged(
    conn: Any, replicas: int, timeout_ms: int, what: str, aof: bool = False
) -> None:
    """``WAIT`` (or ``WAITAOF``) on ``conn`` right after a write on it.

    Raises:
        OutcomeUnknownError: Fewer acknowledgements in time, or the wait failed.
    """
    try:
        if aof:
            # WAITAOF numlocal numreplicas: fsynced to the primary's and the replicas' AOF.
            await conn.send_command("WAITAOF", 1, replicas, timeout_ms)
            local, acked = (int(n) for n in await conn.read_response())
            if local < 1:
                raise OutcomeUnknownError(
                    f"{what} was applied, but the primary did not fsync it to its append-only "
                    f"file within {timeout_ms} ms: it may be lost if the primary restarts"
                )
        else:
            await conn.send_command("WAIT", replicas, timeout_ms)
            acked = int(await conn.read_response())
    except (redis_exc.RedisError, OSError) as exc:
        with contextlib.suppress(Exception):
            await conn.disconnect()
        raise OutcomeUnknownError(
            f"{what} was sent, but waiting for {replicas} replica acknowledgement(s) failed "
            f"({type(exc).__name__}: {exc}): it may or may not have been applied"
        ) from exc
    if acked < replicas:
        raise OutcomeUnknownError(
            f"{what} was applied on the primary, but only {acked} of {replicas} replica(s) "
            f"acknowledged it within {timeout_ms} ms: it may be lost if the primary fails "
            "before it replicates"
        )


class DurableRedis(Redis):  # type: ignore[type-arg]
    """A ``redis.asyncio.Redis`` whose writes wait for ``wait_replicas`` acknowledgements."""

    wait_replicas: int = 0
    wait_aof: bool = False
    wait_ms: int = 1000

    async def _send_command_parse_response(
        self, conn: Any, command_name: Any, *args: Any, **options: Any
    ) -> Any:
        result = await super()._send_command_parse_response(  # type: ignore[misc]
            conn, command_name, *args, **options
        )
        if (self.wait_replicas > 0 or self.wait_aof) and is_write(command_name):
            await wait_acknowledged(
                conn, self.wait_replicas, self.wait_ms, f"the write {command_name}", self.wait_aof
            )
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        """A pipeline that waits for the replicas after its writes."""
        pipe = DurablePipeline(
            self.connection_pool,
            self.response_callbacks,
            transaction,
            shard_hint,
        )
        pipe.wait_replicas = self.wait_replicas
        pipe.wait_aof = self.wait_aof
        pipe.wait_ms = self.wait_ms
        return pipe


class DurablePipeline(Pipeline):  # type: ignore[type-arg]
    """A pipeline of :class:`DurableRedis`: one WAIT after a batch holding a write."""

    wait_replicas: int = 0
    wait_aof: bool = False
    wait_ms: int = 1000

    async def _after(self, connection: Any, commands: Any) -> None:
        if not (self.wait_replicas > 0 or self.wait_aof):
            return
        if any(is_write(args[0]) for args, _ in commands):
            await wait_acknowledged(
                connection, self.wait_replicas, self.wait_ms, "a pipelined write", self.wait_aof
            )

    async def _waited(self, run: Any, connection: Any, commands: Any) -> Any:
        """Run ``run()`` (the pipeline's round trip), then WAIT, also when a reply is an error
        (the other commands of the batch were applied)."""
        try:
            response = await run()
        except redis_exc.ResponseError:
            await self._after(connection, commands)
            raise
        await self._after(connection, commands)
        return response

    async def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        parent = super()._execute_pipeline  # type: ignore[misc]
        return await self._waited(
            lambda: parent(connection, commands, raise_on_error), connection, commands
        )

    async def _execute_transaction(
        self, connection: Any, commands: Any, raise_on_error: bool
    ) -> Any:
        parent = super()._execute_transaction  # type: ignore[misc]
        return await self._waited(
            lambda: parent(connection, commands, raise_on_error), connection, commands
        )


_loaded_scripts: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def is_cluster_client(client: Any) -> bool:
    """True for a ``RedisCluster`` client (it has no single connection pool)."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def is_cluster_pipeline(client: Any) -> bool:
    """True for a pipeline of ``RedisCluster`` (it refuses ``evalsha``/``Script`` calls)."""
    from redis.asyncio.cluster import ClusterPipeline

    return isinstance(client, ClusterPipeline)


async def queue_script(script: Any, pipe: Any, keys: list[str], args: list[Any]) -> Any:
    """Queue ``script`` (an ``AsyncScript``) on a cluster pipeline as a raw EVALSHA.

    The script is loaded on every primary once per pipeline (SCRIPT LOAD is idempotent; a node
    that restarted since, and lost its scripts, gets it again); the pipeline then sends each
    call to the node of its key's slot, one round trip per node.
    """
    loaded = _loaded_scripts.setdefault(pipe, set())
    if script.sha not in loaded:
        await pipe.cluster_client.script_load(script.script)
        loaded.add(script.sha)
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    return pipe


def client_class(settings: Settings) -> type[Any]:
    """``DurableRedis`` when ``settings.wait_replicas`` > 0 or ``wait_aof``, else ``Redis``."""
    return DurableRedis if settings.wait_replicas > 0 or settings.wait_aof else Redis


def configure(client: Any, settings: Settings) -> Any:
    """Set the WAIT parameters on a client made from :func:`client_class`."""
    if isinstance(client, DurableRedis):
        client.wait_replicas = settings.wait_replicas
        client.wait_aof = settings.wait_aof
        client.wait_ms = wait_timeout_ms(settings.command_timeout)
    return client


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[type-arg]
    """Sentinel-managed, and blocking like the single-node pool: a burst of calls waits up to
    ``pool_timeout`` for a free connection instead of failing."""


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    endpoint = settings.endpoint
    return {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.command_timeout,
        "username": endpoint.sentinel_username,
        "password": endpoint.sentinel_password,
        "ssl": endpoint.tls,
        "protocol": 2,
        # One quick retry: an unreachable sentinel costs about one connect timeout, never more.
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    }


def new_sentinel_client(settings: Settings, kwargs: dict[str, Any]) -> Client:
    """A client of the primary the sentinels name, following failovers by itself.

    Args:
        settings: Settings with a Sentinel endpoint.
        kwargs: The pool's keyword arguments (``Settings.client_kwargs()`` plus overrides).
    """
    endpoint = settings.endpoint
    for name in ("host", "port", "db", "username", "password"):
        kwargs.pop(name, None)
    sentinel = Sentinel(list(endpoint.addresses), sentinel_kwargs=_sentinel_kwargs(settings))
    data_kwargs: dict[str, Any] = dict(endpoint.options)
    data_kwargs.update(kwargs)
    data_kwargs.update(db=endpoint.db, username=endpoint.username, password=endpoint.password)
    if endpoint.tls:
        data_kwargs["ssl"] = True
    client = sentinel.master_for(
        endpoint.service_name or "",
        redis_class=client_class(settings),
        connection_pool_class=BlockingSentinelPool,
        **data_kwargs,
    )
    return configure(client, settings)  # type: ignore[no-any-return]


def _bounded_cluster_class() -> type[Any]:
    from redis.asyncio.cluster import RedisCluster

    class BoundedRedisCluster(RedisCluster):  # type: ignore[type-arg]
        """RedisCluster whose commands wait (up to ``pool_timeout``) for one of
        ``max_connections`` slots, like the single-node blocking pool, instead of failing with
        MaxConnectionsError under a burst (redis-py's cluster pools don't block)."""

        flywheel_limit: int = 50
        flywheel_pool_timeout: float = 10.0
        _flywheel_gate: asyncio.Semaphore | None = None

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            gate = self._flywheel_gate
            if gate is None:
                gate = self._flywheel_gate = asyncio.Semaphore(self.flywheel_limit)
            try:
                await asyncio.wait_for(gate.acquire(), timeout=self.flywheel_pool_timeout)
            except asyncio.TimeoutError:
                raise redis_exc.ConnectionError(
                    f"no free connection within pool_timeout ({self.flywheel_pool_timeout:g} s)"
                ) from None
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                gate.release()

    return BoundedRedisCluster


def new_cluster_client(settings: Settings, kwargs: dict[str, Any]) -> Any:
    """A ``redis.asyncio.cluster.RedisCluster`` on the endpoint's seed nodes.

    Commands are bounded to ``max_connections`` at a time (waiting up to ``pool_timeout``);
    each node's pool gets twice that, so that pipelines find a connection too.
    """
    from redis.asyncio.cluster import ClusterNode

    endpoint = settings.endpoint
    limit = int(kwargs.get("max_connections", settings.max_connections))
    options: dict[str, Any] = dict(endpoint.options)
    options.pop("timeout", None)
    options.pop("db", None)
    retry = kwargs.get("retry")
    client = _bounded_cluster_class()(
        startup_nodes=[ClusterNode(host, port) for host, port in endpoint.addresses],
        username=endpoint.username,
        password=endpoint.password,
        ssl=endpoint.tls,
        socket_connect_timeout=kwargs.get("socket_connect_timeout", settings.connect_timeout),
        socket_timeout=kwargs.get("socket_timeout", settings.command_timeout),
        max_connections=2 * limit,
        decode_responses=False,
        **({"retry": retry} if retry is not None else {}),
        **{"protocol": 2},
        **options,
    )
    client.flywheel_limit = limit
    client.flywheel_pool_timeout = float(kwargs.get("timeout", settings.pool_timeout))
    return client
