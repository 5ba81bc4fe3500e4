"""SessionRepository: sliding-TTL storage of Session documents."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json, to_json
from redis.commands.core import AsyncScript

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.crypto import FieldCipher, has_envelope_marker
from flywheel_state.errors import CorruptRecordError, InvalidQueryError, NotFoundError
from flywheel_state.models._types import utcnow
from flywheel_state.models.enums import Backend, SessionStatus
from flywheel_state.models.session import HistoryEntry, Session
from flywheel_state.repositories._filters import Indexed, QuerySchema
from flywheel_state.repositories._paging import Stats
from flywheel_state.repositories._scripts import IDEMPOTENCY_MEMBER, IDEMPOTENCY_WINDOW
from flywheel_state.repositories.base import (
    DEFAULT,
    Repository,
    TTLArg,
    check_free_form,
    check_nesting,
    encode_json,
)

__all__ = [
    "IDEMPOTENCY_WINDOW",
    "SESSION_QUERIES",
    "HistoryPage",
    "SessionRepository",
    "SessionStats",
]


@dataclass(frozen=True)
class SessionStats(Stats):
    """``sessions.stats()``: records per backend and per status (every member listed)."""

    backend: dict[str, int]
    status: dict[str, int]


SESSION_QUERIES = QuerySchema(
    fields=(
        Indexed("backend", "TAG", sortable=True, enum=Backend),
        Indexed("status", "TAG", sortable=True, enum=SessionStatus),
        Indexed("current_flow_id", "TAG", sortable=True),
        Indexed("user_id", "TAG"),
        Indexed("created_at", "NUMERIC", sortable=True, datetimes=True),
        Indexed("last_active", "NUMERIC", sortable=True, datetimes=True),
    ),
    aliases={
        "flow_id": ("current_flow_id", "=="),
        "active_after": ("last_active", ">="),
        "active_before": ("last_active", "<"),
        "created_after": ("created_at", ">="),
        "created_before": ("created_at", "<"),
    },
    default_sort="-last_active",
    stats_fields=("backend", "status"),
    stats_type=SessionStats,
)
"""What sessions are indexed by: the one declaration (the index, filters, sorts, stats)."""

_HISTORY_ENTRY = TypeAdapter(HistoryEntry)
_MAX_IDEMPOTENCY_KEY = 200
_HISTORY_LIST = TypeAdapter(list[HistoryEntry])

# One round trip reads the history's length and a slice of it, so the length and the entries
# describe the same state of the session. ARGV: how many entries, and the position to stop
# before ('' for the end). Reply: {'ok', length, start, json} | {'missing'} | {'corrupt', type}
# | {'badpath'}. The slice is a JSONPath slice: the server sends only those entries.
_HISTORY_SCRIPT = r"""
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
if t == 'none' then
  return {'missing'}
end
if t ~= 'ReJSON-RL' then
  return {'corrupt', t}
end
local lens = redis.call('JSON.ARRLEN', key, '$.history')
local n = lens[1]
if type(n) ~= 'number' then
  return {'badpath'}
end
local stop = n
if ARGV[2] ~= '' then
  stop = math.min(n, tonumber(ARGV[2]))
end
local start = math.max(0, stop - tonumber(ARGV[1]))
if stop <= start then
  return {'ok', n, stop, '[]'}
end
return {'ok', n, start, redis.call('JSON.GET', key, '$.history[' .. start .. ':' .. stop .. ']')}
"""


@dataclass(frozen=True)
class HistoryPage:
    """A slice of a session's history, from :meth:`SessionRepository.history`.

    Attributes:
        entries: The entries, oldest first.
        start: Position (0-based) of the first entry in the whole history; pass it as
            ``before=`` to read the entries before these.
        total: How many entries the whole history holds.
    """

    entries: list[HistoryEntry]
    start: int
    total: int

    @property
    def has_earlier(self) -> bool:
        """True when older entries exist before :attr:`start`."""
        return self.start > 0


def _count_arg(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidQueryError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _epoch(value: datetime) -> str:
    return repr(value.timestamp())


class SessionRepository(Repository[Session]):
    """Sessions at ``{namespace}:session:{id}``; default TTL 7 days, sliding.

    Every write (save, update, append_history, touch) restarts the TTL. With
    ``refresh_on_read=True`` reads restart it too.
    """

    model = Session
    sliding: ClassVar[bool] = True
    query_schema: ClassVar[QuerySchema | None] = SESSION_QUERIES
    #: The fields ``sort`` may name (``-`` prefix: descending).
    sortable_fields: ClassVar[tuple[str, ...]] = SESSION_QUERIES.sort_fields

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
        self._history_script = AsyncScript(None, _HISTORY_SCRIPT.encode())  # type: ignore[arg-type]

    def _prepare(self, model: Session) -> None:
        # utcnow() is what validating it would give (UTC, to the microsecond): set directly,
        # without validate_assignment's round trip through pydantic on every save.
        model.__dict__["updated_at"] = utcnow()
        model.__pydantic_fields_set__.add("updated_at")

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
        idempotency_key: str | None = None,
    ) -> int:
        """Append entries to the session's history without rewriting the document.

        Uses JSON.ARRAPPEND (and JSON.ARRTRIM when ``max_len`` is given, keeping the newest
        entries), sets ``last_active`` to now, bumps ``total_queries`` by one (saturating at
        2**63 - 1), and restarts the TTL, all in one atomic step. A missing session is never
        recreated.

        Not idempotent by itself: repeated, the entries are appended again. To retry safely
        after an OutcomeUnknownError, pass the same ``idempotency_key`` both times: the session
        remembers the keys of its last :data:`IDEMPOTENCY_WINDOW` (32) keyed appends, and an
        append whose key it remembers writes nothing (the keys survive ``update``, ``touch``
        and ``save``, and go with the session when it is deleted or expires).

        Args:
            id: The session.
            *entries: HistoryEntry objects or dicts (free-form keys are kept).
            max_len: Keep at most this many entries (the newest).
            ttl: TTL to restart with (default: the repository's).
            idempotency_key: Identifies this append (e.g. ``"turn-17"``): 1 to 200 printable
                characters. A second append with the same key on the same session is not
                applied again.

        Returns:
            The session's new version; for an append already applied (same key), the current
            version, and nothing is written.

        Raises:
            NotFoundError: The session does not exist.
            InvalidQueryError: An entry is not a valid history entry, max_len is negative, or
                the idempotency key is not a short printable string.
            OutcomeUnknownError: No reply in time: the append may have been applied (retry
                with the same ``idempotency_key``).
        """
        if not entries:
            raise InvalidQueryError("append_history() needs at least one entry")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str)
            or not 0 < len(idempotency_key) <= _MAX_IDEMPOTENCY_KEY
            or not idempotency_key.isprintable()
        ):
            raise InvalidQueryError(
                f"idempotency_key must be 1 to {_MAX_IDEMPOTENCY_KEY} printable characters, "
                f"got {idempotency_key!r}"
            )
        if max_len is not None and (
            isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0
        ):
            raise InvalidQueryError(f"max_len must be a non-negative integer, got {max_len!r}")
        now = utcnow()
        ops: list[tuple[str, str, Any]] = []
        if idempotency_key is not None:
            # First, so the script checks it before anything else.
            ops.append(("once", IDEMPOTENCY_MEMBER, idempotency_key))
        for entry in entries:
            try:
                model = _HISTORY_ENTRY.validate_python(entry)
            except ValidationError as exc:
                raise InvalidQueryError(f"invalid history entry {entry!r}: {exc}") from exc
            if model.timestamp is None:
                model.timestamp = now
            check_free_form(model, "history entry", at_depth=2)
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
        return await self._patch(id, ops, ttl=ttl, expected_version=None, event="history_appended")

    def _open_history(self, key: str, raw: bytes | str) -> bytes | str:
        """A slice of ``$.history`` as JSON, its entries decrypted as a document's would be."""
        if self._codec is None and not has_envelope_marker(raw):
            return raw
        text = raw.encode() if isinstance(raw, str) else raw
        return to_json(from_json(self._open(key, b'{"history":' + text + b"}"))["history"])

    async def history(self, id: str, *, last: int, before: int | None = None) -> HistoryPage:
        """The last ``last`` history entries of a session, without reading the rest of it.

        The server slices the history (a JSONPath slice) and sends only those entries, so
        resuming a long conversation costs what its last turns cost, not the whole document.
        Page backwards with ``before=page.start``::

            page = await store.sessions.history("s1", last=20)
            while page.has_earlier:
                page = await store.sessions.history("s1", last=20, before=page.start)

        Positions count from the oldest entry kept; ``append_history(..., max_len=...)``
        drops the oldest entries, which shifts the positions of the others.

        Args:
            id: The session.
            last: How many entries at most (0 or more; more than the history holds gives all).
            before: Read the entries before this position (0-based; None: up to the newest
                entry; beyond the end means the end).

        Returns:
            The entries (oldest first), the position of the first one, and the history's length.

        Raises:
            NotFoundError: The session does not exist.
            InvalidQueryError: ``last`` or ``before`` is not a non-negative int.
            CorruptRecordError: The key is not a session document, its history is not an
                array, or an entry is not a valid history entry.
        """
        key = self.key(id)
        count = _count_arg("last", last)
        stop = "" if before is None else str(_count_arg("before", before))
        with translate_errors(f"reading the history of {key}"):
            reply = await self._history_script(keys=[key], args=[count, stop], client=self._client)
        status = as_str(reply[0])
        if status == "missing":
            raise NotFoundError(f"{key} does not exist", key=key)
        if status == "corrupt":
            raise self._corrupt_type(key, as_str(reply[1]))
        if status != "ok":
            raise CorruptRecordError(
                f"{key}: field $.history is missing or not an array",
                key=key,
                reason="bad path $.history",
            )
        total, start, raw = int(reply[1]), int(reply[2]), reply[3]
        raw = self._open_history(key, raw)
        try:
            entries = _HISTORY_LIST.validate_json(raw)
        except ValidationError as exc:
            errors = "; ".join(
                f"history.{start + int(e['loc'][0]) if e['loc'] else '?'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise CorruptRecordError(
                f"{key} holds history entries that are not valid: {errors}",
                key=key,
                reason=errors,
            ) from exc
        await self._after_read([key])
        return HistoryPage(entries=entries, start=start, total=total)
