"""The change feed: one capped Redis Stream of record changes per namespace, ``{ns}:events``.

With ``Store(..., events=True)`` (or ``Settings(events=True)``) every write appends one event to
the stream *inside the Lua script that writes the record* (see
:mod:`flywheel_state.repositories._scripts`): there is no write without its event and no event
without its write. A refused write (ConflictError, a missing key, a value refused before
anything is sent) adds no event. Reading the feed needs no ``events=True``: a process that
only watches may use a Store with the default settings.

An event names the record kind (``session`` / ``execution``), its id, the operation
(:data:`EVENT_OPS`), the record's new version (for ``deleted``: its last one), the names of the
fields a partial write changed (never their values; empty for full writes, which write the
whole document) and the time (the stream entry id's milliseconds, from the server's clock).
Bulk calls (``save_many``, ``delete_many``) write one event per record, with the same
operations as the single calls.

The stream is capped at ``Settings.events_maxlen`` entries, trimmed approximately
(``XADD MAXLEN ~``: Redis trims whole internal nodes, so a few more entries than the cap may
remain). Events older than the cap are gone: a consumer that falls further behind misses them.

On Redis Cluster the stream is one key, so it lives on one shard, and a script may only touch
keys of one hash slot: the record keys (``{ns}:session:{id}``, no hash tag) and the stream are
in different slots, so ``events=True`` can't be atomic there. flywheel-state makes no hash-tag
choice (a shared tag would put every record on the stream's shard): use the feed with a single
primary (with replicas or Sentinel), not with Cluster.

Expiry of sessions is not a write: Redis removes the key itself. :meth:`EventFeed.expirations`
reports it from keyspace notifications, best effort (Redis sends them when the key is actually
removed, fire and forget: a subscriber that is disconnected at that moment never sees them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from redis import exceptions as redis_exc
from redis.commands.core import AsyncScript

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.errors import InvalidQueryError, StoreUnavailableError
from flywheel_state.repositories._scripts import DELETE_SCRIPT

__all__ = [
    "EVENT_KINDS",
    "EVENT_OPS",
    "MAX_READ_COUNT",
    "Event",
    "EventConsumer",
    "EventFeed",
    "EventSink",
    "stream_key",
]

EVENT_KINDS = ("session", "execution")
"""The record kinds events are written for."""

EVENT_OPS = ("created", "updated", "history_appended", "touched", "deleted", "expired")
"""Operations an event can carry (``expired`` only from :meth:`EventFeed.expirations`)."""

MAX_READ_COUNT = 10_000
"""The largest ``count`` of one read."""

_STREAM_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_MAX_ID_PART = 2**64 - 1
_RETRY_FIRST = 0.05
_RETRY_MAX = 1.0

log = logging.getLogger("flywheel_state.events")


def stream_key(namespace: str) -> str:
    """The key of the change stream of ``namespace``: ``{namespace}:events``."""
    return f"{namespace}:events"


def _time_of(stream_id: str) -> datetime:
    ms = int(stream_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass(frozen=True)
class Event:
    """One change of one record.

    Attributes:
        stream_id: The stream entry id (``"<ms>-<seq>"``); pass it as ``after`` to read on
            from here. Empty for ``expired`` events, which are not in the stream.
        kind: ``"session"`` or ``"execution"``.
        id: The record's id.
        op: One of :data:`EVENT_OPS`.
        version: The record's version after the write (for ``deleted``, the version it had;
            None when unknown, e.g. a deleted legacy value or an expiry).
        fields: Names of the fields a partial write changed; empty for full writes
            (``created`` / ``updated`` by save or insert write the whole document).
        time: When the server wrote it (the stream id's milliseconds, UTC).
    """

    stream_id: str
    kind: str
    id: str
    op: str
    version: int | None
    fields: tuple[str, ...] = ()
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (``time`` as an ISO 8601 string)."""
        return {
            "stream_id": self.stream_id,
            "kind": self.kind,
            "id": self.id,
            "op": self.op,
            "version": self.version,
            "fields": list(self.fields),
            "time": self.time.isoformat(),
        }


def _event(entry_id: Any, raw: Any) -> Event | None:
    """An Event from an XRANGE / XREAD entry (None for an entry without fields, e.g. trimmed)."""
    if not raw:
        return None
    if isinstance(raw, dict):
        values = {as_str(k): as_str(v) for k, v in raw.items()}
    else:  # a flat list, as XAUTOCLAIM returns it under RESP2 parsing
        values = {as_str(raw[i]): as_str(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}
    sid = as_str(entry_id)
    version = values.get("version", "")
    fields = values.get("fields", "")
    return Event(
        stream_id=sid,
        kind=values.get("kind", ""),
        id=values.get("id", ""),
        op=values.get("op", ""),
        version=int(version) if version.lstrip("-").isdigit() else None,
        fields=tuple(f for f in fields.split(",") if f),
        time=_time_of(sid),
    )


def _check_id(name: str, value: Any, *, allow_last: bool = False) -> str:
    if allow_last and value == "$":
        return "$"
    if isinstance(value, str):
        match = _STREAM_ID.fullmatch(value)
        if match is not None and all(
            int(part) <= _MAX_ID_PART for part in match.groups() if part is not None
        ):
            return value
    shown = '"$" or ' if allow_last else ""
    raise InvalidQueryError(
        f"{name} must be {shown}a stream id such as '1700000000000-0', got {value!r}"
    )


def _check_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_READ_COUNT:
        raise InvalidQueryError(f"count must be an int from 1 to {MAX_READ_COUNT}, got {value!r}")
    return value


def _check_kinds(kinds: str | Collection[str] | None) -> frozenset[str] | None:
    if kinds is None:
        return None
    items = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(items, Collection):
        raise InvalidQueryError(f"kinds must be a kind or a collection of kinds, got {kinds!r}")
    out = set()
    for kind in items:
        if kind not in EVENT_KINDS:
            raise InvalidQueryError(f"unknown event kind {kind!r}; kinds: {', '.join(EVENT_KINDS)}")
        out.add(kind)
    return frozenset(out)


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
        raise InvalidQueryError(f"{what} must be a non-empty printable string, got {value!r}")
    return value


def _check_seconds(what: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidQueryError(f"{what} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _after_id(stream_id: str) -> str:
    """The exclusive XRANGE start after ``stream_id``."""
    return f"({stream_id}"


class EventSink:
    """How repositories write events: the stream key, the cap, the delete script.

    Args:
        namespace: The store's namespace (the stream is ``{namespace}:events``).
        maxlen: Approximate cap of the stream's length.
    """

    def __init__(self, *, namespace: str, maxlen: int) -> None:
        self.key = stream_key(namespace)
        self.maxlen = maxlen
        self._delete = AsyncScript(None, DELETE_SCRIPT.encode())  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"EventSink(key={self.key!r}, maxlen={self.maxlen!r})"

    def write_args(self, kind: str, id: str, op: str, fields: Iterable[str]) -> list[Any]:
        """The five trailing write-script arguments of an event (see the script's docstring)."""
        return [kind, id, op, ",".join(fields), self.maxlen]

    async def delete(self, client: Any, key: str, kind: str, id: str) -> Any:
        """Delete ``key`` with its ``deleted`` event (``client`` may be a pipeline)."""
        return await self._delete(keys=[key, self.key], args=[kind, id, self.maxlen], client=client)


class EventFeed:
    """Reading the change stream of one namespace (``store.events``).

    Args:
        client: Returns the client of the running event loop (the Store's).
        namespace: The namespace whose stream to read.
        block: Seconds one blocking read waits on the server before it is issued again
            (keep it below the client's command timeout).
    """

    def __init__(self, *, client: Callable[[], Client], namespace: str, block: float) -> None:
        self._client_source = client
        self.namespace = namespace
        self.key = stream_key(namespace)
        self.block = block

    def __repr__(self) -> str:
        return f"EventFeed(key={self.key!r})"

    @property
    def _client(self) -> Client:
        return self._client_source()

    @property
    def _block_ms(self) -> int:
        return max(1, int(self.block * 1000))

    async def length(self) -> int:
        """How many events the stream holds now."""
        with translate_errors(f"reading the length of {self.key}"):
            return int(await self._client.xlen(self.key))

    async def last_id(self) -> str | None:
        """The id of the newest event, or None when the stream is empty or missing."""
        with translate_errors(f"reading {self.key}"):
            entries = await self._client.xrevrange(self.key, count=1)
        return as_str(entries[0][0]) if entries else None

    async def read(
        self,
        after: str | None = None,
        count: int = 100,
        *,
        kinds: str | Collection[str] | None = None,
    ) -> list[Event]:
        """Events in stream order, oldest first.

        Args:
            after: Only events after this stream id (exclusive); None: from the oldest kept.
            count: At most this many events (1 to :data:`MAX_READ_COUNT`).
            kinds: Only events of these record kinds (``"session"``, ``"execution"``).

        Returns:
            Up to ``count`` events; fewer (or none) when the stream has no more.

        Raises:
            InvalidQueryError: ``after`` is not a stream id, ``count`` is out of range, or a
                kind is unknown.
        """
        start = "-" if after is None else _after_id(_check_id("after", after))
        count = _check_count(count)
        wanted = _check_kinds(kinds)
        out: list[Event] = []
        while len(out) < count:
            with translate_errors(f"reading {self.key}"):
                entries = await self._client.xrange(self.key, min=start, count=count)
            for entry_id, raw in entries:
                event = _event(entry_id, raw)
                if event is not None and (wanted is None or event.kind in wanted):
                    out.append(event)
                    if len(out) == count:
                        break
            if len(entries) < count or wanted is None:
                break
            start = _after_id(as_str(entries[-1][0]))
        return out

    def watch(
        self,
        after: str = "$",
        *,
        kinds: str | Collection[str] | None = None,
        count: int = 100,
    ) -> AsyncIterator[Event]:
        """Every new event as it is written: an endless async iterator (``async for``).

        It blocks on the server (``XREAD BLOCK``, re-issued every :attr:`block` seconds) and
        survives connection losses and server restarts: it retries with a growing pause (up
        to 1 s) and reads on from the last event it gave, so nothing the server still holds
        is skipped or repeated. Stop it with ``break`` or by cancelling the task.

        Args:
            after: ``"$"``: events written from the first step of the iteration on (the
                newest id is read then); a stream id: events after it.
            kinds: Only events of these record kinds.
            count: Events fetched per round trip (1 to :data:`MAX_READ_COUNT`).

        Raises:
            InvalidQueryError: (when called) bad ``after``, ``count`` or kind.
        """
        start = _check_id("after", after, allow_last=True)
        count = _check_count(count)
        wanted = _check_kinds(kinds)
        return self._watch(start, wanted, count)

    async def _watch(
        self, start: str, wanted: frozenset[str] | None, count: int
    ) -> AsyncIterator[Event]:
        last: str | None = None if start == "$" else start
        pause = _RETRY_FIRST
        while True:
            try:
                if last is None:
                    # Pin "$" to an id once, so a reconnect reads on from there.
                    last = await self.last_id() or "0-0"
                with translate_errors(f"waiting for events on {self.key}"):
                    reply = await self._client.xread(
                        {self.key: last}, count=count, block=self._block_ms
                    )
            except StoreUnavailableError as exc:
                log.warning("event watch on %s: %s; retrying in %.2f s", self.key, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)
                continue
            pause = _RETRY_FIRST
            for _stream, entries in reply or []:
                for entry_id, raw in entries:
                    last = as_str(entry_id)
                    event = _event(entry_id, raw)
                    if event is not None and (wanted is None or event.kind in wanted):
                        yield event

    def consume(
        self,
        group: str,
        consumer: str,
        *,
        start: str = "$",
        count: int = 100,
        kinds: str | Collection[str] | None = None,
        claim_idle: float | None = 60.0,
    ) -> EventConsumer:
        """Read as one consumer of a consumer group: at-least-once processing.

        Every event is delivered to one consumer of the group and stays pending until it is
        acknowledged with :meth:`EventConsumer.ack`. A consumer first gets its own pending
        events again (those it received but did not acknowledge before a crash or restart),
        then events pending longer than ``claim_idle`` seconds at other consumers (a dead
        consumer's), then new ones. The group is created on first use (at ``start``) and
        again when the server lost it (a restart without persistence: from the beginning).

        Args:
            group: The consumer group's name (one per application that processes the feed).
            consumer: This consumer's name within the group (stable across restarts).
            start: Where a new group starts: ``"$"`` (events written from now on) or a stream
                id (``"0"``: every event the stream still holds).
            count: Events fetched per round trip.
            kinds: Only events of these kinds; others are acknowledged without being given.
            claim_idle: Seconds after which another consumer's unacknowledged event is taken
                over; None: never take over.

        Raises:
            InvalidQueryError: Bad names, ``start``, ``count``, kinds or ``claim_idle``.
        """
        return EventConsumer(
            self,
            group=_check_name("group", group),
            consumer=_check_name("consumer", consumer),
            start=_check_id("start", start, allow_last=True),
            count=_check_count(count),
            kinds=_check_kinds(kinds),
            claim_idle=_check_seconds("claim_idle", claim_idle, allow_none=True),
        )

    async def ack(self, group: str, *events: Event | str) -> int:
        """Acknowledge events (or stream ids) for ``group``; returns how many were pending."""
        group = _check_name("group", group)
        ids = [_check_id("event id", e.stream_id if isinstance(e, Event) else e) for e in events]
        if not ids:
            return 0
        with translate_errors(f"acknowledging events on {self.key}"):
            return int(await self._client.xack(self.key, group, *ids))

    async def pending(self, group: str) -> int:
        """How many events of ``group`` were delivered and not yet acknowledged (0: no group)."""
        group = _check_name("group", group)
        with translate_errors(f"reading pending events of {self.key}"):
            try:
                info = await self._client.xpending(self.key, group)
            except redis_exc.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return 0
                raise
        return int(info["pending"])

    def expirations(
        self, *, kinds: str | Collection[str] | None = "session", configure: bool = True
    ) -> AsyncIterator[Event]:
        """Records removed by their TTL, from keyspace notifications: best effort.

        Redis publishes an ``expired`` notification when it actually removes a key (on access
        or by its background sweep, so somewhat after the TTL ran out) and does not keep it:
        a subscriber that is not connected at that moment misses it. The events carry
        ``op="expired"``, no version and no stream id. An endless async iterator; it
        resubscribes after a connection loss.

        Args:
            kinds: Only records of these kinds (default sessions).
            configure: Turn on the ``Ex`` flags of ``notify-keyspace-events`` when they are
                off (added to those already set). Where CONFIG is not allowed (managed
                services), a warning is logged and the server's setting is used as it is.

        Raises:
            InvalidQueryError: (when called) an unknown kind.
        """
        wanted = _check_kinds(kinds) or frozenset(EVENT_KINDS)
        return self._expirations(wanted, configure)

    async def _enable_notifications(self) -> None:
        client = self._client
        try:
            current = await client.config_get("notify-keyspace-events")
            flags = as_str(next(iter(current.values()), "")) if current else ""
            has_expired = "x" in flags or "A" in flags
            if "E" not in flags or not has_expired:
                wanted = flags + ("E" if "E" not in flags else "") + ("" if has_expired else "x")
                await client.config_set("notify-keyspace-events", wanted)
        except redis_exc.ResponseError as exc:
            log.warning(
                "can't turn on keyspace notifications (%s): expirations are reported only if "
                "the server's notify-keyspace-events includes 'Ex'",
                exc,
            )

    async def _expirations(self, wanted: frozenset[str], configure: bool) -> AsyncIterator[Event]:
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        channel = f"__keyevent@{db}__:expired"
        prefixes = {f"{self.namespace}:{kind}:": kind for kind in wanted}
        pause = _RETRY_FIRST
        while True:
            pubsub = None
            try:
                with translate_errors(f"subscribing to {channel}"):
                    if configure:
                        await self._enable_notifications()
                    pubsub = self._client.pubsub()
                    await pubsub.subscribe(channel)
                    pause = _RETRY_FIRST
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.block
                        )
                        if message is None or message.get("type") != "message":
                            continue
                        key = as_str(message["data"])
                        for prefix, kind in prefixes.items():
                            if key.startswith(prefix):
                                yield Event(
                                    stream_id="",
                                    kind=kind,
                                    id=key[len(prefix) :],
                                    op="expired",
                                    version=None,
                                )
            except StoreUnavailableError as exc:
                log.warning("expiry watch on %s: %s; retrying in %.2f s", channel, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis_exc.RedisError, OSError):
                        await pubsub.aclose()  # type: ignore[attr-defined]  # stubs lag


class EventConsumer:
    """One consumer of a consumer group; made by :meth:`EventFeed.consume`.

    An endless async iterator of events: ``async for event in consumer: ...; await
    consumer.ack(event)``. Unacknowledged events are delivered again (to this consumer when
    it starts again under the same name, or to another one after ``claim_idle``).
    """

    def __init__(
        self,
        feed: EventFeed,
        *,
        group: str,
        consumer: str,
        start: str,
        count: int,
        kinds: frozenset[str] | None,
        claim_idle: float | None,
    ) -> None:
        self.feed = feed
        self.group = group
        self.consumer = consumer
        self._start = start
        self._count = count
        self._kinds = kinds
        self._claim_idle = claim_idle
        self._group_ready = False
        self._own_cursor: str | None = "0"  # None once this consumer's own backlog is read
        self._buffer: list[Event] = []

    def __repr__(self) -> str:
        return (
            f"EventConsumer(key={self.feed.key!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    def __aiter__(self) -> EventConsumer:
        return self

    async def __anext__(self) -> Event:
        pause = _RETRY_FIRST
        while not self._buffer:
            try:
                await self._fill()
                pause = _RETRY_FIRST
            except StoreUnavailableError as exc:
                log.warning("event consumer %s: %s; retrying in %.2f s", self.group, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)
        return self._buffer.pop(0)

    async def ack(self, *events: Event | str) -> int:
        """Acknowledge events (or their stream ids); returns how many were pending."""
        return await self.feed.ack(self.group, *events)

    async def _ensure_group(self, start: str) -> None:
        with translate_errors(f"creating consumer group {self.group} on {self.feed.key}"):
            try:
                await self.feed._client.xgroup_create(
                    self.feed.key, self.group, id=start, mkstream=True
                )
            except redis_exc.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    async def _fill(self) -> None:
        if not self._group_ready:
            await self._ensure_group(self._start)
        try:
            entries = await self._fetch()
        except redis_exc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The server lost the group (and likely the stream): start over from the beginning.
            self._group_ready = False
            await self._ensure_group("0")
            return
        unwanted: list[str] = []
        for entry_id, raw in entries:
            if entry_id is None:
                continue
            event = _event(entry_id, raw)
            if event is None:
                unwanted.append(as_str(entry_id))  # trimmed while pending: nothing to deliver
            elif self._kinds is not None and event.kind not in self._kinds:
                unwanted.append(event.stream_id)
            else:
                self._buffer.append(event)
        if unwanted:
            await self.ack(*unwanted)

    async def _fetch(self) -> list[Any]:
        client = self.feed._client
        key = self.feed.key
        with translate_errors(f"reading events of group {self.group} on {key}"):
            if self._own_cursor is not None:
                reply = await client.xreadgroup(
                    self.group, self.consumer, {key: self._own_cursor}, count=self._count
                )
                entries = [e for e in (reply[0][1] if reply else []) if e[0] is not None]
                if entries:
                    self._own_cursor = as_str(entries[-1][0])
                    return entries
                self._own_cursor = None
            if self._claim_idle is not None:
                claimed = await client.xautoclaim(
                    key,
                    self.group,
                    self.consumer,
                    min_idle_time=int(self._claim_idle * 1000),
                    start_id="0-0",
                    count=self._count,
                )
                if claimed and claimed[1]:
                    return list(claimed[1])
            reply = await client.xreadgroup(
                self.group,
                self.consumer,
                {key: ">"},
                count=self._count,
                block=self.feed._block_ms,
            )
        return list(reply[0][1]) if reply else []
