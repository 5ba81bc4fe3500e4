"""The original persistence code's data as documents, and back: one codec, frozen here.

Both ways into the current models go through this module, so they agree by construction:
migration ``0002`` (legacy strings rewritten in place) and the compat layer
(``RedisSessionManager.save_session`` of a dict or a ``UniversalSession``-like object, and
``load_session`` of a string the original wrote). Like the shapes a Beanie migration declares,
everything here is frozen: field lists, enum values and their aliases, the datetime parser, the
fallbacks. A later change of the live models does not change what old data maps to; a change
of this mapping is a new module (and a migration), not an edit.

Decisions where the two paths used to disagree (issue 11); each follows the design notes
(legacy-data.md) and keeps every original value recoverable:

- An unknown session status is stored as ``idle`` (not ``active``): nothing says the session is
  live, and ``idle`` is the status that claims least. The original value is kept in
  ``metadata["_legacy"]["raw"]["status"]`` and reported (a migration problem, a compat warning).
- Status aliases of the original deployments (``done``, ``canceled``, ``error``, ``paused``...,
  :data:`STATUS_ALIASES`) map on both paths, case-insensitively, as do Enum reprs
  (``SessionStatus.RUNNING``); the original text is kept in ``_legacy.raw``.
- A missing (or null) status is ``pending``; a missing or unknown backend ``custom``.
- Datetimes: ``str(datetime)``, ISO (any offset, ``Z``) and epoch numbers; naive means UTC.
  Missing ones fall back along ``created_at`` -> ``last_active`` -> ``updated_at`` -> now; a
  text that is not a datetime is kept in ``_legacy.raw``.
- Shape B (``_schema_version`` present) keeps ``created_at`` / ``last_active`` inside
  ``metadata``; they are taken out only for shape B.
- A ``context`` that is not an object is stored as ``{}``, a ``history`` that is not a list as
  ``[]``, a ``metadata`` that is not an object as ``{}``, each with the original in
  ``_legacy.raw``; a history item that is not an object becomes ``{"content": item}``; an
  unreadable item timestamp is kept as ``_legacy_timestamp``.
- Unknown top-level fields go into ``metadata`` under their own name (``legacy_<name>`` when
  taken), never overwriting a metadata key.

``metadata["_legacy"]`` is what migration 0002's downgrade needs to write the original string
back byte for byte (see that module's docstring).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, from_json, to_json

from flywheel_state.errors import FlywheelStateError
from flywheel_state.migrations import MigrationProblem, Rewrite
from flywheel_state.models import ExecutionResult, HistoryEntry, Session
from flywheel_state.models._base import Document
from flywheel_state.models._types import (
    INT64_MAX,
    INT64_MIN,
    MICROSECOND_RANGE_SECONDS,
    validate_id,
)

LEGACY = "_legacy"
SCHEMA_VERSION = 1

SESSION_STATUSES = ("pending", "active", "idle", "running", "completed", "failed", "cancelled")
FALLBACK_SESSION_STATUS = "idle"
BACKENDS = ("flowise", "langflow", "custom")
FALLBACK_BACKEND = "custom"
EXECUTION_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
STATUS_ALIASES: dict[str, str] = {
    "canceled": "cancelled",
    "cancel": "cancelled",
    "aborted": "cancelled",
    "stopped": "cancelled",
    "error": "failed",
    "errored": "failed",
    "failure": "failed",
    "done": "completed",
    "complete": "completed",
    "finished": "completed",
    "success": "completed",
    "succeeded": "completed",
    "in_progress": "running",
    "in-progress": "running",
    "started": "running",
    "processing": "running",
    "executing": "running",
    "paused": "idle",
    "inactive": "idle",
    "waiting": "idle",
    "new": "pending",
    "created": "pending",
    "queued": "pending",
    "open": "active",
    "ongoing": "active",
}
"""Status names of the original deployments and their value here (sessions and executions)."""
FALLBACK_EXECUTION_STATUS = "completed"

SESSION_SHAPE = (
    "id",
    "backend",
    "backend_session_id",
    "status",
    "current_flow_id",
    "context",
    "history",
    "metadata",
    "created_at",
    "last_active",
)
SESSION_OPTIONAL = (
    "updated_at",
    "user_id",
    "total_queries",
    "successful_queries",
    "total_response_time",
)
SESSION_DATETIMES = ("created_at", "last_active", "updated_at")
SESSION_DEFAULTS: dict[str, Any] = {
    "backend_session_id": None,
    "current_flow_id": None,
    "user_id": None,
    "context": {},
    "history": [],
    "total_queries": 0,
    "successful_queries": 0,
    "total_response_time": 0.0,
}
EXECUTION_SHAPE_B = ("execution_id", "result", "cached_at")
EXECUTION_KNOWN = ("session_id", "flow_id", "backend", "status", "error", "duration_ms", "metadata")
EXECUTION_DEFAULTS: dict[str, Any] = {
    "session_id": None,
    "flow_id": None,
    "backend": None,
    "error": None,
    "duration_ms": None,
}
HISTORY_ENTRY_FIELDS = ("role", "content", "timestamp")


# ---------------------------------------------------------------------- frozen parsing


_EPOCH = datetime(1970, 1, 1)
MAX_EPOCH = 2e10
"""Stored datetimes are epoch seconds, read back as seconds only within +-2e10 (years 1336 to
2603; larger numbers are read as milliseconds): a legacy value outside is not a datetime here."""
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6})\d*)?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``, the same values, faster: pydantic_core's parser (from_json), and
    json.loads itself for what that refuses (lone surrogates, a UTF-8 BOM or UTF-16 text,
    nesting deeper than 200, invalid JSON: json.loads raises then, as it always did). Where
    from_json accepts a text, it gives what json.loads gives: the same numbers (big integers,
    NaN and infinities, the same doubles), strings and key order (the last of duplicate keys
    wins, in the first one's place); tests compare the two on many texts."""
    try:
        return from_json(raw)
    except ValueError:
        return json.loads(raw)


def _parse_slow(text: str) -> datetime | None:
    # What fromisoformat of Python 3.10 refuses: "Z", 1-5 or 7+ fraction digits, "+hhmm".
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        parsed = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
        )
    except ValueError:
        return None
    if zone and zone.upper() != "Z":
        digits = zone[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:] or 0)
        parsed -= timedelta(minutes=minutes if zone[0] == "+" else -minutes)
    return parsed


def _parse(value: Any) -> datetime | None:
    """A legacy datetime string as a naive UTC datetime (naive input means UTC already)."""
    if not isinstance(value, str):
        return None
    try:
        try:
            parsed = datetime.fromisoformat(value)  # takes "T" or " " between date and time
        except ValueError:
            return _parse_slow(value)
        offset = parsed.utcoffset()
        if offset is not None:
            parsed = (parsed - offset).replace(tzinfo=None)
    except OverflowError:  # an offset moved it out of datetime's range
        return None
    return parsed


def _epoch(parsed: datetime) -> float | None:
    epoch = (parsed - _EPOCH).total_seconds()
    return epoch if -MAX_EPOCH <= epoch <= MAX_EPOCH else None


def parse_datetime(value: Any) -> float | None:
    """Epoch seconds of a legacy datetime (``str(dt)``, ISO, epoch number); naive means UTC.

    None for anything else, including instants outside +-:data:`MAX_EPOCH`.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        finite = math.isfinite(value) and -MAX_EPOCH <= value <= MAX_EPOCH
        return float(value) if finite else None
    parsed = _parse(value)
    return None if parsed is None else _epoch(parsed)


def render_datetime(epoch: float) -> str:
    """How the original code wrote a datetime: naive UTC ``isoformat()``."""
    return datetime.fromtimestamp(epoch, timezone.utc).replace(tzinfo=None).isoformat()


def _instant(value: float) -> datetime | None:
    # The datetime a stored epoch value reads back as (microseconds near the epoch). Comparing
    # these, not the floats, is immune to the last-bit changes a double can get on its way
    # through JSON text.
    try:
        if -MICROSECOND_RANGE_SECONDS < value < MICROSECOND_RANGE_SECONDS:
            return datetime.fromtimestamp(value, timezone.utc)
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
            milliseconds=round(value * 1000)
        )
    except (OverflowError, OSError, ValueError):
        return None


def same_instant(a: Any, b: Any) -> bool:
    """True when two epoch values read back as the same stored datetime."""
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if a == b:
        return True
    first = _instant(a)
    return first is not None and first == _instant(b)


def stored_now() -> float:
    """Now, as epoch seconds of a whole microsecond: the value a document stores and reads back
    exactly. The raw ``time.time()`` has digits below the microsecond: the document rounds them
    away, but ``_legacy.raw`` kept them (and RedisJSON may change a 17-digit number's last
    bit), so the downgrade failed to recognise the import-time fallback now and then and wrote
    the import time instead of the original value."""
    now = datetime.fromtimestamp(time.time(), timezone.utc).replace(tzinfo=None)
    return (now - _EPOCH) / timedelta(seconds=1)


def ordered(value: dict[str, Any], order: Any) -> dict[str, Any]:
    """``value`` with the keys listed in ``order`` first, in that order, then the others."""
    if not isinstance(order, list):
        return value
    out = {k: value[k] for k in order if isinstance(k, str) and k in value}
    out.update((k, v) for k, v in value.items() if k not in out)
    return out


def enum_value(
    value: Any, allowed: tuple[str, ...], aliases: dict[str, str] | None = None
) -> str | None:
    """The allowed value ``value`` names (trimmed, any case, ``Status.RUNNING``, an alias)."""
    if type(value) is str and value in allowed:  # the value itself (no alias is one)
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if "." in text:
        text = text.rsplit(".", 1)[1]
    text = text.lower()
    if aliases is not None:
        text = aliases.get(text, text)
    return text if text in allowed else None


def free_name(name: str, taken: dict[str, Any]) -> str:
    """``name``, or ``legacy_<name>`` (repeated) when ``taken`` has it already."""
    while name in taken:
        name = f"legacy_{name}"
    return name


class _Import:
    """State of one document's import: its legacy record and its problems."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.legacy: dict[str, Any] = {}
        self.problems: list[MigrationProblem] = []

    def problem(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        self.problems.append(
            MigrationProblem(key=self.key, message=message, field=field, value=value)
        )

    def keep_raw(self, field: str, value: Any, stored: Any, message: str | None = None) -> None:
        self.legacy.setdefault("raw", {})[field] = {"value": value, "stored": stored}
        if message is not None:
            self.problem(message, field=field, value=value)

    def note(self, name: str, item: Any) -> None:
        self.legacy.setdefault(name, []).append(item)

    def legacy_block(self) -> dict[str, Any]:
        return {k: v for k, v in self.legacy.items() if v not in ({}, [], None)}

    def result(self, encoded: str | None) -> Rewrite:
        return Rewrite(encoded, tuple(self.problems))

    def datetime_field(self, field: str, value: Any) -> float | None:
        """Parse a datetime; remember its text when ISO output would not reproduce it."""
        if not isinstance(value, str):
            epoch = parse_datetime(value)
            if epoch is not None:
                self.legacy.setdefault("dates", {})[field] = value
            return epoch
        parsed = _parse(value)
        epoch = None if parsed is None else _epoch(parsed)
        if parsed is None or epoch is None:
            return None
        if parsed.isoformat() != value:  # str(dt), an offset, "Z", fewer digits...
            self.legacy.setdefault("dates", {})[field] = value
        return epoch

    def encode(
        self, model: type[Document], doc: dict[str, Any], defaults: dict[str, Any]
    ) -> str | None:
        """Encode ``doc`` with the live model; unmappable fields fall back to defaults.

        ``doc["metadata"]`` receives the legacy record (as it stands after any repair).
        """
        for _ in range(8):
            doc["metadata"][LEGACY] = self.legacy_block()
            try:
                return model.model_validate(doc).model_dump_json()
            except FlywheelStateError as exc:  # an unusable id
                self.problem(f"can't be imported: {exc}; left as it is", field="id")
                return None
            except ValidationError as exc:
                if not self._repair(doc, exc, defaults):
                    msg = str(exc).replace("\n", " ")
                    self.problem(f"can't be imported ({msg}); left as it is")
                    return None
        self.problem("can't be imported (too many invalid fields); left as it is")
        return None

    def _repair(self, doc: dict[str, Any], exc: ValidationError, defaults: dict[str, Any]) -> bool:
        repaired = False
        for error in exc.errors():
            loc = error["loc"]
            if not loc:
                continue
            field = str(loc[0])
            if field == "history" and len(loc) >= 3 and isinstance(loc[1], int):
                item = doc["history"][loc[1]]
                sub = str(loc[2])
                if isinstance(item, dict) and sub in item:
                    item[f"_legacy_{sub}"] = item.pop(sub)
                    self.problem(
                        f"history item {loc[1]}: {sub} is invalid ({error['msg']}); kept as "
                        f"_legacy_{sub}",
                        field=f"history.{loc[1]}.{sub}",
                        value=item[f"_legacy_{sub}"],
                    )
                    repaired = True
                continue
            if field in defaults and field in doc and field not in self.legacy.get("raw", {}):
                self.keep_raw(
                    field,
                    doc[field],
                    defaults[field],
                    f"{field} is invalid ({error['msg']}): stored as {defaults[field]!r}, "
                    "original kept in metadata._legacy.raw",
                )
                doc[field] = defaults[field]
                repaired = True
        return repaired


# ---------------------------------------------------------------------- import (upgrade)


def _metadata(imp: _Import, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        metadata = dict(value)
        if LEGACY in metadata:
            imp.legacy["own"] = metadata.pop(LEGACY)
        return metadata
    imp.keep_raw("metadata", value, {}, "metadata is not an object: stored as {}")
    return {}


def _extras(imp: _Import, src: dict[str, Any], metadata: dict[str, Any]) -> None:
    for name, value in src.items():
        stored = free_name(name, metadata)
        metadata[stored] = value
        imp.legacy.setdefault("extra", {})[name] = stored


def import_session(key: str, key_id: str, data: dict[str, Any], now: float) -> Rewrite:
    """A legacy session dict (shape A or B) as an encoded Session document."""
    imp = _Import(key)
    src = dict(data)
    shape_b = "_schema_version" in src
    imp.legacy["shape"] = "B" if shape_b else "A"
    if shape_b:
        imp.legacy["schema_version"] = src.pop("_schema_version")
    imp.legacy["absent"] = [f for f in SESSION_SHAPE if f not in data]
    imp.legacy["kept"] = [f for f in SESSION_OPTIONAL if f in data]
    # The downgrade writes fields in the original code's order; remember any other order, so
    # the string it writes back is the original, byte for byte.
    if not _in_session_order(data):
        imp.legacy["order"] = list(data)
    raw_metadata = data.get("metadata")
    if isinstance(raw_metadata, dict) and (shape_b or LEGACY in raw_metadata):
        meta_order = list(raw_metadata)
        # A "_legacy" of its own comes back after the other keys, then shape B's datetimes (which
        # leave metadata) in field order. (Shape A without one: always the original order.)
        moved = [k for k in _MOVED_DATETIMES if shape_b and k in raw_metadata]
        tail = [LEGACY] if LEGACY in raw_metadata else []
        rest = [k for k in meta_order if k not in moved and k != LEGACY]
        if meta_order != rest + tail + moved:
            imp.legacy["metadata_order"] = meta_order
    metadata = _metadata(imp, src.pop("metadata", {}))

    if "id" in src and src.pop("id") != key_id:
        imp.legacy["id"] = data["id"]
    backend_raw = src.pop("backend", None)
    backend = enum_value(backend_raw, BACKENDS)
    if backend is None:
        what = "missing" if "backend" not in data else f"unknown ({backend_raw!r})"
        imp.keep_raw("backend", backend_raw, FALLBACK_BACKEND, f"backend {what}: stored as custom")
        backend = FALLBACK_BACKEND
    elif backend != backend_raw:
        imp.keep_raw("backend", backend_raw, backend)
    status: str | None = None
    if "status" in src:
        status_raw = src.pop("status")
        status = enum_value(status_raw, SESSION_STATUSES, STATUS_ALIASES)
        if status_raw is None:  # as if missing: a session that never started
            status = "pending"
            imp.keep_raw("status", None, status)
        elif status is None:
            status = FALLBACK_SESSION_STATUS
            imp.keep_raw(
                "status", status_raw, status, f"unknown status {status_raw!r}: stored as {status}"
            )
        elif status != status_raw:
            imp.keep_raw("status", status_raw, status)

    times: dict[str, float] = {}
    unparsed: dict[str, Any] = {}
    for field in SESSION_DATETIMES:
        if field in src:
            value = src.pop(field)
        elif shape_b and field in metadata:
            value = metadata.pop(field)
            imp.note("in_metadata", field)
        else:
            continue
        epoch = imp.datetime_field(field, value)
        if epoch is None:
            unparsed[field] = value
        else:
            times[field] = epoch
    created = times.get("created_at", times.get("last_active", times.get("updated_at", now)))
    last_active = times.get("last_active", times.get("updated_at", created))
    updated = times.get("updated_at", last_active)
    fallback = {"created_at": created, "last_active": last_active, "updated_at": updated}
    for field, value in unparsed.items():
        imp.keep_raw(
            field,
            value,
            fallback[field],
            f"{field} {value!r} is not a datetime: stored as {render_datetime(fallback[field])}",
        )

    context = src.pop("context", {})
    if not isinstance(context, dict):
        imp.keep_raw("context", context, {}, "context is not an object: stored as {}")
        context = {}
    history = src.pop("history", [])
    if not isinstance(history, list):
        imp.keep_raw("history", history, [], "history is not a list: stored as []")
        history = []
    entries, plain_history = _history(imp, history)

    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "version": 1,
        "id": key_id,
        "backend": backend,
        "context": context,
        "history": entries,
        "metadata": metadata,
        "created_at": created,
        "updated_at": updated,
        "last_active": last_active,
    }
    if status is not None:
        doc["status"] = status
    for field in _SESSION_PLAIN_FIELDS:
        if field in src:
            doc[field] = src.pop(field)
    _extras(imp, src, metadata)
    metadata[LEGACY] = imp.legacy_block()
    encoded = _session_json(doc) if plain_history else None
    if encoded is None:  # something the model would convert, repair or refuse
        encoded = imp.encode(Session, doc, SESSION_DEFAULTS)
    return imp.result(encoded)


# The fast path of import_session: the stored JSON built directly, for a document the model
# would accept as it is. It is what ``Session.model_validate(doc).model_dump_json()`` writes,
# byte for byte (tests compare both paths over many inputs): the same fields in the model's
# order, with the model's defaults, serialized by the same serializer (pydantic_core) with the
# model's NaN/infinity mode. It is used only while the live models have exactly the fields it
# knows (a changed model falls back to full validation, never to a wrong document).
_SESSION_FIELDS = (
    "schema_version",
    "version",
    "id",
    "backend",
    "backend_session_id",
    "status",
    "current_flow_id",
    "user_id",
    "context",
    "history",
    "metadata",
    "created_at",
    "updated_at",
    "last_active",
    "total_queries",
    "successful_queries",
    "total_response_time",
)
_FAST_SESSIONS = (
    tuple(name for name in Session.model_fields if name != "pk") == _SESSION_FIELDS
    and Session.SCHEMA_VERSION == SCHEMA_VERSION
    and tuple(HistoryEntry.model_fields) == HISTORY_ENTRY_FIELDS
    and HistoryEntry.model_config.get("extra") == "allow"
)
_INF_NAN: Literal["null", "constants", "strings"] = Session.model_config.get(
    "ser_json_inf_nan", "null"
)


def _stored_as_is(epoch: Any) -> bool:
    """True when the model stores ``epoch`` (a datetime in epoch seconds) unchanged.

    The model reads a stored epoch back as a datetime to the microsecond (within +-2**33 s) and
    writes ``datetime.timestamp()``: for the double nearest to a whole number of microseconds
    (what the legacy parser and stored_now give) that is the same double. Anything else (digits
    below the microsecond, millisecond precision farther out) takes the model's path.
    """
    return (
        type(epoch) is float
        and -MICROSECOND_RANGE_SECONDS < epoch < MICROSECOND_RANGE_SECONDS
        and round(epoch * 1e6) / 1e6 == epoch
    )


def _session_json(doc: dict[str, Any]) -> str | None:
    """``doc`` as the Session model stores it, or None when the model must see it (a value
    it would convert, repair or refuse). Its history entries are checked by :func:`_history`
    already."""
    if not _FAST_SESSIONS:
        return None
    try:
        validate_id(doc["id"])
    except FlywheelStateError:
        return None
    flow_session = doc.get("backend_session_id")
    if flow_session is not None and type(flow_session) is not str:
        return None
    for name in ("current_flow_id", "user_id"):
        tag = doc.get(name)
        if tag is not None and (type(tag) is not str or not tag.isprintable()):
            return None
    for name in ("created_at", "updated_at", "last_active"):
        if not _stored_as_is(doc[name]):
            return None
    counters = []
    for name in ("total_queries", "successful_queries"):
        count = doc.get(name, 0)
        if type(count) is not int or not INT64_MIN <= count <= INT64_MAX:
            return None
        counters.append(count)
    response_time = doc.get("total_response_time", 0.0)
    if type(response_time) is not float or not math.isfinite(response_time):
        return None
    out = {
        "schema_version": doc["schema_version"],
        "version": doc["version"],
        "id": doc["id"],
        "backend": doc["backend"],
        "backend_session_id": flow_session,
        "status": doc.get("status", "pending"),
        "current_flow_id": doc.get("current_flow_id"),
        "user_id": doc.get("user_id"),
        "context": doc["context"],
        "history": doc["history"],
        "metadata": doc["metadata"],
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
        "last_active": doc["last_active"],
        "total_queries": counters[0],
        "successful_queries": counters[1],
        "total_response_time": response_time,
    }
    try:
        return to_json(out, inf_nan_mode=_INF_NAN).decode()
    except PydanticSerializationError:  # the model's path raises it, as it always did
        return None


# Fields import_session copies as they are (the model checks them).
_SESSION_PLAIN_FIELDS = ("backend_session_id", "current_flow_id", *SESSION_OPTIONAL[1:])
_KNOWN_ORDER = {
    name: i for i, name in enumerate(("_schema_version", *SESSION_SHAPE, *SESSION_OPTIONAL))
}
# Shape B's datetimes that leave metadata, in the order the downgrade puts them back.
_MOVED_DATETIMES = tuple(f for f in (*SESSION_SHAPE, *SESSION_OPTIONAL) if f in SESSION_DATETIMES)


def _in_session_order(data: dict[str, Any]) -> bool:
    """True when ``data``'s top-level fields are in the order the downgrade writes them
    without a recorded one: the known fields in their order, then the others."""
    last = -1
    for name in data:
        position = _KNOWN_ORDER.get(name)
        if position is None:
            last = len(_KNOWN_ORDER)  # an unknown field: no known one may follow
        elif position < last:
            return False
        else:
            last = position
    return True


def _history(imp: _Import, items: list[Any]) -> tuple[list[dict[str, Any]], bool]:
    """The history entries, each as the model stores it (``role``, ``content``, ``timestamp``,
    then the item's other keys in their order), and whether the model would take them all as
    they are (every role a string or null, every timestamp stored as it is)."""
    entries: list[dict[str, Any]] = []
    plain = True
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            imp.note("wrapped", index)
            entries.append({"role": None, "content": item, "timestamp": None})
            continue
        role = item.get("role")
        stamp = item.get("timestamp")
        entry = {"role": role, "content": item.get("content"), "timestamp": stamp}
        if role is None or stamp is None or entry["content"] is None:
            # The document can't tell an explicit null from an absent field.
            nulls = [f for f in HISTORY_ENTRY_FIELDS if f in item and item[f] is None]
            if nulls:
                imp.legacy.setdefault("item_nulls", {})[str(index)] = nulls
        for name, value in item.items():
            if name not in entry:
                entry[name] = value
        if stamp is not None:
            canonical = False
            if type(stamp) is str:
                parsed = _parse(stamp)
                epoch = None if parsed is None else _epoch(parsed)
                # A canonical ISO text (what the downgrade writes) needs no second look when
                # the epoch reads back as the same microsecond (within +-2**33 s).
                canonical = (
                    epoch is not None
                    and -MICROSECOND_RANGE_SECONDS < epoch < MICROSECOND_RANGE_SECONDS
                    and parsed is not None
                    and parsed.isoformat() == stamp
                )
            else:
                epoch = parse_datetime(stamp)
            if epoch is None:
                entry["timestamp"] = None
                entry["_legacy_timestamp"] = stamp
                imp.problem(
                    f"history item {index}: timestamp is not a datetime; kept as _legacy_timestamp",
                    field=f"history.{index}.timestamp",
                    value=stamp,
                )
            else:
                entry["timestamp"] = epoch
                if not canonical and stamp != render_datetime(epoch):  # str(dt), "Z", a number
                    imp.legacy.setdefault("item_dates", {})[str(index)] = stamp
                plain = plain and _stored_as_is(epoch)
        if role is not None and type(role) is not str:
            plain = False
        entries.append(entry)
    return entries, plain


def import_execution(key: str, key_id: str, data: Any, now: float) -> Rewrite:
    """A legacy execution value (shape A: the result itself; shape B) as an ExecutionResult."""
    imp = _Import(key)
    shape_b = (
        isinstance(data, dict)
        and "execution_id" in data
        and ("result" in data or "cached_at" in data)
    )
    if not shape_b:
        imp.legacy["shape"] = "A"
        imp.legacy["absent"] = ["created_at"]
        # The indexed fields the result itself names (as the compat layer's cache_result).
        fields = execution_fields(data)
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "version": 1,
            "id": key_id,
            "status": fields.pop("status", FALLBACK_EXECUTION_STATUS),
            "result": data,
            "created_at": fields.pop("created_at", now),
            "metadata": {},
            **fields,
        }
        return imp.result(imp.encode(ExecutionResult, doc, EXECUTION_DEFAULTS))

    src = dict(data)
    imp.legacy["shape"] = "B"
    imp.legacy["absent"] = [f for f in EXECUTION_SHAPE_B if f not in data]
    imp.legacy["kept"] = [f for f in EXECUTION_KNOWN if f in data]
    exec_id = src.pop("execution_id")
    if exec_id != key_id:
        imp.legacy["id"] = exec_id
    metadata = _metadata(imp, src.pop("metadata", {}))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "version": 1,
        "id": key_id,
        "result": src.pop("result", None),
        "metadata": metadata,
    }
    created = now
    if "cached_at" in src:
        value = src.pop("cached_at")
        epoch = imp.datetime_field("cached_at", value)
        if epoch is None:
            imp.keep_raw(
                "cached_at", value, now, f"cached_at {value!r} is not a datetime: stored as now"
            )
        else:
            created = epoch
    doc["created_at"] = created
    if "backend" in src:
        raw_backend = src.pop("backend")
        backend = enum_value(raw_backend, BACKENDS)
        if backend is None and raw_backend is not None:
            imp.keep_raw(
                "backend", raw_backend, None, f"unknown backend {raw_backend!r}: stored as null"
            )
        elif backend != raw_backend:
            imp.keep_raw("backend", raw_backend, backend)
        doc["backend"] = backend
    status = FALLBACK_EXECUTION_STATUS
    if "status" in src:
        raw_status = src.pop("status")
        found = enum_value(raw_status, EXECUTION_STATUSES, STATUS_ALIASES)
        if found is None:
            imp.keep_raw(
                "status", raw_status, status, f"unknown status {raw_status!r}: stored as {status}"
            )
        else:
            status = found
            if found != raw_status:
                imp.keep_raw("status", raw_status, found)
    doc["status"] = status
    for field in ("session_id", "flow_id", "error", "duration_ms"):
        if field in src:
            doc[field] = src.pop(field)
    _extras(imp, src, metadata)
    return imp.result(imp.encode(ExecutionResult, doc, EXECUTION_DEFAULTS))


def import_history(key: str, data: Any) -> Rewrite:
    """A legacy flow history dict as a JSON document of the same fields (no model)."""
    imp = _Import(key)
    if not isinstance(data, dict):
        imp.problem("a flow history that is not a JSON object; left as it is")
        return imp.result(None)
    doc = dict(data)
    for name in (LEGACY, "schema_version"):
        if name in doc:
            imp.legacy.setdefault("own", {})[name] = doc.pop(name)
    if "cached_at" in doc:
        epoch = imp.datetime_field("cached_at", doc["cached_at"])
        if epoch is None:
            imp.problem(
                "cached_at is not a datetime; kept as it was",
                field="cached_at",
                value=doc["cached_at"],
            )
        else:
            doc["cached_at"] = epoch
    out = {"schema_version": SCHEMA_VERSION, **doc}
    block = imp.legacy_block()
    if block:
        out[LEGACY] = block
    return imp.result(json.dumps(out, separators=(",", ":"), ensure_ascii=False))


# ---------------------------------------------------------------------- export (downgrade)


def _restore_metadata(legacy: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Unknown fields moved into metadata, taken back out (metadata is changed in place)."""
    restored = {}
    for name, stored in legacy.get("extra", {}).items():
        if stored in metadata:
            restored[name] = metadata.pop(stored)
    if "own" in legacy:
        metadata[LEGACY] = legacy["own"]
    return restored


def _value(legacy: dict[str, Any], field: str, current: Any) -> Any:
    raw = legacy.get("raw", {}).get(field)
    if raw is not None and raw.get("stored") == current:
        return raw.get("value")
    return current


def _datetime_out(legacy: dict[str, Any], field: str, current: Any, stored_as: str) -> Any:
    raw = legacy.get("raw", {}).get(stored_as)
    if raw is not None and same_instant(raw.get("stored"), current):
        return raw.get("value")
    text = legacy.get("dates", {}).get(field)
    if text is not None and same_instant(parse_datetime(text), current):
        return text
    return render_datetime(current) if isinstance(current, (int, float)) else current


def _history_out(legacy: dict[str, Any], index: int, entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    if (
        index in legacy.get("wrapped", ())
        and set(entry) <= set(HISTORY_ENTRY_FIELDS)
        and entry.get("role") is None
        and entry.get("timestamp") is None
    ):
        return entry.get("content")
    nulls = legacy.get("item_nulls", {}).get(str(index), ())
    out = {
        k: v
        for k, v in entry.items()
        if not (k in HISTORY_ENTRY_FIELDS and v is None and k not in nulls)
    }
    stamp = out.get("timestamp")
    if isinstance(stamp, (int, float)):
        text = legacy.get("item_dates", {}).get(str(index))
        same = text is not None and same_instant(parse_datetime(text), stamp)
        out["timestamp"] = text if same else render_datetime(stamp)
    for sub in HISTORY_ENTRY_FIELDS:
        if f"_legacy_{sub}" in out and sub not in out:
            out[sub] = out.pop(f"_legacy_{sub}")
    return out


def export_session(doc: dict[str, Any]) -> str:
    """A Session document as the original code's JSON string."""
    metadata = dict(doc.get("metadata") or {})
    legacy = metadata.pop(LEGACY, None)
    imported = isinstance(legacy, dict)
    legacy = legacy if isinstance(legacy, dict) else {}
    extras = _restore_metadata(legacy, metadata)
    absent = set(legacy.get("absent", ()))
    in_metadata = set(legacy.get("in_metadata", ()))
    kept = set(legacy.get("kept", ())) if imported else set(SESSION_OPTIONAL)
    out: dict[str, Any] = {}
    if legacy.get("shape") == "B":
        out["_schema_version"] = legacy.get("schema_version")
    for field in (*SESSION_SHAPE, *SESSION_OPTIONAL):
        if field in in_metadata:
            include = True
        elif field in SESSION_OPTIONAL:
            # Kept when the original had it, or when set since (a user_id added later).
            include = field in kept or (
                field in SESSION_DEFAULTS and doc.get(field) != SESSION_DEFAULTS[field]
            )
        else:
            include = field not in absent
        if not include:
            continue
        current = doc.get(field)
        value: Any
        if field == "id":
            value = legacy.get("id", current)
        elif field in SESSION_DATETIMES:
            value = _datetime_out(legacy, field, current, field)
        elif field == "metadata":
            value = _value(legacy, field, metadata)
        elif field == "history":
            value = _value(legacy, field, current)
            if value is current and isinstance(current, list):
                value = [_history_out(legacy, i, e) for i, e in enumerate(current)]
        else:
            value = _value(legacy, field, current)
        if field in in_metadata:
            metadata[field] = value
        else:
            out[field] = value
    out.update(extras)
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = ordered(out["metadata"], legacy.get("metadata_order"))
    return json.dumps(ordered(out, legacy.get("order")))


def export_execution(doc: dict[str, Any]) -> str:
    """An ExecutionResult document as the original code's JSON string."""
    metadata = dict(doc.get("metadata") or {})
    legacy = metadata.pop(LEGACY, None)
    imported = isinstance(legacy, dict)
    legacy = legacy if imported else {}
    if legacy.get("shape") == "A":
        return json.dumps(doc.get("result"))
    extras = _restore_metadata(legacy, metadata)
    absent = set(legacy.get("absent", ()))
    kept = set(legacy.get("kept", ()))
    out: dict[str, Any] = {}
    if "execution_id" not in absent:
        out["execution_id"] = legacy.get("id", doc.get("id"))
    if "result" not in absent or doc.get("result") is not None:
        out["result"] = doc.get("result")
    if "cached_at" not in absent:
        out["cached_at"] = _datetime_out(legacy, "cached_at", doc.get("created_at"), "cached_at")
    for field in EXECUTION_KNOWN:
        if field == "metadata":
            if field in kept or (not imported and metadata):
                out["metadata"] = _value(legacy, field, metadata)
            continue
        current = doc.get(field)
        if field in kept or (not imported and current is not None):
            out[field] = _value(legacy, field, current)
    out.update(extras)
    return json.dumps(out)


def export_history(doc: dict[str, Any]) -> str:
    """A flow history document as the original code's JSON string."""
    out = dict(doc)
    legacy = out.pop(LEGACY, None)
    legacy = legacy if isinstance(legacy, dict) else {}
    out.pop("schema_version", None)
    if "cached_at" in out:
        out["cached_at"] = _datetime_out(legacy, "cached_at", out["cached_at"], "cached_at")
    out.update(legacy.get("own", {}))
    return json.dumps(out)


# ---------------------------------------------------------------------- flow history

HISTORY_SOURCE = "flow_history"
"""``metadata["source"]`` of the ExecutionResult documents that hold a flow history."""


def history_prefix(session_id: str, flow_id: str) -> str:
    """The id prefix of the flow-history documents of one session on one flow."""
    digest = hashlib.blake2b(f"{session_id}\x00{flow_id}".encode(), digest_size=10).hexdigest()
    return f"history_{digest}_"


def history_id(session_id: str, flow_id: str, position: int) -> str:
    """The id of the ExecutionResult holding execution ``position`` of a flow history."""
    return f"{history_prefix(session_id, flow_id)}{position:05d}"


def execution_fields(result: Any) -> dict[str, Any]:
    """Indexed ExecutionResult fields found in a result (top level, then its ``metadata``).

    ``session_id`` / ``flow_id`` (strings), ``backend`` and ``status`` (known values or
    aliases; ``failed`` when there is an ``error`` and no status), ``error`` (a non-empty
    string), ``duration_ms`` (a finite number >= 0) and ``created_at`` (epoch seconds, from
    ``timestamp`` or ``created_at``). Anything else stays only in ``result``.
    """
    if not isinstance(result, dict):
        return {}
    sources: list[dict[str, Any]] = [result]
    inner = result.get("metadata")
    if isinstance(inner, dict):
        sources.append(inner)

    def pick(*names: str) -> Any:
        for source in sources:
            for name in names:
                value = source.get(name)
                if value is not None:
                    return value
        return None

    fields: dict[str, Any] = {}
    for name in ("session_id", "flow_id"):
        value = pick(name)
        if isinstance(value, str):
            fields[name] = value
    backend = enum_value(pick("backend"), BACKENDS)
    if backend is not None:
        fields["backend"] = backend
    status = enum_value(pick("status"), EXECUTION_STATUSES, STATUS_ALIASES)
    error = result.get("error")
    if status is None and error:
        status = "failed"
    if status is not None:
        fields["status"] = status
    if isinstance(error, str) and error:
        fields["error"] = error
    duration = pick("duration_ms")
    if (
        isinstance(duration, (int, float))
        and not isinstance(duration, bool)
        and math.isfinite(duration)
        and duration >= 0
    ):
        fields["duration_ms"] = float(duration)
    when = parse_datetime(pick("timestamp", "created_at"))
    if when is not None:
        fields["created_at"] = when
    return fields


def history_entry(
    session_id: str, flow_id: str, position: int, count: int, item: Any
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Execution ``position`` (of ``count``) of a flow history: its id, indexed fields (with
    ``session_id`` / ``flow_id`` set) and metadata. ``result`` is the item, as it is."""
    fields = execution_fields(item)
    fields["session_id"] = session_id
    fields["flow_id"] = flow_id
    metadata = {"source": HISTORY_SOURCE, "position": position, "count": count}
    return history_id(session_id, flow_id, position), fields, metadata


def history_documents(key_id: str, doc: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ExecutionResult documents (dicts) of a flow history in migration 0002's JSON shape.

    ``key_id`` is the key's ``<session_id>:<flow_id>`` part. Each document keeps, in
    ``metadata["_legacy"]``, the history record without its executions and the key, so
    :func:`history_record` rebuilds the record exactly. None when the record can't become
    documents: no executions (nothing to read; the record stays as it is), or a record that
    names no session and flow.
    """
    executions = doc.get("executions")
    session_id, flow_id = doc.get("session_id"), doc.get("flow_id")
    if not isinstance(session_id, str) or not isinstance(flow_id, str):
        if ":" not in key_id:
            return None
        session_id, flow_id = key_id.rsplit(":", 1)
    if not isinstance(executions, list) or not executions:
        return None
    record = {k: (None if k == "executions" else v) for k, v in doc.items()}
    cached_at = doc.get("cached_at")
    created = cached_at if isinstance(cached_at, (int, float)) else None
    out: list[dict[str, Any]] = []
    for position, item in enumerate(executions):
        doc_id, fields, metadata = history_entry(
            session_id, flow_id, position, len(executions), item
        )
        metadata[LEGACY] = {"history": record, "key": key_id}
        if "created_at" not in fields and created is not None:
            fields["created_at"] = created
        out.append(
            {
                "schema_version": SCHEMA_VERSION,
                "version": 1,
                "id": doc_id,
                **fields,
                "result": item,
                "metadata": metadata,
            }
        )
    return out


def history_record(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The flow history (``<session>:<flow>`` key part, record in 0002's JSON shape) that the
    ExecutionResult documents ``docs`` of one session and flow hold; None when some of them
    are missing (the record can't be rebuilt whole)."""
    if not docs:
        return None
    docs = sorted(docs, key=lambda d: _position(d))
    positions = [_position(d) for d in docs]
    counts = {d.get("metadata", {}).get("count") for d in docs}
    count = counts.pop() if len(counts) == 1 else None
    expected = count if isinstance(count, int) else len(docs)
    if positions != list(range(expected)):
        return None
    items = [d.get("result") for d in docs]
    legacies = [d.get("metadata", {}).get(LEGACY) for d in docs]
    first = legacies[0]
    if (
        isinstance(first, dict)
        and isinstance(first.get("history"), dict)
        and isinstance(first.get("key"), str)
        and all(x == first for x in legacies)
    ):
        record = dict(first["history"])
        record["executions"] = items
        return first["key"], record
    session_id, flow_id = docs[0].get("session_id"), docs[0].get("flow_id")
    record = {
        "schema_version": SCHEMA_VERSION,
        "session_id": session_id,
        "flow_id": flow_id,
        "executions": items,
        "cached_at": docs[0].get("created_at"),
    }
    return f"{session_id}:{flow_id}", record


def _position(doc: dict[str, Any]) -> int:
    position = doc.get("metadata", {}).get("position")
    return position if isinstance(position, int) and not isinstance(position, bool) else -1
