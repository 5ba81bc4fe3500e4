"""SessionRepository: sliding-TTL storage of Session documents."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import TypeAdapter, ValidationError

from flywheel_state._redis import Client, translate_errors
from flywheel_state.crypto import FieldCipher
from flywheel_state.errors import InvalidQueryError
from flywheel_state.models._base import Document
from flywheel_state.models._types import utcnow
from flywheel_state.models.session import HistoryEntry, Session
from flywheel_state.repositories.base import (
    DEFAULT,
    Repository,
    TTLArg,
    check_nesting,
    encode_json,
)

__all__ = ["SessionRepository"]

_HISTORY_ENTRY = TypeAdapter(HistoryEntry)


def _epoch(value: datetime) -> str:
    return repr(value.timestamp())


class SessionRepository(Repository[Session]):
    """Sessions at ``{namespace}:session:{id}``; default TTL 7 days, sliding.

    Every write (save, update, append_history, touch) restarts the TTL. With
    ``refresh_on_read=True`` reads restart it too.
    """

    model: ClassVar[type[Document]] = Session
    sliding: ClassVar[bool] = True

    def __init__(
        self,
        *,
        client: Client | Callable[[], Client],
        namespace: str,
        default_ttl: timedelta | None,
        refresh_on_read: bool = False,
        cipher: FieldCipher | None = None,
    ) -> None:
        super().__init__(client=client, namespace=namespace, default_ttl=default_ttl, cipher=cipher)
        self.refresh_on_read = refresh_on_read

    def _prepare(self, model: Document) -> None:
        model.updated_at = utcnow()  # type: ignore[attr-defined]

    def _stamp_ops(self, now: datetime) -> list[tuple[str, str, Any]]:
        return [("set", "$.updated_at", _epoch(now))]

    def _touch_ops(self, now: datetime) -> list[tuple[str, str, Any]]:
        return [("set", "$.last_active", _epoch(now)), ("set", "$.updated_at", _epoch(now))]

    async def _after_read(self, keys: Sequence[str]) -> None:
        if not self.refresh_on_read or self.default_ttl is None:
            return
        ms = int(self.default_ttl.total_seconds() * 1000)
        with translate_errors("refreshing session TTLs"):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(key, ms)
                await pipe.execute()

    async def append_history(
        self,
        id: str,
        *entries: HistoryEntry | Mapping[str, Any],
        max_len: int | None = None,
        ttl: TTLArg = DEFAULT,
    ) -> int:
        """Append entries to the session's history without rewriting the document.

        Uses JSON.ARRAPPEND (and JSON.ARRTRIM when ``max_len`` is given, keeping the newest
        entries), sets ``last_active`` to now, bumps ``total_queries`` by one, and restarts the
        TTL, all in one atomic step. A missing session is never recreated.

        Args:
            id: The session.
            *entries: HistoryEntry objects or dicts (free-form keys are kept).
            max_len: Keep at most this many entries (the newest).
            ttl: TTL to restart with (default: the repository's).

        Returns:
            The session's new version.

        Raises:
            NotFoundError: The session does not exist.
            InvalidQueryError: An entry is not a valid history entry, or max_len is negative.
        """
        if not entries:
            raise InvalidQueryError("append_history() needs at least one entry")
        if max_len is not None and (
            isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0
        ):
            raise InvalidQueryError(f"max_len must be a non-negative integer, got {max_len!r}")
        now = utcnow()
        ops: list[tuple[str, str, Any]] = []
        for entry in entries:
            try:
                model = _HISTORY_ENTRY.validate_python(entry)
            except ValidationError as exc:
                raise InvalidQueryError(f"invalid history entry {entry!r}: {exc}") from exc
            if model.timestamp is None:
                model.timestamp = now
            text = encode_json(model.model_dump_json, "history entry")
            if self._codec is not None:  # encrypted: the depth is checked before sealing
                text = self._seal_entry(
                    id, "history", check_nesting(text, "history entry", at_depth=2)
                )
            ops.append(("append", "$.history", check_nesting(text, "history entry", at_depth=2)))
        if max_len is not None:
            ops.append(("keeplast", "$.history", max_len))
        ops.append(("set", "$.last_active", _epoch(now)))
        ops.append(("set", "$.updated_at", _epoch(now)))
        ops.append(("incr", "$.total_queries", 1))
        return await self._patch(id, ops, ttl=ttl, expected_version=None)
