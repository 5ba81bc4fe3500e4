"""RedisExecutionCache: the original execution-cache API on ExecutionResult documents."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from flywheel_state._compat_mapping import (
    execution_from,
    history_entry,
    history_prefix,
    result_fields,
)
from flywheel_state.compat._config import EXECUTION_TTL_SECONDS, manager_settings
from flywheel_state.compat._failsafe import _FailSafe, _raw_value, _save_json_safe, logger
from flywheel_state.config import DEFAULT_NAMESPACE
from flywheel_state.crypto import FieldCipher
from flywheel_state.errors import CorruptRecordError, FlywheelStateError

if TYPE_CHECKING:
    from flywheel_state.store import Store

__all__ = ["RedisExecutionCache"]


class RedisExecutionCache(_FailSafe):
    """Execution-result caching with the original API, on ExecutionResult documents.

    Each cached result is an :class:`~flywheel_state.ExecutionResult` at
    ``{namespace}:execution:{execution_id}``: ``result`` holds exactly the value passed in, and
    ``session_id`` / ``flow_id`` / ``backend`` / ``status`` / ``duration_ms`` are filled from it
    when it has them (at the top level or under ``metadata``), so results are indexed and
    visible to admin queries. TTL: ``ttl_seconds`` (default one hour), set by the same write.

    Flow history (:meth:`cache_flow_history`) is stored as one ExecutionResult per execution,
    with ``session_id`` and ``flow_id`` set, ``result`` holding the execution record, and
    ``metadata`` ``{"source": "flow_history", "position": i, "count": n}`` (the legacy codec's
    documents: migration 0002 imports the original's flow histories as the same); their ids are
    ``history_<hash of session and flow>_<position>``, so they never collide with the ids of
    :meth:`cache_result`. ``store.executions.find(session_id=..., flow_id=...)`` finds them.

    Args: as :class:`RedisSessionManager`, with ``ttl_seconds`` the results' time to live
    (default one hour).

    Raises:
        ConfigError: An argument can't be used.
    """

    _ttl_field: ClassVar[str] = "execution_ttl"
    _label: ClassVar[str] = "execution cache"

    def __init__(
        self,
        enabled: bool = True,
        ttl_seconds: int | float | None = EXECUTION_TTL_SECONDS,
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
        settings = manager_settings(
            ttl_field=self._ttl_field,
            ttl_seconds=ttl_seconds,
            host=host,
            port=port,
            db=db,
            password=password,
            url=url,
            namespace=namespace,
            key_prefix=key_prefix,
            username=username,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            cipher=cipher,
        )
        super().__init__(
            enabled=enabled,
            settings=settings,
            ttl_seconds=ttl_seconds,
            auto_migrate=auto_migrate,
            search=search,
        )

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
            items = list(executions)
            docs = [
                history_entry(session_id, flow_id, position, len(items), item)
                for position, item in enumerate(items)
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
