"""Store: owns the Redis client, checks the server, and binds the repositories."""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_exc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from flywheel_state import _topology
from flywheel_state._redis import BudgetPool, Client, as_str, translate_errors
from flywheel_state.config import Settings
from flywheel_state.crypto import FieldCipher
from flywheel_state.errors import (
    AuthenticationFailedError,
    ConfigError,
    ModuleMissingError,
    NotConnectedError,
    StoreUnavailableError,
)
from flywheel_state.events import EventFeed, EventSink
from flywheel_state.observability import instrument_library, register_store
from flywheel_state.repositories.executions import ExecutionRepository
from flywheel_state.repositories.sessions import SessionRepository

if TYPE_CHECKING:
    from flywheel_state.health import HealthReport
    from flywheel_state.migrations import MigrationRunner

__all__ = ["REQUIRED_COMMANDS", "Store"]

REQUIRED_COMMANDS = ("JSON.SET", "JSON.GET", "FT.CREATE", "FT.SEARCH", "FT.AGGREGATE")
"""Commands the server must have: RedisJSON and RediSearch (built into Redis 8)."""


class Store:
    """The entry point: a connection to Redis and the repositories bound to it.

    ``Store(settings)`` or ``Store(url=..., namespace=...)``; use ``async with`` or call
    :meth:`connect` / :meth:`close`. The repositories (``sessions``, ``executions``) raise
    NotConnectedError until :meth:`connect` has checked the server and the schema; migrations,
    the event feed (a stream, whatever the schema) and :attr:`client` work before it. The
    Store keeps one client per event loop, so it works in whatever loop it is used in.
    Nothing is global: two Stores never share state.

    Args:
        settings: Connection and storage settings (default: ``Settings()``).
        url: Shortcut for ``settings.url``.
        namespace: Shortcut for ``settings.namespace``.
        auto_migrate: Run pending migrations on :meth:`connect` instead of raising
            SchemaOutOfDateError (for development, the demo and tests).
        refresh_on_read: Session reads restart the session TTL too.
        search: False opens a key-value store: only RedisJSON is needed (a server or cluster
            without a (distributed) query engine, or a JSON-only managed service). ``find`` /
            ``count`` / ``ids`` / ``iterate`` / ``stats`` and index migrations then raise
            SearchUnavailableError; ``connect`` creates no index on a fresh namespace.
        events: Shortcut for ``settings.events``: write a change event with every write
            (read them with :attr:`events`).
        cipher: Shortcut for ``settings.cipher``: encrypt content fields at rest
            (:class:`~flywheel_state.crypto.FieldCipher`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        url: str | None = None,
        namespace: str | None = None,
        auto_migrate: bool = False,
        refresh_on_read: bool = False,
        search: bool = True,
        events: bool | None = None,
        cipher: FieldCipher | None = None,
    ) -> None:
        base = settings or Settings()
        changes: dict[str, Any] = {}
        if events is not None:
            changes["events"] = events
        if cipher is not None:
            changes["cipher"] = cipher
        if url is not None:
            changes["url"] = url
        if namespace is not None:
            changes["namespace"] = namespace
        self.settings = base.replace(**changes) if changes else base
        self.auto_migrate = auto_migrate
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = (
            weakref.WeakKeyDictionary()
        )
        self._connected = False
        self.sessions = SessionRepository(
            client=self._connected_client,
            namespace=self.settings.namespace,
            default_ttl=self.settings.session_ttl,
            refresh_on_read=refresh_on_read,
            cipher=self.settings.cipher,
        )
        self.executions = ExecutionRepository(
            client=self._connected_client,
            namespace=self.settings.namespace,
            default_ttl=self.settings.execution_ttl,
            cipher=self.settings.cipher,
        )
        self._migrations: MigrationRunner | None = None
        self.search = search
        if not search:
            self.sessions._search_enabled = False
            self.executions._search_enabled = False
        self.events = EventFeed(
            client=self._client_for_loop,
            namespace=self.settings.namespace,
            block=self.settings.command_timeout / 2,
        )
        """The change feed of this namespace (:class:`~flywheel_state.events.EventFeed`)."""
        self.sessions.trace_ids = self.executions.trace_ids = self.settings.trace_ids
        register_store(self)
        if self.settings.events:
            sink = EventSink(namespace=self.settings.namespace, maxlen=self.settings.events_maxlen)
            self.sessions.emit_events(sink)
            self.executions.emit_events(sink)

    def __repr__(self) -> str:
        return (
            f"Store(url={self.settings.safe_url!r}, namespace={self.settings.namespace!r}, "
            f"connected={self._connected})"
        )

    @property
    def namespace(self) -> str:
        """The namespace every key of this store lives under."""
        return self.settings.namespace

    # ------------------------------------------------------------------ clients

    def _new_client(self, **overrides: Any) -> Client:
        """A new client from the settings; ``overrides`` replace its pool's keyword arguments."""
        # A blocking pool: a burst of concurrent calls waits for a free connection (up to
        # pool_timeout) instead of failing with "Too many connections".
        kwargs = self.settings.client_kwargs()
        kwargs["timeout"] = self.settings.pool_timeout
        # No driver retries: a retried write may apply twice, and retries stack timeouts. Every
        # call runs within one budget (see _redis.BudgetPool).
        kwargs["retry"] = Retry(NoBackoff(), 0)
        kwargs.update(overrides)
        kind = self.settings.endpoint.kind
        if kind == "sentinel":
            return _topology.new_sentinel_client(self.settings, kwargs)
        if kind == "cluster":
            return _topology.new_cluster_client(self.settings, kwargs)  # type: ignore[no-any-return]
        pool: BudgetPool
        if self.settings.url is not None:
            pool = BudgetPool.from_url(self.settings.url, **kwargs)
        else:
            pool = BudgetPool(**kwargs)
        client: Client = _topology.client_class(self.settings).from_pool(pool)
        return _topology.configure(client, self.settings)  # type: ignore[no-any-return]

    def _client_for_loop(self) -> Client:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            try:
                client = self._new_client()
            except (ValueError, TypeError) as exc:  # the driver refused an option of the URL
                raise ConfigError(
                    f"cannot use {self.settings.safe_url}: {self.settings.redact(str(exc))}"
                ) from None
            self._clients[loop] = client
        return client

    def _connected_client(self) -> Client:
        """The client for the repositories: only once :meth:`connect` has checked the server and
        the schema (a Store used without it raises, never skips them)."""
        if not self._connected:
            raise NotConnectedError(
                f"this Store ({self.settings.safe_url}, namespace {self.namespace!r}) is not "
                "connected: use `async with Store(...) as store:` or `await store.connect()` "
                "first (it checks the server's modules and the schema revision)"
            )
        return self._client_for_loop()

    @property
    def client(self) -> Client:
        """The ``redis.asyncio`` client of the running event loop (for advanced use)."""
        return self._client_for_loop()

    @property
    def migrations(self) -> MigrationRunner:
        """The migration runner of this store's namespace."""
        if self._migrations is None:
            from flywheel_state.migrations import MigrationRunner

            self._migrations = MigrationRunner(self)
        return self._migrations

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> Store:
        """Connect, check the server's modules and the schema revision.

        Raises:
            StoreUnavailableError: The server can't be reached within the connect timeout.
            ModuleMissingError: The server lacks JSON or search commands.
            SchemaOutOfDateError: Migrations are pending (unless ``auto_migrate``), or the data
                is newer than this code.
        """
        client = self._client_for_loop()
        budget = self.settings.connect_timeout + self.settings.command_timeout
        try:
            await asyncio.wait_for(client.ping(), timeout=budget)
        except (
            redis_exc.RedisError,
            redis_exc.RedisClusterException,
            OSError,
            asyncio.TimeoutError,
        ) as exc:
            if isinstance(exc, redis_exc.AuthenticationError):
                raise AuthenticationFailedError(
                    f"Redis at {self.settings.safe_url} refused the credentials: check "
                    "REDIS_USERNAME / REDIS_PASSWORD (or the user and password in REDIS_URL)"
                ) from exc
            reason = self.settings.redact(str(exc) or type(exc).__name__)
            raise StoreUnavailableError(
                f"cannot reach Redis at {self.settings.safe_url}: {reason}"
            ) from exc
        missing = await self.missing_commands()
        if not self.search:
            missing = [name for name in missing if name.startswith("JSON.")]
        if missing:
            raise ModuleMissingError(
                f"Redis at {self.settings.safe_url} lacks {', '.join(missing)}: flywheel-state "
                "needs RedisJSON and RediSearch. Use Redis 8 (built in), Redis Stack 7.2+, or "
                "Redis Cloud/Software with both modules; for development run "
                "`flywheel-state server start` (pip install 'flywheel-state[server]')."
            )
        if self.search and self.is_cluster and not await self.has_distributed_search():
            raise ModuleMissingError(
                f"the Redis Cluster at {self.settings.safe_url} has no distributed query engine: "
                "its search module indexes each shard's own keys (no coordinator), so queries "
                "would miss most records. Use Redis 8 in cluster mode (its query engine is "
                "distributed), Redis Software or Redis Cloud; or open the Store with "
                "search=False for the key-value API only."
            )
        if self.search:
            await self.migrations.check_on_connect(auto_migrate=self.auto_migrate)
        else:
            await self._check_without_search()
        self._connected = True  # only once every check passed
        return self

    @property
    def is_cluster(self) -> bool:
        """True when the settings name a Redis Cluster (``redis+cluster://``)."""
        return self.settings.endpoint.kind == "cluster"

    async def _check_without_search(self) -> None:
        """``connect`` with search=False: a never-migrated namespace opens as it is (no index
        is created); otherwise the usual check (an interrupted migration, data newer than the
        code or a schema behind head still raise)."""
        runner = self.migrations
        client = self._client_for_loop()
        with translate_errors("reading the applied revision"):
            current = await client.get(runner._key("revision"))
            running = await client.get(runner._key("running"))
        if current is None and running is None:
            return
        await runner.check_on_connect(auto_migrate=False)

    async def _raw_on_each_primary(self, *command: Any) -> list[Any]:
        """A raw reply of ``command`` from every primary (one node when not a cluster)."""
        client = self._client_for_loop()
        replies: list[Any] = []
        with translate_errors(f"running {command[0]} on every primary"):
            if self.is_cluster:
                cluster: Any = client
                await cluster.initialize()
                for node in cluster.get_primaries():
                    conn = node.acquire_connection()
                    try:
                        await conn.send_command(*command)
                        replies.append(await conn.read_response())
                    finally:
                        node.release(conn)
                return replies
            pool = client.connection_pool
            conn = await pool.get_connection()
            try:
                await conn.send_command(*command)
                replies.append(await conn.read_response())
            finally:
                await pool.release(conn)
        return replies

    async def shards(self) -> list[dict[str, Any]]:
        """Each primary (one for a single node or Sentinel): ``address`` and ``keys`` (DBSIZE)
        (for ``doctor``)."""
        client = self._client_for_loop()
        out: list[dict[str, Any]] = []
        with translate_errors("reading the shards"):
            if self.is_cluster:
                cluster: Any = client
                await cluster.initialize()
                for node in cluster.get_primaries():
                    size = await cluster.dbsize(target_nodes=node)
                    out.append({"address": f"{node.host}:{node.port}", "keys": int(size)})
            else:
                out.append({"address": self.settings.safe_url, "keys": int(await client.dbsize())})
        return out

    async def has_distributed_search(self) -> bool:
        """On a cluster: whether every primary runs the query engine's cluster coordinator
        (Redis 8 in cluster mode, Redis Software/Cloud). A search module without it (such as
        the embedded server's RediSearch 2.10) indexes each shard's keys only. True when not a
        cluster."""
        if not self.is_cluster:
            return True
        replies = await self._raw_on_each_primary(
            "COMMAND", "INFO", "SEARCH.CLUSTERINFO", "FT.CLUSTERINFO"
        )
        return bool(replies) and all(any(entry for entry in reply) for reply in replies)

    async def missing_commands(self) -> list[str]:
        """The required commands (JSON.*, FT.*) this server does not have."""
        # Raw replies on a pooled connection: redis-py's COMMAND parser can't read the nil
        # entries a server returns for commands it lacks. On a cluster, every primary.
        replies = await self._raw_on_each_primary("COMMAND", "INFO", *REQUIRED_COMMANDS)
        return [
            name
            for i, name in enumerate(REQUIRED_COMMANDS)
            if not all(i < len(info) and info[i] for info in replies)
        ]

    async def server_info(self) -> dict[str, Any]:
        """Server version and loaded modules (for ``doctor``)."""
        client = self._client_for_loop()
        target: dict[str, Any] = {}
        with translate_errors("reading server info"):
            if self.is_cluster:  # the first primary speaks for all (doctor lists the shards)
                cluster: Any = client
                await cluster.initialize()
                target["target_nodes"] = cluster.get_primaries()[0]
            info = await client.info("server", **target)
            try:
                modules = await client.execute_command("MODULE", "LIST", **target)
            except redis_exc.ResponseError:
                modules = []
        names: list[str] = []
        for entry in modules or []:
            fields = {as_str(entry[i]): entry[i + 1] for i in range(0, len(entry) - 1, 2)}
            names.append(f"{as_str(fields.get('name', '?'))} {as_str(fields.get('ver', '?'))}")
        return {
            "redis_version": as_str(info.get("redis_version", "?")),
            "modules": names,
        }

    async def health(self) -> HealthReport:
        """Check the server, modules, indexes, key counts and migration state (no connect
        needed; this is what ``flywheel-state doctor`` shows). Never raises for a problem it
        finds: each is a line of ``report.problems`` (redacted)."""
        from flywheel_state.health import check_health

        return await check_health(self)

    async def drop_namespace(self) -> tuple[int, int]:
        """Remove this Store's namespace: drop its indexes and unlink every key under it
        (documents and migration bookkeeping). Irreversible; no connect needed.

        Returns:
            The number of indexes dropped and of keys unlinked.
        """
        from flywheel_state._purge import drop_namespace

        return await drop_namespace(self.client, self.namespace)

    async def index_target(self, kind: str) -> str | None:
        """The index the alias ``{namespace}:{kind}:idx`` points at, or None without one."""
        from flywheel_state.indexes import alias_target

        return await alias_target(self.client, self.namespace, kind)

    async def close(self) -> None:
        """Close the client of the running loop and forget the others."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        clients = dict(self._clients)
        self._clients.clear()
        self._connected = False
        for owner, client in clients.items():
            if owner is loop:
                await client.aclose()  # type: ignore[attr-defined]  # types-redis predates aclose
            else:
                # Its loop is gone or elsewhere: connections can't be awaited from here.
                client.connection_pool.reset()

    async def __aenter__(self) -> Store:
        try:
            return await self.connect()
        except BaseException:
            # __aexit__ does not run when __aenter__ raises: close the client here.
            await self.close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


instrument_library()  # spans and metrics when opentelemetry-api is installed (observability.py)
