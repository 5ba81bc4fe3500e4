"""How the compat layer maps the original's values to the current models (no I/O here).

Sessions come as flywheel_state ``Session`` objects, as dataclasses with the original
``UniversalSession`` fields (Enum members for backend and status), or as dicts in either legacy
shape (legacy-data.md); execution results are free-form values. The rules are the legacy
codec's (:mod:`flywheel_state.migrations.legacy_codec`, imported on first use so this module
imports without the redis package), the ones migration 0002 applies: nothing is dropped, values
the models can't hold as given (an unknown status or backend, a text that is not a date) are
stored as a known value with the original kept in ``metadata["_legacy"]``. This module adds
what only the live API needs: the caller's Python values as JSON data, the models' tag and
datetime checks, glob patterns and paging arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from flywheel_state.errors import FlywheelStateError, InvalidIdError, InvalidQueryError

if TYPE_CHECKING:
    from flywheel_state.models import ExecutionResult, Session

__all__ = [
    "check_paging",
    "execution_from",
    "glob_regex",
    "history_entry",
    "history_prefix",
    "json_safe",
    "make_json_safe",
    "plain",
    "readable_session",
    "result_fields",
    "session_from",
]

_DROPPED_KEYS = ("schema_version", "version", "pk")


@functools.cache
def _adapter(kind: str) -> Any:
    """A cached pydantic TypeAdapter for the models' ``datetime`` or ``tag`` field type."""
    from pydantic import TypeAdapter

    from flywheel_state.models._types import TagStr, UtcDatetime

    return TypeAdapter(UtcDatetime if kind == "datetime" else TagStr)


def plain(value: Any) -> Any:
    """An Enum member's value (or name when the value is not a string); anything else as is."""
    if isinstance(value, Enum):
        return value.value if isinstance(value.value, str) else value.name
    return value


def _as_mapping(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        # The original code set ``session.metadata`` as a plain attribute on the dataclass.
        extra = getattr(obj, "__dict__", {})
        for key, value in extra.items():
            data.setdefault(key, value)
        return data
    if hasattr(obj, "__dict__") and hasattr(obj, "id"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    raise TypeError(
        "save_session() takes a flywheel_state Session, a UniversalSession-like dataclass or "
        f"a dict, got {type(obj).__name__}"
    )


def _jsonable(value: Any, depth: int = 0) -> Any:
    """The caller's value as the JSON data the original would have written (``default=str``
    for what JSON has no type for): Enum members as their value, datetime fields in ISO (nested
    datetimes as ``str``), models and dataclasses as dicts."""
    from pydantic import BaseModel

    if depth > 200:
        return value  # json_safe reports it
    if isinstance(value, Enum):
        return plain(value)
    if isinstance(value, datetime) and depth == 1:  # a field: as the original's isoformat()
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = _as_mapping(value)
    if isinstance(value, Mapping):
        return {k: _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return value


def session_from(obj: Any, notes: list[str], *, session_id: str | None = None) -> Session:
    """Map a Session, a UniversalSession-like object or a dict (both legacy shapes) to Session.

    Everything but a Session goes through the legacy codec
    (:mod:`flywheel_state.migrations.legacy_codec`), the mapping migration 0002 uses: the same
    input gives the same document on both paths. Values that can't be mapped are kept, never
    dropped: an unknown status or backend is stored as a known one with the original in
    ``metadata["_legacy"]["raw"]``, unknown fields go into ``metadata`` under their own names.
    ``notes`` receives a line per such value.

    Raises:
        InvalidIdError: The session has no usable id.
        ValueError: A value can't be stored even as JSON text, or the session can't be mapped.
        TypeError: ``obj`` is not a session of a known kind.
    """
    from flywheel_state.migrations.legacy_codec import import_session, stored_now
    from flywheel_state.models import Session

    if isinstance(obj, Session):
        return obj
    data = _as_mapping(obj)
    # A dict of the current model's dump: its bookkeeping is the repository's, not data.
    for key in _DROPPED_KEYS:
        data.pop(key, None)
    if session_id is None:
        session_id = plain(data.get("id"))
    if not isinstance(session_id, str):
        raise InvalidIdError(f"a session needs a string id, got {session_id!r}")
    prepared = json_safe(_jsonable(data))
    rewrite = import_session(f"session:{session_id}", session_id, prepared, stored_now())
    if rewrite.value is None:
        raise ValueError("; ".join(p.message for p in rewrite.problems))
    notes.extend(p.message for p in rewrite.problems)
    return Session.model_validate_json(rewrite.value)


def json_safe(value: Any) -> Any:
    """``value`` as the original stored it: JSON with ``default=str`` for anything else.

    Raises:
        ValueError: Not even that can store it: a value that contains itself, a key that is not
            a string or a number, nesting deeper than the interpreter's recursion limit, or a
            lone surrogate.
    """
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
        text.encode()  # a lone surrogate: it can't be sent to Redis either
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"a value can't be stored as JSON: {exc}") from exc
    return json.loads(text)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching exactly what Redis's glob ``pattern`` matches (KEYS / SCAN MATCH)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            parts: list[str] = []
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    parts.append(re.escape(pattern[j + 1]))
                    j += 2
                elif j + 2 < n and pattern[j + 1] == "-":  # as Redis: "[a-]]" is a to "]"
                    lo, hi = sorted((pattern[j], pattern[j + 2]))
                    parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    j += 3
                else:
                    parts.append(re.escape(pattern[j]))
                    j += 1
            if parts:
                out.append(f"[{'^' if negate else ''}{''.join(parts)}]")
            else:
                out.append("." if negate else "(?!)")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def check_paging(limit: int | None, offset: int) -> None:
    """Check list paging arguments.

    Raises:
        InvalidQueryError: ``limit`` is not a positive integer or None, or ``offset`` is not a
            non-negative integer.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidQueryError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidQueryError(f"offset must be a non-negative integer, got {offset!r}")


def make_json_safe(model: Session | ExecutionResult) -> None:
    """Make the free-form parts of ``model`` JSON-safe in place (see :func:`json_safe`).

    Raises:
        ValueError: A value can't be stored as JSON at all.
    """
    from flywheel_state.models import Session

    model.metadata = json_safe(model.metadata)
    if not isinstance(model, Session):
        model.result = json_safe(model.result)
        return
    model.context = json_safe(model.context)
    for entry in model.history:
        extra = entry.__pydantic_extra__
        if extra:
            entry.__pydantic_extra__ = json_safe(extra)
        entry.content = json_safe(entry.content)


def readable_session(session_id: str, raw: Any) -> Session | None:
    """``raw`` (a parsed value) mapped to a Session with id ``session_id``, or None."""
    if not isinstance(raw, Mapping):
        return None
    try:
        return session_from(raw, [], session_id=session_id)
    except (FlywheelStateError, ValueError, TypeError):
        return None


def result_fields(result: Any, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Indexed ExecutionResult fields found in a result dict (top level, then ``metadata``).

    The legacy codec's rule (:func:`~flywheel_state.migrations.legacy_codec.execution_fields`),
    which migration 0002 applies too; only values the model accepts are taken, anything else
    stays only in ``result``.
    """
    from pydantic import ValidationError

    from flywheel_state.migrations.legacy_codec import execution_fields

    if not isinstance(result, Mapping):
        return {}
    fields = {k: v for k, v in execution_fields(dict(result)).items() if k not in skip}
    tag = _adapter("tag")
    for name in ("session_id", "flow_id"):
        if name in fields:
            try:
                fields[name] = tag.validate_python(fields[name])
            except ValidationError:
                del fields[name]
    if "created_at" in fields:
        try:
            fields["created_at"] = _adapter("datetime").validate_python(fields["created_at"])
        except ValidationError:
            del fields["created_at"]
    return fields


def history_entry(
    session_id: str, flow_id: str, position: int, count: int, item: Any
) -> ExecutionResult:
    """Execution ``position`` of a flow history as the ExecutionResult the legacy codec
    defines (the documents migration 0002 imports flow histories as)."""
    from flywheel_state.migrations.legacy_codec import history_entry as codec_entry

    doc_id, _, metadata = codec_entry(session_id, flow_id, position, count, item)
    fields = result_fields(item, skip=("session_id", "flow_id"))
    return execution_from(
        doc_id, item, {**fields, "session_id": session_id, "flow_id": flow_id}, metadata
    )


def history_prefix(session_id: str, flow_id: str) -> str:
    """The id prefix of the flow-history documents of one session on one flow."""
    from flywheel_state.migrations.legacy_codec import history_prefix as codec_prefix

    return codec_prefix(session_id, flow_id)


def execution_from(
    execution_id: str, result: Any, fields: dict[str, Any], metadata: dict[str, Any]
) -> ExecutionResult:
    """An ExecutionResult holding ``result`` with the indexed ``fields`` and ``metadata``."""
    from flywheel_state.models import ExecutionResult

    return ExecutionResult(id=execution_id, result=result, metadata=metadata, **fields)
