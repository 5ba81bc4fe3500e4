"""Indexed queries over a repository's RediSearch index: find, count, ids, iterate, stats.

Every query goes through the alias ``{namespace}:{kind}:idx`` (never SCAN) with DIALECT 2.
Filters are data, never query syntax: TAG values are escaped character by character, numeric
bounds are checked to be numbers or datetimes and formatted here, and anything else is an
:class:`~flywheel_state.errors.InvalidQueryError` naming the parameter.

Semantics shared by every repository (documented once here, relied on by the tests):

* **TAG filters** (``backend``, ``status``, ``flow_id``, ``user_id``, ``session_id``) take one
  value or a collection of values (list, tuple, set, frozenset) and match any of them. Matching
  is exact and case-sensitive, except that leading and trailing spaces are ignored on both sides
  (RediSearch trims them when it indexes a TAG value, so ``" x"`` and ``"x"`` are the same tag).
  The empty string is a value like any other: it matches documents whose field is ``""`` (or
  only spaces). An empty collection matches nothing. ``None`` is rejected: a JSON ``null`` is
  not indexed, so the index cannot tell "null" apart from "has no value" reliably.
* **Enum filters** (``backend``, ``status``) accept enum members or their string values.
* **Range filters** are half-open for time: ``*_after`` is inclusive (``>=``) and ``*_before``
  is exclusive (``<``), so consecutive windows never count a document twice. They take
  datetimes only (a naive datetime means UTC). ``min_duration_ms`` / ``max_duration_ms`` are
  both inclusive and take ints or floats (not bools, not NaN or infinities). A document whose
  field is null never matches a bound.
* **Order** is ``sort`` (a field name, ``-`` prefix for descending), then the record id
  ascending as a tie-break, so pages never repeat or skip records with equal sort values.
  Records whose sort field is null come last in either direction.
* **Pages** hold at most :data:`MAX_PAGE_SIZE` items; ``offset + limit`` may not go beyond the
  server's result window (``MAXSEARCHRESULTS``, 1,000,000 by default): walk deeper with
  :meth:`QueryMixin.iterate` or :meth:`QueryMixin.ids` with ``limit=None``, which use server-side
  cursors and have no cap.
* Queries see a write as soon as it returns: RediSearch indexes JSON documents synchronously.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from redis import exceptions as redis_exc

from flywheel_state._redis import as_str, translate_errors
from flywheel_state.errors import (
    CorruptRecordError,
    FlywheelStateError,
    InvalidQueryError,
    SearchUnavailableError,
)
from flywheel_state.indexes import alias_name
from flywheel_state.models._base import Document
from flywheel_state.models._types import epoch_seconds
from flywheel_state.models.enums import Backend, ExecutionStatus, SessionStatus
from flywheel_state.repositories._gc import collector_paused

if TYPE_CHECKING:
    from flywheel_state._redis import Client

__all__ = [
    "EXECUTION_QUERIES",
    "MAX_BATCH_SIZE",
    "MAX_PAGE_SIZE",
    "QUERY_SCHEMAS",
    "SESSION_QUERIES",
    "OnCorrupt",
    "Page",
    "QueryMixin",
    "QuerySchema",
    "RangeFilter",
    "TagFilter",
]

M = TypeVar("M", bound=Document)

MAX_PAGE_SIZE = 10_000
"""The largest ``limit`` of :meth:`QueryMixin.find` and :meth:`QueryMixin.ids`."""

MAX_BATCH_SIZE = 10_000
"""The largest ``batch_size`` of :meth:`QueryMixin.iterate`."""

_DIALECT = ("DIALECT", 2)
logger = logging.getLogger("flywheel_state.repositories")

OnCorrupt = Literal["raise", "skip"]
"""What a read meeting an invalid stored document does: ``"raise"`` a CorruptRecordError naming
its key (the default), or ``"skip"`` it, logging a warning with the key and counting it in
:attr:`QueryMixin.corrupt_skipped`."""
_KEY = "@__key"
_COUNT_ALIAS = "__count"
# Characters RediSearch strips from both ends of a TAG value when it indexes it.
_TAG_TRIM = " \t\n\v\f\r"


# ---------------------------------------------------------------------------------- filter tables


@dataclass(frozen=True)
class TagFilter:
    """A filter on a TAG field: one value or a collection of values (match any).

    Attributes:
        field: The index attribute (``@field``) it reads.
        enum: When set, values must be members of this enum or their string values.
    """

    field: str
    enum: type[Enum] | None = None


@dataclass(frozen=True)
class RangeFilter:
    """One bound of a NUMERIC field.

    Attributes:
        field: The index attribute it reads.
        bound: ``"lower"`` or ``"upper"``.
        inclusive: Whether a value equal to the bound matches.
        datetimes: True: the bound is a datetime (naive means UTC); False: an int or float.
    """

    field: str
    bound: Literal["lower", "upper"]
    inclusive: bool
    datetimes: bool


@dataclass(frozen=True)
class QuerySchema:
    """What one kind of record can be filtered, sorted and counted by.

    Attributes:
        filters: Filter name (the keyword argument) to its definition.
        sort_fields: Index attributes ``sort`` may name (all SORTABLE NUMERIC).
        default_sort: The order used when ``sort`` is None (``-`` prefix: descending).
        stats_fields: Key in the :meth:`QueryMixin.stats` result to the TAG attribute counted.
    """

    filters: Mapping[str, TagFilter | RangeFilter]
    sort_fields: tuple[str, ...]
    default_sort: str
    stats_fields: Mapping[str, str] = field(default_factory=dict)


SESSION_QUERIES = QuerySchema(
    filters={
        "backend": TagFilter("backend", Backend),
        "status": TagFilter("status", SessionStatus),
        "flow_id": TagFilter("current_flow_id"),
        "user_id": TagFilter("user_id"),
        "active_after": RangeFilter("last_active", "lower", inclusive=True, datetimes=True),
        "active_before": RangeFilter("last_active", "upper", inclusive=False, datetimes=True),
        "created_after": RangeFilter("created_at", "lower", inclusive=True, datetimes=True),
        "created_before": RangeFilter("created_at", "upper", inclusive=False, datetimes=True),
    },
    sort_fields=("last_active", "created_at"),
    default_sort="-last_active",
    stats_fields={"backend": "backend", "status": "status"},
)
"""Session filters: backend, status, flow_id (current_flow_id), user_id, active/created range."""

EXECUTION_QUERIES = QuerySchema(
    filters={
        "session_id": TagFilter("session_id"),
        "flow_id": TagFilter("flow_id"),
        "backend": TagFilter("backend", Backend),
        "status": TagFilter("status", ExecutionStatus),
        "created_after": RangeFilter("created_at", "lower", inclusive=True, datetimes=True),
        "created_before": RangeFilter("created_at", "upper", inclusive=False, datetimes=True),
        "min_duration_ms": RangeFilter("duration_ms", "lower", inclusive=True, datetimes=False),
        "max_duration_ms": RangeFilter("duration_ms", "upper", inclusive=True, datetimes=False),
    },
    sort_fields=("created_at", "duration_ms"),
    default_sort="-created_at",
    stats_fields={"flow_id": "flow_id", "status": "status"},
)
"""Execution filters: session_id, flow_id, backend, status, created range, duration range."""

QUERY_SCHEMAS: dict[str, QuerySchema] = {
    "session": SESSION_QUERIES,
    "execution": EXECUTION_QUERIES,
}
"""Query schema per record kind (``model.KIND``)."""


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Page(Generic[M]):
    """One page of a query.

    Attributes:
        items: The records of this page, in order (fewer than ``limit`` on the last page).
        total: How many records match the filters in all.
        offset: The offset this page starts at.
        limit: The page size asked for.
        skipped: Keys of matching records that were not valid documents and were left out
            (only with ``on_corrupt="skip"``; ``total`` still counts them).
    """

    items: list[M]
    total: int
    offset: int
    limit: int
    skipped: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------- compiling


def _escape_tag(value: str) -> str:
    """A TAG value as query text: every ASCII character but letters and digits escaped.

    Non-ASCII characters are never query syntax (the query lexer works on bytes and treats every
    byte >= 0x80 as part of a word) and must not be escaped: a backslash before a multi-byte
    character makes the value match nothing.
    """
    if value == "":
        return '""'
    if value.isascii() and value.isalnum():
        return value  # the common case: nothing to escape
    return "".join("\\" + ch if ch.isascii() and not ch.isalnum() else ch for ch in value)


def _number(value: float) -> str:
    return repr(float(value))


def _type_name(value: object) -> str:
    return type(value).__name__


def _tag_values(name: str, spec: TagFilter, value: Any) -> list[str]:
    if value is None:
        raise InvalidQueryError(
            f"filter {name}=None is not supported: the index does not record null values, "
            f"so it cannot find records whose {name} is null"
        )
    if isinstance(value, (str, Enum)):
        raw: list[Any] = [value]
    elif isinstance(value, Collection) and not isinstance(value, (bytes, bytearray, Mapping)):
        raw = list(value)
    else:
        raise InvalidQueryError(
            f"filter {name} takes a string or a collection of strings "
            f"(list, tuple, set), got {_type_name(value)}: {value!r}"
        )
    out: list[str] = []
    for item in raw:
        text = _tag_value(name, spec, item)
        if text not in out:
            out.append(text)
    return out


_ENUM_VALUES: dict[type[Enum], tuple[str, ...]] = {}


def _enum_values(enum: type[Enum]) -> tuple[str, ...]:
    values = _ENUM_VALUES.get(enum)
    if values is None:
        values = _ENUM_VALUES[enum] = tuple(str(m.value) for m in enum)
    return values


def _tag_value(name: str, spec: TagFilter, item: Any) -> str:
    if spec.enum is not None:
        allowed = _enum_values(spec.enum)
        candidate = item.value if isinstance(item, Enum) else item
        if isinstance(candidate, str) and candidate in allowed:
            return candidate
        raise InvalidQueryError(
            f"filter {name}: {item!r} is not a {spec.enum.__name__}; "
            f"allowed values: {', '.join(allowed)}"
        )
    if item is None:
        raise InvalidQueryError(
            f"filter {name}: None is not supported (the index does not record null values)"
        )
    if isinstance(item, Enum):
        item = item.value
    if not isinstance(item, str):
        raise InvalidQueryError(
            f"filter {name} values must be strings, got {_type_name(item)}: {item!r}"
        )
    if not item.isascii():
        try:
            item.encode()
        except UnicodeEncodeError:
            raise InvalidQueryError(
                f"filter {name}: {item!r} is not valid text (a lone surrogate); stored values "
                "never hold one"
            ) from None
    # Printable text has no control character (category Cc): skip the per-character check.
    if not item.isprintable() and any(unicodedata.category(ch) == "Cc" for ch in item):
        raise InvalidQueryError(
            f"filter {name}: {item!r} contains a control character; stored values never do"
        )
    return item.strip(_TAG_TRIM)


def _bound_value(name: str, spec: RangeFilter, value: Any) -> float:
    if spec.datetimes:
        if not isinstance(value, datetime):
            raise InvalidQueryError(
                f"filter {name} takes a datetime (naive means UTC), "
                f"got {_type_name(value)}: {value!r}"
            )
        return epoch_seconds(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidQueryError(
            f"filter {name} takes an int or a float, got {_type_name(value)}: {value!r}"
        )
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise InvalidQueryError(f"filter {name} must be a finite number, got {value!r}")
    return number


@dataclass
class _Range:
    lower: float = -math.inf
    lower_inclusive: bool = True
    upper: float = math.inf
    upper_inclusive: bool = True

    def tighten(self, spec: RangeFilter, value: float) -> None:
        if spec.bound == "lower":
            if value > self.lower or (value == self.lower and not spec.inclusive):
                self.lower, self.lower_inclusive = value, spec.inclusive
        elif value < self.upper or (value == self.upper and not spec.inclusive):
            self.upper, self.upper_inclusive = value, spec.inclusive

    def empty(self) -> bool:
        if self.lower > self.upper:
            return True
        return self.lower == self.upper and not (self.lower_inclusive and self.upper_inclusive)

    def query(self, attr: str) -> str:
        lo = "-inf" if self.lower == -math.inf else _number(self.lower)
        hi = "+inf" if self.upper == math.inf else _number(self.upper)
        lo = lo if self.lower_inclusive else "(" + lo
        hi = hi if self.upper_inclusive else "(" + hi
        return f"@{attr}:[{lo} {hi}]"


def compile_filters(schema: QuerySchema, model_name: str, filters: Mapping[str, Any]) -> str | None:
    """The RediSearch query text for ``filters``, or None when they can match nothing.

    Args:
        schema: The record kind's filters.
        model_name: Used in error messages.
        filters: Filter names and values, as given to ``find`` / ``count`` / ...

    Raises:
        InvalidQueryError: An unknown filter, or a value of the wrong type.
    """
    tags: list[str] = []
    ranges: dict[str, _Range] = {}
    matches_nothing = False
    for name, value in filters.items():
        spec = schema.filters.get(name)
        if spec is None:
            raise InvalidQueryError(
                f"unknown filter {name!r} for {model_name}; "
                f"known filters: {', '.join(schema.filters)}"
            )
        if isinstance(spec, TagFilter):
            values = _tag_values(name, spec, value)
            if not values:
                matches_nothing = True
                continue
            tags.append(f"@{spec.field}:{{{' | '.join(_escape_tag(v) for v in values)}}}")
        else:
            ranges.setdefault(spec.field, _Range()).tighten(spec, _bound_value(name, spec, value))
    if matches_nothing or any(r.empty() for r in ranges.values()):
        return None
    parts = tags + [r.query(attr) for attr, r in ranges.items()]
    return " ".join(parts) if parts else "*"


def parse_sort(schema: QuerySchema, sort: str | None) -> tuple[str, bool]:
    """``(attribute, descending)`` for a ``sort`` argument (None: the schema's default).

    Raises:
        InvalidQueryError: Not a string, or not a sortable field.
    """
    text = schema.default_sort if sort is None else sort
    if not isinstance(text, str):
        raise InvalidQueryError(f"sort must be a string, got {_type_name(text)}: {text!r}")
    descending = text.startswith("-")
    attr = text[1:] if descending else text
    if attr not in schema.sort_fields:
        allowed = ", ".join(f"{f}, -{f}" for f in schema.sort_fields)
        raise InvalidQueryError(f"sort {text!r} is not supported; allowed: {allowed}")
    return attr, descending


def _check_int(name: str, value: Any, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidQueryError(f"{name} must be an int, got {_type_name(value)}: {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidQueryError(f"{name} must be {bounds}, got {value}")
    return value


def _rows(reply: Any) -> list[dict[str, Any]]:
    """The rows of an FT.AGGREGATE reply (RESP2: ``[n, [k, v, ...], ...]``) as dicts."""
    out = []
    for row in reply[1:]:
        items = list(row)
        out.append({as_str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)})
    return out


class _Unique:
    """A sort value equal to nothing: a row whose exact value does not matter."""


def _sort_value(value: Any) -> float | None:
    """A stored sort value as the index sees it: a float, or None (null, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, _Unique) or isinstance(b, _Unique):
        return a is b
    return bool(a == b)


def _key_bytes(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


# ---------------------------------------------------------------------------------- the mixin


class QueryMixin(Generic[M]):
    """Query methods shared by repositories: find, count, ids, iterate, stats.

    The filters, sort fields and stats of each record kind come from :data:`QUERY_SCHEMAS`
    (keyed by ``model.KIND``), unless a repository sets :attr:`query_schema`. See the module
    docstring for the exact semantics of every filter.
    """

    #: Overrides the schema from :data:`QUERY_SCHEMAS` when set.
    query_schema: ClassVar[QuerySchema | None] = None

    if TYPE_CHECKING:
        model: ClassVar[type[Document]]
        namespace: str

        @property
        def _client(self) -> Client: ...

        @property
        def key_prefix(self) -> str: ...

        def _decode(self, key: str, raw: bytes | str) -> M: ...

    _result_window: tuple[int | None] | None = None
    #: How many invalid stored documents reads with ``on_corrupt="skip"`` left out so far.
    corrupt_skipped: int = 0

    def _on_corrupt(self, on_corrupt: Any) -> bool:
        """True when ``on_corrupt`` says skip (validated)."""
        if on_corrupt == "skip":
            return True
        if on_corrupt == "raise":
            return False
        raise InvalidQueryError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")

    def _skipped(self, error: CorruptRecordError, where: str) -> str:
        """Record that ``error``'s record was left out of ``where``; returns its key."""
        self.corrupt_skipped += 1
        logger.warning(
            "%s: skipped %s, which does not hold a valid %s (%s)",
            where,
            error.key,
            self.model.__name__,
            error.reason,
        )
        return error.key or "?"

    #: False on a Store opened with ``search=False``: every query raises SearchUnavailableError.
    _search_enabled: bool = True

    # ------------------------------------------------------------------ helpers

    @property
    def _schema(self) -> QuerySchema:
        if not self._search_enabled:
            raise SearchUnavailableError(
                f"{self.model.__name__} queries (find/count/ids/iterate/stats) need the query "
                "engine, and this Store was opened with search=False (key-value API only)"
            )
        schema = type(self).query_schema or QUERY_SCHEMAS.get(self.model.KIND)
        if schema is None:
            raise FlywheelStateError(f"{self.model.__name__} records have no query schema")
        return schema

    @property
    def index_alias(self) -> str:
        """The index alias queries run against, ``{namespace}:{kind}:idx``."""
        return alias_name(self.namespace, self.model.KIND)

    def _compile(self, filters: Mapping[str, Any]) -> str | None:
        return compile_filters(self._schema, self.model.__name__, filters)

    def _tail(self) -> list[Any]:
        # Past the server's own TIMEOUT (500 ms by default, ON_TIMEOUT RETURN) a query silently
        # returns what it has so far: a count of 43,999 instead of 100,000, an empty GROUPBY.
        # Give the server a longer budget than the client's read timeout instead, so a slow
        # query ends as a clear client-side timeout error, never as a wrong answer.
        client: Any = self._client
        pool = getattr(client, "connection_pool", None)  # a RedisCluster has none
        kwargs = pool.connection_kwargs if pool is not None else client.get_connection_kwargs()
        timeout = kwargs.get("socket_timeout")
        ms = 0 if timeout is None else max(1000, int(float(timeout) * 2000))
        return ["TIMEOUT", ms, *_DIALECT]

    def _sort_args(self, attr: str, descending: bool) -> list[Any]:
        return ["SORTBY", 4, f"@{attr}", "DESC" if descending else "ASC", _KEY, "ASC"]

    def _id(self, key: Any) -> str:
        return as_str(key)[len(self.key_prefix) :]

    async def _window(self) -> int | None:
        """The server's result window (offset + limit cap), or None when it can't be read."""
        if self._result_window is None:
            limits: list[int] = []
            for name in ("MAXSEARCHRESULTS", "MAXAGGREGATERESULTS"):
                with translate_errors("reading the search configuration"):
                    try:
                        reply = await self._client.execute_command("FT.CONFIG", "GET", name)
                    except redis_exc.ResponseError:
                        continue  # FT.CONFIG is disabled on some managed services
                for entry in reply or []:
                    text = as_str(entry[1]) if len(entry) > 1 else ""
                    if text.isdigit():
                        limits.append(int(text))
            self._result_window = (min(limits) if limits else None,)
        return self._result_window[0]

    async def _check_window(self, offset: int, limit: int) -> int | None:
        window = await self._window()
        if window is not None and offset + limit > window:
            raise InvalidQueryError(
                f"offset + limit = {offset + limit:,} goes beyond the server's result window "
                f"of {window:,} (MAXSEARCHRESULTS): use iterate() or ids(limit=None) to walk "
                "every match with a cursor"
            )
        return window

    async def _count(self, query: str) -> int:
        with translate_errors(f"counting in {self.index_alias}"):
            reply = await self._client.execute_command(
                "FT.SEARCH", self.index_alias, query, "LIMIT", 0, 0, *self._tail()
            )
        return int(reply[0])

    async def _page(
        self, query: str, attr: str, descending: bool, offset: int, limit: int, *, docs: bool
    ) -> tuple[int, list[dict[str, Any]]]:
        """The total and the rows ``offset .. offset + limit`` in (attr, key) order."""
        window = await self._check_window(offset, limit)
        page = await self._page_by_search(query, attr, descending, offset, limit, window, docs)
        if page is None:
            page = await self._page_by_aggregate(query, attr, descending, offset, limit, docs)
        return page

    async def _page_by_search(
        self,
        query: str,
        attr: str,
        descending: bool,
        offset: int,
        limit: int,
        window: int | None,
        docs: bool,
    ) -> tuple[int, list[dict[str, Any]]] | None:
        """The page from one FT.SEARCH, its tied boundary values resolved; None: use the exact path.

        FT.SEARCH sorts on one field and breaks ties by an internal document number, not by
        key. Rows of different sort values are in the right order; only rows of one exact value
        (a tie) may be in the wrong one. The search reads one row more on each side of the page:
        when no two neighbouring rows share a sort key the page is exact as it is (one round
        trip). Otherwise :meth:`_resolve_ties` orders ties inside the page by key and reads the
        members of a tied value that straddles a page boundary with a narrow query on that one
        value, instead of sorting every match. None only for a tie of null values on a boundary.
        """
        lo = offset - 1 if offset > 0 else 0
        before = offset - lo
        after = 1 if window is None or offset + limit < window else 0
        args: list[Any] = ["FT.SEARCH", self.index_alias, query, "SORTBY", attr]
        args += ["DESC" if descending else "ASC", "LIMIT", lo, before + limit + after]
        args += ["WITHSORTKEYS", *(["RETURN", 1, "$"] if docs else ["NOCONTENT"])]
        with translate_errors(f"querying {self.index_alias}"):
            reply = await self._client.execute_command(*args, *self._tail())
        step = 3 if docs else 2
        rows: list[dict[str, Any]] = []
        sort_keys: list[Any] = []
        for i in range(1, len(reply) - step + 1, step):
            row: dict[str, Any] = {"__key": reply[i]}
            if docs:
                fields = list(reply[i + 2] or [])
                row.update({as_str(fields[j]): fields[j + 1] for j in range(0, len(fields) - 1, 2)})
            rows.append(row)
            sort_keys.append(reply[i + 1])
        total = int(reply[0])
        if not any(a == b for a, b in itertools.pairwise(sort_keys)):
            return total, rows[before : before + limit]
        # The window stops at the result window's edge: rows may follow that were not read.
        more_after = after == 0 and len(rows) == before + limit
        page = await self._resolve_ties(
            query, attr, descending, rows, sort_keys, offset, before, limit, more_after, docs
        )
        return None if page is None else (total, page)

    async def _exact_values(
        self, attr: str, rows: list[dict[str, Any]], sort_keys: list[Any], docs: bool
    ) -> list[Any]:
        """The exact sort value of each row that shares its rounded sort key with a neighbour.

        Other rows get a value of their own (``_UNIQUE`` markers never compare equal); a null
        sort value is None; a record gone since the search also gets a unique marker.
        """
        tied = [
            i
            for i, key in enumerate(sort_keys)
            if (i > 0 and sort_keys[i - 1] == key)
            or (i + 1 < len(sort_keys) and sort_keys[i + 1] == key)
        ]
        values: list[Any] = [_Unique() for _ in rows]
        if docs:
            for i in tied:
                raw = rows[i].get("$")
                if raw is None:
                    continue
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue  # decoding the page reports it
                values[i] = _sort_value(doc.get(attr) if isinstance(doc, dict) else None)
            return values
        with translate_errors(f"reading sort values in {self.index_alias}"):
            async with self._client.pipeline(transaction=False) as pipe:
                for i in tied:
                    pipe.execute_command("JSON.GET", rows[i]["__key"], f"$.{attr}")
                replies = await pipe.execute(raise_on_error=False)
        for i, reply in zip(tied, replies, strict=True):
            if isinstance(reply, (bytes, str)):
                found = json.loads(reply)
                if found:
                    values[i] = _sort_value(found[0])
        return values

    async def _resolve_ties(
        self,
        query: str,
        attr: str,
        descending: bool,
        rows: list[dict[str, Any]],
        sort_keys: list[Any],
        offset: int,
        before: int,
        limit: int,
        more_after: bool,
        docs: bool,
    ) -> list[dict[str, Any]] | None:
        """The (attr, key) page from a search window with ties in it (see _page_by_search).

        ``rows`` is the window in FT.SEARCH order: ``before`` rows (0 or 1) before the page,
        the page, and at most one row after it. A run of rows of one exact value sits at the
        same positions in FT.SEARCH order as in (attr, key) order, so a run inside the page only
        needs sorting by key. A run that also holds the row before the page puts the last
        members of its value (in key order) on this page, and a run that holds the row after it
        the first ones: one FT.AGGREGATE on ``@attr:[v v]`` reads exactly those. A run that
        covers the whole page first counts the records sorted before its value.
        """
        values = await self._exact_values(attr, rows, sort_keys, docs)
        end = min(len(rows), before + limit)
        runs: list[tuple[int, int]] = []  # [start, stop) in the window, one exact value each
        start = 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or not _same(values[i], values[start]):
                runs.append((start, i))
                start = i
        page: list[list[dict[str, Any]] | None] = []
        lookups: list[tuple[int, Any, int, int, bool]] = []  # (slot, value, skip, take, desc)
        counts: list[tuple[int, Any, int]] = []  # (slot, value, take): runs needing a rank
        for run_start, run_stop in runs:
            first, stop = max(run_start, before), min(run_stop, end)
            if first >= stop:
                continue  # the row before or after the page, in a run of its own
            from_before = run_start < before
            into_after = run_stop > end or (more_after and run_stop == end)
            if not (from_before or into_after):
                members = rows[first:stop]
                if stop - first > 1:
                    members = sorted(members, key=lambda r: _key_bytes(r["__key"]))
                page.append(members)
                continue
            value = values[run_start]
            if value is None:
                return None  # nulls can't be selected by a range: the exact path decides
            slot = len(page)
            page.append(None)
            if from_before and into_after:
                counts.append((slot, value, stop - first))
            elif from_before:
                lookups.append((slot, value, 0, stop - first, True))
            else:
                lookups.append((slot, value, 0, stop - first, False))
        if counts:
            counted = await self._ranks(query, attr, descending, [c[1] for c in counts])
            for (slot, value, take), rank in zip(counts, counted, strict=True):
                # The page starts at position `offset` and the value's first record is at
                # position `rank`: the page holds the value's members from offset - rank on.
                lookups.append((slot, value, max(0, offset - rank), take, False))
        if lookups:
            found = await self._value_members(query, attr, lookups, docs)
            for (slot, *_), members in zip(lookups, found, strict=True):
                page[slot] = members
        return [row for members in page for row in members or []]

    def _narrow(self, query: str, attr: str, low: str, high: str) -> str:
        narrow = f"@{attr}:[{low} {high}]"
        return narrow if query == "*" else f"{query} {narrow}"

    async def _ranks(
        self, query: str, attr: str, descending: bool, values: list[float]
    ) -> list[int]:
        """For each value, how many matches sort before it (counted by the server)."""
        tail = self._tail()
        with translate_errors(f"querying {self.index_alias}"):
            async with self._client.pipeline(transaction=False) as pipe:
                for value in values:
                    v = _number(value)
                    low, high = (f"({v}", "+inf") if descending else ("-inf", f"({v}")
                    narrowed = self._narrow(query, attr, low, high)
                    pipe.execute_command(
                        "FT.SEARCH", self.index_alias, narrowed, "LIMIT", 0, 0, *tail
                    )
                replies = await pipe.execute()
        return [int(reply[0]) for reply in replies]

    async def _value_members(
        self,
        query: str,
        attr: str,
        lookups: list[tuple[int, Any, int, int, bool]],
        docs: bool,
    ) -> list[list[dict[str, Any]]]:
        """For each lookup, ``take`` records of one exact value from ``skip`` on, in key order.

        ``desc`` reads them from the highest key down (the last members of the value), and
        gives them back in ascending key order.
        """
        tail = self._tail()
        with translate_errors(f"querying {self.index_alias}"):
            async with self._client.pipeline(transaction=False) as pipe:
                for _, value, skip, take, desc in lookups:
                    v = _number(value)
                    args: list[Any] = ["FT.AGGREGATE", self.index_alias]
                    args += [self._narrow(query, attr, v, v), "LOAD", 1, _KEY]
                    args += ["SORTBY", 2, _KEY, "DESC" if desc else "ASC", "MAX", skip + take]
                    args += ["LIMIT", skip, take]
                    if docs:
                        args += ["LOAD", 1, "$"]
                    pipe.execute_command(*args, *tail)
                replies = await pipe.execute()
        out: list[list[dict[str, Any]]] = []
        for (_, _, _, _, desc), reply in zip(lookups, replies, strict=True):
            members = _rows(reply)
            out.append(members[::-1] if desc else members)
        return out

    async def _page_by_aggregate(
        self, query: str, attr: str, descending: bool, offset: int, limit: int, docs: bool
    ) -> tuple[int, list[dict[str, Any]]]:
        """The page from FT.AGGREGATE sorted on (attr, key): exact, slower on many matches."""
        tail = self._tail()
        args: list[Any] = ["FT.AGGREGATE", self.index_alias, query, "LOAD", 1, _KEY]
        args += [*self._sort_args(attr, descending), "MAX", offset + limit]
        args += ["LIMIT", offset, limit]
        if docs:
            args += ["LOAD", 1, "$"]
        with translate_errors(f"querying {self.index_alias}"):
            # One MULTI, so the total and the page describe the same state of the data.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.execute_command("FT.SEARCH", self.index_alias, query, "LIMIT", 0, 0, *tail)
                pipe.execute_command(*args, *tail)
                count_reply, page_reply = await pipe.execute()
        return int(count_reply[0]), _rows(page_reply)

    async def _stream(
        self, query: str, sort: tuple[str, bool] | None, batch: int, *, docs: bool
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Batches of rows of every match, read through a server-side cursor."""
        alias = self.index_alias
        args: list[Any] = ["FT.AGGREGATE", alias, query, "LOAD", 1, _KEY]
        heap = 0
        if sort is not None:
            # A sorted cursor sorts every match on the server first. MAX sizes the server's
            # heap (allocated up front), so it is the match count plus room for records written
            # meanwhile, never a huge constant.
            total = await self._count(query)
            heap = total + max(1024, total // 4)
            window = await self._window()
            if window is not None:
                # Some server versions clamp MAX to the window; a full heap is caught below.
                heap = min(heap, window)
            if window is not None and total >= window:
                raise InvalidQueryError(
                    f"a sorted walk over {total:,} matches goes beyond the server's result "
                    f"window of {window:,} (MAXSEARCHRESULTS): pass sort=None to stream every "
                    "match unordered, or narrow the filters"
                )
            args += [*self._sort_args(*sort), "MAX", heap]
        if docs:
            args += ["LOAD", 1, "$"]
        args += ["WITHCURSOR", "COUNT", batch, *self._tail()]
        with translate_errors(f"querying {alias}"):
            reply = await self._client.execute_command(*args)
        cursor = int(reply[1])
        seen = 0
        try:
            while True:
                rows = _rows(reply[0])
                seen += len(rows)
                if rows:
                    yield rows
                if cursor == 0:
                    break
                with translate_errors(f"reading a cursor of {alias}"):
                    reply = await self._client.execute_command(
                        "FT.CURSOR", "READ", alias, cursor, "COUNT", batch
                    )
                cursor = int(reply[1])
        finally:
            if cursor:
                # If this fails, the server drops the idle cursor by itself (CURSOR_MAX_IDLE).
                with contextlib.suppress(redis_exc.RedisError, OSError):
                    await self._client.execute_command("FT.CURSOR", "DEL", alias, cursor)
        if heap and seen >= heap:
            raise FlywheelStateError(
                f"more than {heap:,} records matched while a sorted walk of {alias} ran "
                "(many were written meanwhile); some may be missing: walk again"
            )

    # ------------------------------------------------------------------ public API

    async def find(
        self,
        *,
        sort: str | None = None,
        limit: int = 50,
        offset: int = 0,
        on_corrupt: OnCorrupt = "raise",
        **filters: Any,
    ) -> Page[M]:
        """One page of the records matching ``filters``, from the index.

        Args:
            sort: Field to order by, ``-`` prefix for descending; ties are broken by id
                (ascending). None: the default (sessions ``-last_active``, executions
                ``-created_at``).
            limit: Page size, 1 to :data:`MAX_PAGE_SIZE` (10,000).
            offset: Records to skip (0 or more). An offset past the end gives an empty page
                with the right ``total``; ``offset + limit`` may not exceed the server's
                result window (MAXSEARCHRESULTS): walk further with :meth:`iterate`.
            on_corrupt: A matching stored document that is not a valid record (written by
                something else): ``"raise"`` (default) a CorruptRecordError naming its key, or
                ``"skip"`` it: the page then holds fewer items, lists the key in
                ``Page.skipped``, and a warning is logged (``flywheel_state.repositories``).
            **filters: Sessions: ``backend``, ``status``, ``flow_id``, ``user_id`` (a value or
                a collection: match any), ``active_after`` / ``created_after`` (inclusive),
                ``active_before`` / ``created_before`` (exclusive). Executions:
                ``session_id``, ``flow_id``, ``backend``, ``status``, ``created_after`` /
                ``created_before``, ``min_duration_ms`` / ``max_duration_ms`` (inclusive).

        Returns:
            The page: ``items``, ``total`` (all matches), ``offset``, ``limit``.

        Raises:
            InvalidQueryError: Unknown filter, wrong value type, bad sort, limit or offset.
            CorruptRecordError: A matching document is not a valid record (its key is in the
                message and in ``error.key``), unless ``on_corrupt="skip"``.
        """
        limit = _check_int("limit", limit, 1, MAX_PAGE_SIZE)
        offset = _check_int("offset", offset, 0, None)
        skip = self._on_corrupt(on_corrupt)
        attr, descending = parse_sort(self._schema, sort)
        query = self._compile(filters)
        if query is None:
            return Page(items=[], total=0, offset=offset, limit=limit)
        total, rows = await self._page(query, attr, descending, offset, limit, docs=True)
        skipped: list[str] = []
        items = self._decode_rows(rows, skipped if skip else None)
        return Page(items=items, total=total, offset=offset, limit=limit, skipped=tuple(skipped))

    def _decode_rows(self, rows: list[dict[str, Any]], skipped: list[str] | None) -> list[M]:
        """The rows' documents; with a ``skipped`` list, invalid ones go there instead."""
        out: list[M] = []
        with collector_paused(getattr(self, "pause_gc_in_batches", False) and len(rows) > 1):
            for row in rows:
                raw = row.get("$")
                if raw is None:  # expired or deleted between matching and loading
                    continue
                try:
                    out.append(self._decode(as_str(row["__key"]), raw))
                except CorruptRecordError as exc:
                    if skipped is None:
                        raise
                    skipped.append(self._skipped(exc, f"querying {self.index_alias}"))
        return out

    async def count(self, **filters: Any) -> int:
        """How many records match ``filters`` (same filters as :meth:`find`).

        Raises:
            InvalidQueryError: Unknown filter or wrong value type.
        """
        query = self._compile(filters)
        if query is None:
            return 0
        return await self._count(query)

    async def ids(
        self,
        *,
        sort: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        **filters: Any,
    ) -> list[str]:
        """The ids of the matching records, without loading the documents.

        Args:
            sort: As in :meth:`find`. With a ``limit``, None means the default order (so
                ``ids(limit=n)`` lists the ids of ``find(limit=n)``); with ``limit=None``,
                None means no particular order (the cheapest way to list every match).
            limit: At most this many ids (1 to :data:`MAX_PAGE_SIZE`), or None for every match
                (read through a cursor, no cap).
            offset: Matches to skip first.
            **filters: As in :meth:`find`.

        Raises:
            InvalidQueryError: Unknown filter, wrong value type, bad sort, limit or offset.
        """
        if limit is not None:
            limit = _check_int("limit", limit, 1, MAX_PAGE_SIZE)
        offset = _check_int("offset", offset, 0, None)
        order = parse_sort(self._schema, sort) if sort is not None or limit is not None else None
        query = self._compile(filters)
        if query is None:
            return []
        if limit is not None and order is not None:
            _, rows = await self._page(query, *order, offset, limit, docs=False)
            return [self._id(row["__key"]) for row in rows]
        out: list[str] = []
        skip = offset
        async for rows in self._stream(query, order, MAX_BATCH_SIZE, docs=False):
            if skip >= len(rows):
                skip -= len(rows)
                continue
            out.extend(self._id(row["__key"]) for row in rows[skip:])
            skip = 0
        return out

    def iterate(
        self,
        *,
        batch_size: int = 500,
        sort: str | None = None,
        on_corrupt: OnCorrupt = "raise",
        **filters: Any,
    ) -> AsyncIterator[M]:
        """Every matching record, read in batches through a server-side cursor.

        No result cap, and at most ``batch_size`` documents in memory at a time. Stop early
        with ``break`` (the cursor is released when the iterator is closed). A consumer must
        not pause for more than 5 minutes between batches (the server's CURSOR_MAX_IDLE).

        Args:
            batch_size: Documents per round trip (1 to :data:`MAX_BATCH_SIZE`).
            sort: As in :meth:`find` (ties broken by id); None streams in no particular order,
                which is cheapest: a sorted walk makes the server sort every match first and
                is limited to the server's result window (MAXSEARCHRESULTS).
            on_corrupt: ``"raise"`` (default) or ``"skip"``, as in :meth:`find`; skipped keys
                are logged and counted in :attr:`corrupt_skipped`, and the walk goes on.
            **filters: As in :meth:`find`.

        Raises:
            InvalidQueryError: (when called) unknown filter, wrong value type, bad sort or
                batch size; (when iterated) a sorted walk beyond the server's result window.
            CorruptRecordError: (when iterated) a matching document is not a valid record
                (named in the message and ``error.key``), unless ``on_corrupt="skip"``.
        """
        batch_size = _check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
        skip = self._on_corrupt(on_corrupt)
        order = parse_sort(self._schema, sort) if sort is not None else None
        query = self._compile(filters)
        return self._iterate(query, order, batch_size, skip)

    async def _iterate(
        self, query: str | None, order: tuple[str, bool] | None, batch_size: int, skip: bool
    ) -> AsyncIterator[M]:
        if query is None:
            return
        stream = self._stream(query, order, batch_size, docs=True)
        try:
            async for rows in stream:
                for model in self._decode_rows(rows, [] if skip else None):
                    yield model
        finally:
            await stream.aclose()

    async def stats(self) -> dict[str, dict[str, int]]:
        """Record counts per value of the kind's stats fields, from one FT.AGGREGATE.

        Sessions: ``{"backend": {...}, "status": {...}, "total": {"all": n}}``; executions:
        ``{"flow_id": {...}, "status": {...}, "total": {"all": n}}``. Enum fields list every
        member (0 when unused). Records whose field is null are counted in ``total`` only.
        Documents are not loaded into Python: the server groups and counts.
        """
        schema = self._schema
        attrs = list(schema.stats_fields.values())
        tail = self._tail()
        args: list[Any] = ["FT.AGGREGATE", self.index_alias, "*", "GROUPBY", len(attrs)]
        args += [f"@{a}" for a in attrs] + ["REDUCE", "COUNT", 0, "AS", _COUNT_ALIAS]
        with translate_errors(f"computing stats of {self.index_alias}"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.execute_command("FT.SEARCH", self.index_alias, "*", "LIMIT", 0, 0, *tail)
                pipe.execute_command(*args, *tail)
                count_reply, group_reply = await pipe.execute()
        out: dict[str, dict[str, int]] = {}
        for label in schema.stats_fields:
            spec = schema.filters.get(label)
            enum = spec.enum if isinstance(spec, TagFilter) else None
            out[label] = {str(m.value): 0 for m in enum} if enum is not None else {}
        for row in _rows(group_reply):
            n = int(as_str(row[_COUNT_ALIAS]))
            for label, attr in schema.stats_fields.items():
                value = row.get(attr)
                if value is not None:
                    key = as_str(value)
                    out[label][key] = out[label].get(key, 0) + n
        out["total"] = {"all": int(count_reply[0])}
        return out
