"""The fail-safe machinery both facades share: a lazy Store, outages, logging, retries.

Every call runs ``op(store)`` within the call timeout and returns the call's fail-safe value
instead of raising (see the package docstring for the promise); errors about one record are
that call's, anything else from the library is an outage, logged once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from flywheel_state._compat_mapping import make_json_safe
from flywheel_state.config import Settings
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

if TYPE_CHECKING:
    from flywheel_state.models import ExecutionResult, Session
    from flywheel_state.store import Store

__all__ = ["CALL_MARGIN", "logger"]

logger = logging.getLogger("flywheel_state.compat")

T = TypeVar("T")

CALL_MARGIN = 0.5
"""Seconds a call may take beyond the command timeout before it gives up (fail-safe value)."""

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


class _FailSafe:
    """Shared machinery: lazy Store, per-loop connect lock, outage state and logging."""

    _ttl_field: ClassVar[str]
    """The Settings field ``ttl_seconds`` sets."""
    _label: ClassVar[str]

    def __init__(
        self,
        *,
        enabled: bool,
        settings: Settings,
        ttl_seconds: int | float | None,
        auto_migrate: bool,
        search: bool,
    ) -> None:
        self.search = search
        self.settings = settings
        self.ttl_seconds = ttl_seconds
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
