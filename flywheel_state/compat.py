"""The original API (RedisSessionManager, RedisExecutionCache, RedisConfig) on the new layer.

Existing callers (the MCP server) switch by changing one import line::

    from flywheel_state import RedisConfig, RedisExecutionCache, RedisSessionManager

    manager = RedisSessionManager(**RedisConfig.from_env())
    await manager.save_session(session)          # True / False, never raises
    await manager.load_session("session_123")    # a flywheel_state Session, or None
    await manager.list_sessions("session_*")     # ids, from the index (no SCAN)
    cache = RedisExecutionCache(**RedisConfig.execution_from_env())
    await cache.cache_result("exec_abc", {"result": "...", "metadata": {"duration_ms": 1234}})
    await cache.get_result("exec_abc")           # exactly the dict that was cached

Underneath, sessions and results are RedisJSON documents of the current models, written with
their TTL atomically through a :class:`~flywheel_state.Store`, indexed, and visible to every admin
query and CLI command.

Fail-safe behaviour (the promise of the original code, kept and improved):

- ``enabled=False`` does no I/O at all: every call returns its fail-safe value at once.
- Without the ``redis`` package (or redis-om) a manager disables itself, with one warning.
- When Redis is down or failing, every call returns ``False`` / ``None`` / ``[]`` within the
  command timeout plus a small margin, and logs one WARNING per outage (later failures of the
  same outage are logged at DEBUG). The next call after Redis comes back works again, on the same
  manager, and logs "reconnected" at INFO. The original disabled itself for the life of the
  process after one failed connection; these managers never do. The first failure after a
  quiet period is retried once within the same time budget, after checking the server and the
  schema again: a pooled connection from before a server restart, or a server that came back
  empty (no index), costs no failed call.
- Errors about one record or one call's arguments (an invalid id, a bad filter, a value that
  is not a document, a value JSON can't hold even as text, such as a dict that contains
  itself) make that call return its fail-safe value with a warning of its own; they are not an
  outage.
- A call lists at most what fits in its time budget: ``list_sessions()`` without ``limit`` on
  hundreds of thousands of sessions can exceed it (about 60 ms per 10,000 ids here); page
  with ``limit`` / ``offset``, or use ``store.sessions.iterate`` for bulk work.
- This module is the one place in flywheel-state that swallows errors: it catches
  :class:`~flywheel_state.FlywheelStateError` (and the timeout it sets itself, and the
  ``ValueError`` / ``TypeError`` of mapping or encoding the caller's values), logs it on the
  ``flywheel_state.compat`` logger, and returns the fail-safe value.

Schema: the first call of a manager connects its Store with ``auto_migrate=True``, because the
original code worked on an empty Redis with no migration step: the indexes are created, and
pending migrations (the import of data written by the original code among them) run then. That
first call is not cut off by the call timeout while migrations run (a migration interrupted
half-way would only have to resume later; a runner at work elsewhere is waited for); reaching
the server is. Pass ``auto_migrate=False`` to get the Store's default instead (a pending
migration then counts as an outage until an operator runs ``flywheel-state migrate up``).

No event-loop binding: the Store keeps one client per event loop, so a manager created in one
loop (or outside any) works in any other, e.g. across two ``asyncio.run`` calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from flywheel_state._compat_mapping import (
    check_paging,
    execution_from,
    glob_regex,
    history_prefix,
    make_json_safe,
    readable_session,
    result_fields,
    session_from,
)
from flywheel_state.config import DEFAULT_NAMESPACE, Settings
from flywheel_state.crypto import FieldCipher
from flywheel_state.errors import (
    ConfigError,
    ConflictError,
    CorruptRecordError,
    EncryptionKeyError,
    FlywheelStateError,
    InvalidIdError,
    InvalidQueryError,
    NotFoundError,
)
from flywheel_state.observability import instrument_compat

if TYPE_CHECKING:
    from flywheel_state.models import ExecutionResult, Session
    from flywheel_state.store import Store

__all__ = ["CALL_MARGIN", "RedisConfig", "RedisExecutionCache", "RedisSessionManager"]

logger = logging.getLogger("flywheel_state.compat")

T = TypeVar("T")

CALL_MARGIN = 0.5
"""Seconds a call may take beyond the command timeout before it gives up (fail-safe value)."""


class _DefaultTTL:
    """The default ``ttl_seconds``: the original's, which Settings has too (7 days / one hour)."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT_TTL = _DefaultTTL()

# Errors about one record or one call's arguments: Redis itself is fine, so they are logged for
# that call and do not start an outage.
_RECORD_ERRORS: tuple[type[FlywheelStateError], ...] = (
    InvalidIdError,
    InvalidQueryError,
    CorruptRecordError,
    EncryptionKeyError,
    ConflictError,
    NotFoundError,
)

_warned_missing_driver = False

_MAX_NOTED = 1000
"""Distinct mapping notes (unknown status values...) a manager warns about; later ones: DEBUG."""


def _import_store() -> type[Store] | None:
    """The Store class, or None (with one warning per process) when the driver is missing."""
    global _warned_missing_driver
    try:
        from flywheel_state.store import Store
    except ImportError as exc:
        if not _warned_missing_driver:
            _warned_missing_driver = True
            logger.warning(
                "Redis persistence is disabled: the redis package (or redis-om) can't be "
                "imported (%s). Install flywheel-state's dependencies to enable it.",
                exc,
            )
        return None
    return Store


# --------------------------------------------------------------------------------------------
# RedisConfig
# --------------------------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_ENABLED_VARS = ("REDIS_ENABLED", "REDIS_STATE_ENABLED")


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip()


class RedisConfig:
    """Configuration of the managers from environment variables (both generations of them).

    ``RedisSessionManager(**RedisConfig.from_env())`` and
    ``RedisExecutionCache(**RedisConfig.execution_from_env())``.
    """

    @staticmethod
    def enabled_from_env(environ: Mapping[str, str] | None = None) -> bool:
        """Whether persistence is enabled: ``REDIS_ENABLED`` / ``REDIS_STATE_ENABLED``.

        Unset means enabled (as in the original code). Accepts true/false, 1/0, yes/no, on/off
        (any case). When both variables are set, persistence is off if either says so.

        Raises:
            ConfigError: A variable holds another value (the message names it).
        """
        env = os.environ if environ is None else environ
        enabled = True
        for name in _ENABLED_VARS:
            raw = _env_value(env, name)
            if raw is None:
                continue
            if raw.lower() in _FALSE:
                enabled = False
            elif raw.lower() not in _TRUE:
                raise ConfigError(
                    f"{name} must be true or false (or 1/0, yes/no, on/off), got {raw!r}"
                )
        return enabled

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`RedisSessionManager`, read from the environment.

        Always has ``enabled``, ``ttl_seconds``, ``host`` and ``port``; has ``db``,
        ``password``, ``username``, ``url``, ``namespace``, ``connect_timeout`` and
        ``command_timeout`` when their variables are set, and ``cipher`` when
        ``FLYWHEEL_ENCRYPTION_KEYS`` is (see ``Settings.from_env``). Variables: ``REDIS_ENABLED`` /
        ``REDIS_STATE_ENABLED``; ``REDIS_SESSION_TTL_SECONDS`` / ``REDIS_TTL_SECONDS`` (default
        604800, 7 days); ``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_DB``, ``REDIS_USERNAME``,
        ``REDIS_PASSWORD``, ``REDIS_URL``; ``REDIS_NAMESPACE`` / ``REDIS_KEY_PREFIX``;
        ``REDIS_CONNECT_TIMEOUT`` / ``REDIS_COMMAND_TIMEOUT`` (seconds).

        Args:
            environ: The mapping to read (default ``os.environ``).

        Raises:
            ConfigError: A variable holds an unusable value; the message names the variable.
        """
        return RedisConfig._config(environ, "session_ttl")

    @staticmethod
    def execution_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`RedisExecutionCache`, read from the environment.

        As :meth:`from_env`, but ``ttl_seconds`` is ``REDIS_EXECUTION_TTL_SECONDS`` (default
        3600, one hour).

        Raises:
            ConfigError: A variable holds an unusable value; the message names the variable.
        """
        return RedisConfig._config(environ, "execution_ttl")

    @staticmethod
    def execution_ttl_seconds(environ: Mapping[str, str] | None = None) -> int | None:
        """The execution results' TTL in seconds: ``REDIS_EXECUTION_TTL_SECONDS`` (default 3600).

        Raises:
            ConfigError: The variable holds an unusable value.
        """
        return _seconds(Settings.from_env(environ).execution_ttl)

    @staticmethod
    def _config(environ: Mapping[str, str] | None, ttl_field: str) -> dict[str, Any]:
        env = os.environ if environ is None else environ
        settings = Settings.from_env(env)
        config: dict[str, Any] = {
            "enabled": RedisConfig.enabled_from_env(env),
            "ttl_seconds": _seconds(getattr(settings, ttl_field)),
            "host": settings.host,
            "port": settings.port,
        }
        optional = (
            ("REDIS_DB", "db", settings.db),
            ("REDIS_PASSWORD", "password", settings.password),
            ("REDIS_USERNAME", "username", settings.username),
            ("REDIS_URL", "url", settings.url),
            ("REDIS_NAMESPACE", "namespace", settings.namespace),
            ("REDIS_KEY_PREFIX", "namespace", settings.namespace),
            ("REDIS_CONNECT_TIMEOUT", "connect_timeout", settings.connect_timeout),
            ("REDIS_COMMAND_TIMEOUT", "command_timeout", settings.command_timeout),
        )
        for var, key, value in optional:
            if _env_value(env, var) is not None:
                config[key] = value
        if settings.cipher is not None:  # FLYWHEEL_ENCRYPTION_KEYS
            config["cipher"] = settings.cipher
        return config


def _seconds(ttl: timedelta | None) -> int | None:
    return None if ttl is None else int(ttl.total_seconds())


# --------------------------------------------------------------------------------------------
# The fail-safe base
# --------------------------------------------------------------------------------------------


class _FailSafe:
    """Shared machinery: lazy Store, per-loop connect lock, outage state and logging."""

    _ttl_field: ClassVar[str]
    """The Settings field ``ttl_seconds`` sets."""
    _label: ClassVar[str]

    def __init__(
        self,
        enabled: bool = True,
        ttl_seconds: int | float | _DefaultTTL | None = _DEFAULT_TTL,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        url: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        key_prefix: str | None = None,
        username: str | None = None,
        connect_timeout: float = 2.0,
        command_timeout: float = 2.0,
        auto_migrate: bool = True,
        search: bool = True,
        cipher: FieldCipher | None = None,
    ) -> None:
        self.search = search
        if key_prefix is not None:
            namespace = key_prefix.rstrip(":")
        # Settings converts seconds to a timedelta and checks the value; its defaults are the
        # original's.
        ttl: dict[str, Any] = {}
        if not isinstance(ttl_seconds, _DefaultTTL):
            ttl[self._ttl_field] = ttl_seconds
        self.settings = Settings(
            url=url,
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            namespace=namespace,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            cipher=cipher,
            **ttl,
        )
        self.ttl_seconds: int | float | None = (
            _seconds(getattr(self.settings, self._ttl_field))
            if isinstance(ttl_seconds, _DefaultTTL)
            else ttl_seconds
        )
        self.auto_migrate = auto_migrate
        self.enabled = bool(enabled)
        self._store_class: type[Store] | None = None
        if self.enabled:
            self._store_class = _import_store()
            if self._store_class is None:
                self.enabled = False
        self._store: Store | None = None
        self._ready = False
        self._healthy = True
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._noted: set[str] = set()
        """Mapping notes (unknown status values...) warned about; later ones go to DEBUG."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.settings.safe_url!r}, "
            f"namespace={self.settings.namespace!r}, ttl_seconds={self.ttl_seconds!r}, "
            f"enabled={self.enabled})"
        )

    @property
    def namespace(self) -> str:
        """The namespace (key prefix) the manager's records live under."""
        return self.settings.namespace

    @property
    def call_timeout(self) -> float:
        """Seconds after which a call gives up: the command timeout plus :data:`CALL_MARGIN`."""
        return self.settings.command_timeout + CALL_MARGIN

    @property
    def store(self) -> Store:
        """The underlying Store (created on first use; not connected by this property).

        Raises:
            ConfigError: The manager is disabled (``enabled=False`` or no redis package).
        """
        if self._store is None:
            if not self.enabled or self._store_class is None:
                raise ConfigError(f"{type(self).__name__} is disabled: it has no Store")
            self._store = self._store_class(
                self.settings, auto_migrate=self.auto_migrate, search=self.search
            )
        return self._store

    # ------------------------------------------------------------------ calls

    async def _call(self, what: str, op: Callable[[Store], Awaitable[T]], fallback: T) -> T:
        """Run ``op`` on the Store, or return ``fallback`` (disabled, outage, bad record)."""
        if not self.enabled:
            return fallback
        try:
            result = await self._run(op)
        except _RECORD_ERRORS as exc:
            logger.warning("%s failed: %s", what, exc)
            return fallback
        except (FlywheelStateError, asyncio.TimeoutError) as exc:
            self._failed(what, exc)
            return fallback
        self._succeeded()
        return result

    async def _run(self, op: Callable[[Store], Awaitable[T]]) -> T:
        store = self.store
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.call_timeout
        was_ready = self._ready
        await self._ensure_ready(store, self.call_timeout)
        try:
            return await asyncio.wait_for(op(store), timeout=self.call_timeout)
        except _RECORD_ERRORS:
            raise
        except FlywheelStateError:
            if not was_ready:
                raise
        # The first failure after a quiet period is often not an outage: a pooled connection
        # from before a server restart, or a server that came back empty (no index). Check the
        # server (and the schema) again and retry once, within the same time budget; every
        # operation here is safe to repeat.
        self._ready = False
        await _drop_idle_connections(store)
        await self._ensure_ready(store, max(deadline - loop.time(), 0.01))
        return await asyncio.wait_for(op(store), timeout=max(deadline - loop.time(), 0.01))

    async def _ensure_ready(self, store: Store, timeout: float) -> None:
        if self._ready:
            return
        # Reaching the server is bounded like any call, so an outage answers fast; the connect
        # itself may run pending migrations (auto_migrate) and is not cut off half-way.
        await asyncio.wait_for(self._probe(store), timeout=timeout)
        async with self._lock():
            if not self._ready:
                await store.connect()
                self._ready = True

    async def _probe(self, store: Store) -> None:
        """PING through a one-off connection that does not retry.

        The Store's client retries failed connections with backoff (redis-py's default, about
        4 s when the port is closed), which is right for a blip but makes every call of an
        outage wait for the full call timeout. The probe fails at once instead.
        """
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from flywheel_state._redis import translate_errors

        client = store._new_client(retry=Retry(NoBackoff(), 0), max_connections=1)
        try:
            with translate_errors(f"connecting to {self.settings.safe_url}"):
                await client.ping()
        finally:
            with translate_errors("closing the probe connection"):
                await client.aclose()  # type: ignore[attr-defined]  # types-redis predates aclose

    def _lock(self) -> asyncio.Lock:
        return self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())

    def _failed(self, what: str, exc: BaseException) -> None:
        self._ready = False  # check the server and the schema again on the next call
        reason = self.settings.redact(str(exc) or f"no reply within {self.call_timeout:g} s")
        if self._healthy:
            self._healthy = False
            logger.warning(
                "%s: Redis at %s (namespace %r) is unavailable or failing (%s failed: %s). "
                "Calls return False/None/[] until it recovers; further failures are logged at "
                "DEBUG.",
                self._label,
                self.settings.safe_url,
                self.namespace,
                what,
                reason,
            )
        else:
            logger.debug("%s failed (Redis still unavailable): %s", what, reason)

    def _succeeded(self) -> None:
        if not self._healthy:
            self._healthy = True
            logger.info(
                "%s: reconnected to Redis at %s; persistence works again.",
                self._label,
                self.settings.safe_url,
            )

    async def close(self) -> None:
        """Close the connections of the running event loop (never raises).

        The manager stays usable: the next call connects again.
        """
        store, self._store = self._store, None
        self._ready = False
        if store is None:
            return
        from flywheel_state._redis import translate_errors

        try:
            with translate_errors("closing the connection"):
                await store.close()
        except FlywheelStateError as exc:
            logger.debug("%s: error while closing: %s", self._label, exc)


class RedisSessionManager(_FailSafe):
    """Session persistence with the original API, on flywheel-state documents and indexes.

    Sessions live at ``{namespace}:session:{id}`` as RedisJSON documents with a sliding TTL
    (every save restarts it). Every method returns its fail-safe value instead of raising.

    Args:
        enabled: False: no I/O at all, every call returns False / None / [].
        ttl_seconds: Time to live of sessions (default 7 days); None for no expiry.
        host: Redis host (when ``url`` is not given).
        port: Redis port.
        db: Database number.
        password: Password (never logged).
        url: A ``redis://`` / ``rediss://`` URL; wins over host/port/db.
        namespace: Key prefix (default ``agentic_flywheel``, as the original).
        key_prefix: The second generation's name for ``namespace``.
        username: ACL user name.
        connect_timeout: Seconds to wait for a connection.
        command_timeout: Seconds to wait for a reply; a call gives up after this plus
            :data:`CALL_MARGIN`.
        auto_migrate: Create indexes and run pending migrations on the first call (default
            True, because the original worked on an empty Redis).
        search: False for a server or cluster without (distributed) search: saves, loads and
            deletes work; ``list_sessions`` returns [] (logged).

    Raises:
        ConfigError: An argument can't be used (a bad port, namespace, TTL...).
    """

    _ttl_field: ClassVar[str] = "session_ttl"
    _label: ClassVar[str] = "session persistence"

    async def save_session(self, session: Any) -> bool:
        """Save a session (the whole document and its TTL, atomically).

        Args:
            session: A flywheel_state :class:`~flywheel_state.Session`, a dataclass with the
                original ``UniversalSession`` fields (Enum members for backend and status), or
                a dict in either legacy shape. Unknown status or backend values don't fail the
                save: they are stored as a known value, with the original in ``metadata``.

        Returns:
            True when saved; False when disabled, when Redis is unavailable, or when the
            session can't be mapped (logged).
        """
        if not self.enabled:
            return False
        notes: list[str] = []
        sid = getattr(session, "id", None)
        if sid is None and isinstance(session, Mapping):
            sid = session.get("id")
        try:
            model = session_from(session, notes)
        except FlywheelStateError as exc:
            logger.warning("saving session %r failed: %s", sid, exc)
            return False
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            logger.warning(
                "saving session %r failed: it can't be mapped to a Session: %s", sid, exc
            )
            return False
        for note in notes:
            if note not in self._noted and len(self._noted) < _MAX_NOTED:
                self._noted.add(note)
                logger.warning("session %s: %s (original kept in metadata)", model.id, note)
            else:
                logger.debug("session %s: %s (original kept in metadata)", model.id, note)

        what = f"saving session {model.id!r}"

        async def op(store: Store) -> bool:
            return await _save_json_safe(what, lambda: store.sessions.save(model), [model])

        return await self._call(what, op, False)

    async def load_session(self, session_id: str) -> Session | None:
        """Load a session.

        Returns:
            The :class:`~flywheel_state.Session`, or None when it does not exist, when
            disabled, or when Redis is unavailable. A value still in the original's string
            format, or a document the model rejects (an unknown status...), is mapped as
            :meth:`save_session` maps its input, and returned without being rewritten.
        """

        async def op(store: Store) -> Session | None:
            try:
                return await store.sessions.get_or_none(session_id)
            except CorruptRecordError:
                if store.settings.cipher is not None:
                    raise  # tampered, or in clear under encryption: never mapped as content
                # A string the original wrote, or a document the model rejects (an unknown
                # status, say): map it the way save_session maps its input, without writing.
                _, raw = await _raw_value(store, store.sessions.key(session_id))
                session = readable_session(session_id, raw)
                if session is None:
                    raise
                return session

        return await self._call(f"loading session {session_id!r}", op, None)

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session.

        Returns:
            True when it existed and was deleted; False otherwise (or disabled / unavailable).
        """

        async def op(store: Store) -> bool:
            return await store.sessions.delete(session_id)

        return await self._call(f"deleting session {session_id!r}", op, False)

    async def list_sessions(
        self,
        pattern: str = "*",
        *,
        limit: int | None = None,
        offset: int = 0,
        sort: str | None = None,
        **filters: Any,
    ) -> list[str]:
        """Ids of stored sessions, from the session index (never a SCAN of the keyspace).

        Args:
            pattern: A Redis glob on the id (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\``), as
                the original's ``SCAN MATCH``. ``"*"`` (default) matches every id.
            limit: At most this many ids (None: all).
            offset: Skip this many matching ids first.
            sort: Order, e.g. ``"-last_active"`` (see ``store.sessions.ids``). None: with a
                ``limit``, the default order (most recently active first, whatever the
                pattern); without one, no particular order.
            **filters: Index filters: ``backend``, ``status``, ``flow_id``, ``user_id``... (one
                value or a collection), as ``store.sessions.find`` takes them.

        Returns:
            The ids; [] when none match, when disabled, or when Redis is unavailable.
        """

        async def op(store: Store) -> list[str]:
            from flywheel_state.repositories.query import MAX_PAGE_SIZE
            from flywheel_state.repositories.sessions import SESSION_QUERIES

            check_paging(limit, offset)
            if not isinstance(pattern, str):
                raise InvalidQueryError(f"pattern must be a glob string, got {pattern!r}")
            if pattern == "*" and limit is not None and limit <= MAX_PAGE_SIZE:
                return await store.sessions.ids(sort=sort, limit=limit, offset=offset, **filters)
            # Every match, filtered and paged here: a page in the order the index gives one.
            order = SESSION_QUERIES.default_sort if sort is None and limit is not None else sort
            ids = await store.sessions.ids(sort=order, **filters)
            if pattern != "*":
                regex = glob_regex(pattern)
                ids = [i for i in ids if regex.fullmatch(i)]
            return ids[offset:] if limit is None else ids[offset : offset + limit]

        return await self._call(f"listing sessions matching {pattern!r}", op, [])


async def _save_json_safe(
    what: str,
    save: Callable[[], Awaitable[object]],
    models: Iterable[Session | ExecutionResult],
) -> bool:
    """``save()``; when a value can't be encoded, store such values as text and save again.

    The original stored them with ``json.dumps(default=str)``. A value that can't be stored
    even so (one that contains itself, a lone surrogate...) fails the call: False, with a
    warning, as an invalid id does.
    """
    try:
        await save()
    except InvalidQueryError:
        # The repository refuses values JSON can't hold before writing anything.
        try:
            for model in models:
                make_json_safe(model)
            await save()
        except ValueError as exc:  # InvalidQueryError is one
            logger.warning("%s failed: %s", what, exc)
            return False
    return True


async def _drop_idle_connections(store: Store) -> None:
    """Disconnect the idle pooled connections of the running loop's client (not those in use)."""
    from flywheel_state._redis import translate_errors

    with translate_errors("dropping idle connections"):
        await store.client.connection_pool.disconnect(inuse_connections=False)


async def _raw_value(store: Store, key: str) -> tuple[str, Any]:
    """The key's type and its value parsed as JSON (None when missing or not JSON).

    Reads a string (as the original code wrote) or a RedisJSON document, bypassing the model.
    """
    from flywheel_state._redis import as_str, translate_errors

    with translate_errors(f"reading {key}"):
        ktype = as_str(await store.client.type(key))
        if ktype == "string":
            raw = await store.client.execute_command("GET", key)
        elif ktype == "ReJSON-RL":
            raw = await store.client.execute_command("JSON.GET", key)
        else:
            return ktype, None
    try:
        return ktype, json.loads(raw)
    except (TypeError, ValueError):
        return ktype, None


# --------------------------------------------------------------------------------------------
# Execution results
# --------------------------------------------------------------------------------------------


class RedisExecutionCache(_FailSafe):
    """Execution-result caching with the original API, on ExecutionResult documents.

    Each cached result is an :class:`~flywheel_state.ExecutionResult` at
    ``{namespace}:execution:{execution_id}``: ``result`` holds exactly the value passed in, and
    ``session_id`` / ``flow_id`` / ``backend`` / ``status`` / ``duration_ms`` are filled from it
    when it has them (at the top level or under ``metadata``), so results are indexed and
    visible to admin queries. TTL: ``ttl_seconds`` (default one hour), set by the same write.

    Flow history (:meth:`cache_flow_history`) is stored as one ExecutionResult per execution,
    with ``session_id`` and ``flow_id`` set, ``result`` holding the execution record, and
    ``metadata`` ``{"source": "flow_history", "position": i}``; their ids are
    ``history_<hash of session and flow>_<position>``, so they never collide with the ids of
    :meth:`cache_result`. ``store.executions.find(session_id=..., flow_id=...)`` finds them.

    Args: as :class:`RedisSessionManager`, with ``ttl_seconds`` the results' time to live
    (default one hour).

    Raises:
        ConfigError: An argument can't be used.
    """

    _ttl_field: ClassVar[str] = "execution_ttl"
    _label: ClassVar[str] = "execution cache"

    async def cache_result(self, execution_id: str, result: Any) -> bool:
        """Cache an execution result (its TTL set by the same write).

        Args:
            execution_id: The execution's id.
            result: The result, usually a dict; stored as given (values JSON can't hold are
                stored as text, as the original did).

        Returns:
            True when cached; False when disabled, unavailable, or the id is unusable.
        """
        if not self.enabled:
            return False
        try:
            doc = execution_from(execution_id, result, result_fields(result), {"source": "cache"})
        except (FlywheelStateError, ValueError, TypeError) as exc:
            logger.warning("caching execution %r failed: %s", execution_id, exc)
            return False

        what = f"caching execution {execution_id!r}"

        async def op(store: Store) -> bool:
            return await _save_json_safe(what, lambda: store.executions.save(doc), [doc])

        return await self._call(what, op, False)

    async def get_result(self, execution_id: str) -> Any:
        """The cached result, exactly as it was passed to :meth:`cache_result`.

        Returns:
            The result (a dict, as cached), or None when missing, expired, disabled or
            unavailable. A value still in the original's string format is read too.
        """

        async def op(store: Store) -> Any:
            try:
                doc = await store.executions.get_or_none(execution_id)
            except CorruptRecordError:
                if store.settings.cipher is not None:
                    raise  # tampered, or in clear under encryption: never mapped as content
                ktype, raw = await _raw_value(store, store.executions.key(execution_id))
                if raw is None:
                    raise
                if ktype == "ReJSON-RL":  # a document the model rejects: its result as stored
                    if not isinstance(raw, Mapping) or "result" not in raw:
                        raise
                    return raw["result"]
                # A string the original wrote. Shape B wrapped the result in
                # {"execution_id", "result", "cached_at"}; shape A is the result itself.
                if (
                    isinstance(raw, Mapping)
                    and {"execution_id", "result", "cached_at"} <= raw.keys()
                    and raw.get("execution_id") == execution_id
                ):
                    return raw["result"]
                return raw
            return None if doc is None else doc.result

        return await self._call(f"reading execution {execution_id!r}", op, None)

    async def cache_flow_history(
        self, session_id: str, flow_id: str, executions: Iterable[Any]
    ) -> bool:
        """Cache the execution history of a session on a flow (replacing any cached before).

        Each execution becomes an ExecutionResult document with ``session_id`` and ``flow_id``
        set (see the class docstring), so ``store.executions.find(session_id=...,
        flow_id=...)`` and :meth:`get_flow_history` find them.

        Returns:
            True when cached; False when disabled, unavailable, or an id is unusable.
        """
        if not self.enabled:
            return False
        prefix = history_prefix(session_id, flow_id)
        try:
            docs = [
                execution_from(
                    f"{prefix}{position:05d}",
                    item,
                    {
                        **result_fields(item, skip=("session_id", "flow_id")),
                        "session_id": session_id,
                        "flow_id": flow_id,
                    },
                    {"source": "flow_history", "position": position},
                )
                for position, item in enumerate(executions)
            ]
        except (FlywheelStateError, ValueError, TypeError) as exc:
            logger.warning("caching the history of %r on %r failed: %s", session_id, flow_id, exc)
            return False
        keep = {doc.id for doc in docs}
        what = f"caching the history of {session_id!r} on {flow_id!r}"

        async def op(store: Store) -> bool:
            before = await store.executions.ids(session_id=session_id, flow_id=flow_id)
            if docs and not await _save_json_safe(
                what, lambda: store.executions.save_many(docs), docs
            ):
                return False
            stale = [i for i in before if i.startswith(prefix) and i not in keep]
            if stale:
                await store.executions.delete_many(stale)
            return True

        return await self._call(what, op, False)

    async def get_flow_history(self, session_id: str, flow_id: str) -> list[Any] | None:
        """The executions cached by :meth:`cache_flow_history`, in their original order.

        Returns:
            The list, or None when nothing is cached (or disabled / unavailable).
        """

        async def op(store: Store) -> list[Any] | None:
            prefix = history_prefix(session_id, flow_id)
            ids = [
                i
                for i in await store.executions.ids(session_id=session_id, flow_id=flow_id)
                if i.startswith(prefix)
            ]
            if not ids:
                return None
            docs = [d for d in await store.executions.get_many(ids) if d is not None]
            docs.sort(key=lambda d: int(d.metadata.get("position", 0)))
            return [d.result for d in docs] or None

        return await self._call(f"reading the history of {session_id!r} on {flow_id!r}", op, None)


instrument_compat(RedisSessionManager, RedisExecutionCache)  # spans, see observability.py
