"""Store: owns the Redis client, checks the server, and binds the repositories."""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_exc
from redis.asyncio import BlockingConnectionPool, Redis

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.config import Settings
from flywheel_state.crypto import FieldCipher
from flywheel_state.errors import ModuleMissingError, StoreUnavailableError
from flywheel_state.repositories.executions import ExecutionRepository
from flywheel_state.repositories.sessions import SessionRepository

if TYPE_CHECKING:
    from flywheel_state.migrations import MigrationRunner

__all__ = ["REQUIRED_COMMANDS", "Store"]

REQUIRED_COMMANDS = ("JSON.SET", "JSON.GET", "FT.CREATE", "FT.SEARCH", "FT.AGGREGATE")
"""Commands the server must have: RedisJSON and RediSearch (built into Redis 8)."""


class Store:
    """The entry point: a connection to Redis and the repositories bound to it.

    ``Store(settings)`` or ``Store(url=..., namespace=...)``; use ``async with`` or call
    :meth:`connect` / :meth:`close`. The Store keeps one client per event loop, so it works in
    whatever loop it is used in. Nothing is global: two Stores never share state.

    Args:
        settings: Connection and storage settings (default: ``Settings()``).
        url: Shortcut for ``settings.url``.
        namespace: Shortcut for ``settings.namespace``.
        auto_migrate: Run pending migrations on :meth:`connect` instead of raising
            SchemaOutOfDateError (for development, the demo and tests).
        refresh_on_read: Session reads restart the session TTL too.
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
        cipher: FieldCipher | None = None,
    ) -> None:
        base = settings or Settings()
        changes: dict[str, Any] = {}
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
            client=self._client_for_loop,
            namespace=self.settings.namespace,
            default_ttl=self.settings.session_ttl,
            refresh_on_read=refresh_on_read,
            cipher=self.settings.cipher,
        )
        self.executions = ExecutionRepository(
            client=self._client_for_loop,
            namespace=self.settings.namespace,
            default_ttl=self.settings.execution_ttl,
            cipher=self.settings.cipher,
        )
        self._migrations: MigrationRunner | None = None

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
        kwargs.update(overrides)
        pool: BlockingConnectionPool[Any]
        if self.settings.url is not None:
            pool = BlockingConnectionPool.from_url(self.settings.url, **kwargs)
        else:
            pool = BlockingConnectionPool(**kwargs)
        client: Client = Redis.from_pool(pool)  # type: ignore[attr-defined]  # stubs lag redis 5+
        return client

    def _client_for_loop(self) -> Client:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._new_client()
            self._clients[loop] = client
        return client

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
        except (redis_exc.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise StoreUnavailableError(
                f"cannot reach Redis at {self.settings.safe_url}: {exc or type(exc).__name__}"
            ) from exc
        missing = await self.missing_commands()
        if missing:
            raise ModuleMissingError(
                f"Redis at {self.settings.safe_url} lacks {', '.join(missing)}: flywheel-state "
                "needs RedisJSON and RediSearch. Use Redis 8 (built in), Redis Stack 7.2+, or "
                "Redis Cloud/Software with both modules; for development run "
                "`flywheel-state server start` (pip install 'flywheel-state[server]')."
            )
        self._connected = True
        await self.migrations.check_on_connect(auto_migrate=self.auto_migrate)
        return self

    async def missing_commands(self) -> list[str]:
        """The required commands (JSON.*, FT.*) this server does not have."""
        pool = self._client_for_loop().connection_pool
        with translate_errors("checking server commands"):
            # Raw reply on a pooled connection: redis-py's COMMAND parser can't read the nil
            # entries a server returns for commands it lacks.
            conn = await pool.get_connection()
            try:
                await conn.send_command("COMMAND", "INFO", *REQUIRED_COMMANDS)
                info = await conn.read_response()
            finally:
                await pool.release(conn)
        return [name for name, entry in zip(REQUIRED_COMMANDS, info, strict=False) if not entry]

    async def server_info(self) -> dict[str, Any]:
        """Server version and loaded modules (for ``doctor``)."""
        client = self._client_for_loop()
        with translate_errors("reading server info"):
            info = await client.info("server")
            try:
                modules = await client.execute_command("MODULE", "LIST")
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
