"""RedisSessionManager: the original session API on Session documents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from flywheel_state._compat_mapping import check_paging, glob_regex, readable_session, session_from
from flywheel_state.compat._config import SESSION_TTL_SECONDS, manager_settings
from flywheel_state.compat._failsafe import (
    _MAX_NOTED,
    _FailSafe,
    _raw_value,
    _save_json_safe,
    logger,
)
from flywheel_state.config import DEFAULT_NAMESPACE
from flywheel_state.crypto import FieldCipher
from flywheel_state.errors import CorruptRecordError, FlywheelStateError, InvalidQueryError

if TYPE_CHECKING:
    from flywheel_state.models import Session
    from flywheel_state.store import Store

__all__ = ["RedisSessionManager"]


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

    def __init__(
        self,
        enabled: bool = True,
        ttl_seconds: int | float | None = SESSION_TTL_SECONDS,
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
