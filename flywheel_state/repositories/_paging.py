"""The paging / cursor engine: find, count, ids, iterate and stats over a repository's index.

Every query goes through the alias ``{namespace}:{kind}:idx`` (never SCAN) with DIALECT 2. The
query text comes from :mod:`flywheel_state.repositories._filters` (the compiler); what a kind
indexes comes from the repository's own :attr:`QueryMixin.query_schema`. This module knows no
kind of record and no domain enum.

Semantics shared by every repository (documented once here, relied on by the tests):

* **TAG filters** (``backend``, ``status``, ``flow_id``, ``user_id``, ``session_id``) take one
  value or a collection of values (list, tuple, set, frozenset) and match any of them. Matching
  is exact and case-sensitive, except that leading and trailing spaces are ignored on both sides
  (RediSearch trims them when it indexes a TAG value, so ``" x"`` and ``"x"`` are the same tag).
  The empty string is a value like any other: it matches documents whose field is ``""`` (or
  only spaces). An empty collection matches nothing. ``None`` is rejected: use
  ``where=F.field.is_missing()``.
* **Enum filters** (``backend``, ``status``) accept enum members or their string values.
* **Range filters** are half-open for time: ``*_after`` is inclusive (``>=``) and ``*_before``
  is exclusive (``<``), so consecutive windows never count a document twice. They take
  datetimes only (a naive datetime means UTC). ``min_duration_ms`` / ``max_duration_ms`` are
  both inclusive and take ints or floats (not bools, not NaN or infinities). A document whose
  field is null never matches a bound.
* **Expressions** (``where=F.status == "active" | ...``) combine the same comparisons with
  and, or and not; ``where=`` also takes a mapping of keyword filters, so a filter whose name
  is also an option (``sort``, ``limit``) can be given.
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
import gc
import json
import logging
import operator
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic_core import SchemaValidator, ValidationError, core_schema
from redis import exceptions as redis_exc

from flywheel_state._redis import as_str, execute_read, reraise, translate_errors
from flywheel_state.crypto import has_envelope_marker
from flywheel_state.errors import (
    CorruptRecordError,
    FlywheelStateError,
    InvalidQueryError,
    SearchUnavailableError,
)
from flywheel_state.indexes import alias_name
from flywheel_state.models._base import Document
from flywheel_state.repositories._filters import (
    QuerySchema,
    Where,
    _number,
    _type_name,
    compile_filters,
    parse_sort,
)

if TYPE_CHECKING:
    from flywheel_state._redis import Client

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_PAGE_SIZE",
    "OnCorrupt",
    "Page",
    "QueryMixin",
    "Stats",
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
_COMPILED: dict[tuple[Any, ...], str | None] = {}
_NOT_CACHED = object()

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

    @classmethod
    def _of(cls, items: list[M], total: int, offset: int, limit: int) -> Page[M]:
        """``Page(items, total, offset, limit)`` without the frozen dataclass ``__init__`` (one
        ``object.__setattr__`` per field, about 1 us per query). The same object: the fields
        are plain instance attributes either way (a test compares the two)."""
        page = object.__new__(cls)
        page.__dict__.update(items=items, total=total, offset=offset, limit=limit, skipped=())
        return page


@dataclass(frozen=True)
class Stats:
    """Base of the typed result of :meth:`QueryMixin.stats`.

    Subclasses (``SessionStats``, ``ExecutionStats``) add one ``dict[str, int]`` attribute per
    counted field (value -> records). ``total`` counts every record, null fields included.
    ``stats["backend"]`` and ``stats["total"]["all"]`` still read like the old dict result;
    :meth:`as_dict` gives that dict (``{"backend": {...}, ..., "total": {"all": n}}``).
    """

    total: int

    def counts(self, field: str) -> dict[str, int]:
        """The per-value counts of ``field``."""
        if field == "total" or field not in {f.name for f in fields(self)}:
            raise KeyError(field)
        value: dict[str, int] = getattr(self, field)
        return value

    def as_dict(self) -> dict[str, dict[str, int]]:
        """The counts as plain JSON-ready data, ``total`` last as ``{"all": n}``."""
        out = {f.name: dict(getattr(self, f.name)) for f in fields(self) if f.name != "total"}
        out["total"] = {"all": self.total}
        return out

    def __getitem__(self, field: str) -> dict[str, int]:
        if field == "total":
            return {"all": self.total}
        return self.counts(field)

    def get(self, field: str, default: Any = None) -> Any:
        """Mapping-style read (``stats.get("status", {})``)."""
        try:
            return self[field]
        except KeyError:
            return default


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


_INVALID = object()  # a stored document that is not JSON


def _sort_value(value: Any) -> float | None:
    """A stored sort value as the index sees it: a float, or None (null, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


_SORT_READERS: dict[str, tuple[SchemaValidator, bytes]] = {}
_BEFORE_KEY = b",{ \t\n\r"  # what may precede the opening quote of an object key


def _document_sort_value(attr: str, raw: bytes | str, invalid: Any) -> Any:
    """The sort value of a stored document as json.loads would read it (``invalid`` when it
    is not JSON: decoding the page reports it).

    A tied page needs this for most of its rows, so it avoids parsing whole documents into
    Python objects. First the suffix from the last ``"attr":`` on, read as ``{`` + suffix:
    that parses as one object only when the key is a member of the top-level object (a key
    of a nested object leaves the closing braces of the outer ones as trailing data), and a
    quote after ``,`` / ``{`` / whitespace opens a string (inside a string it would be
    escaped), so the match is that key and the last one (json.loads keeps the last of
    duplicates). Otherwise the whole document, with a validator that keeps only ``attr``.
    """
    found = _SORT_READERS.get(attr)
    if found is None:
        field = core_schema.typed_dict_field(core_schema.any_schema(), required=False)
        reader = SchemaValidator(
            core_schema.typed_dict_schema({attr: field}, extra_behavior="ignore")
        )
        found = _SORT_READERS[attr] = (reader, f'"{attr}":'.encode())
    reader, marker = found
    if type(raw) is bytes:
        at = raw.rfind(marker)
        if at > 0 and raw[at - 1] in _BEFORE_KEY:
            try:
                return _sort_value(reader.validate_json(b"{" + raw[at:]).get(attr))
            except ValidationError:
                pass  # not a top-level member: read the whole document
    try:
        return _sort_value(reader.validate_json(raw).get(attr))
    except ValidationError:  # not a JSON object, or not JSON at all
        try:
            doc = json.loads(raw)
        except ValueError:
            return invalid
        return _sort_value(doc.get(attr) if isinstance(doc, dict) else None)


def _key_bytes(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


@dataclass(frozen=True)
class _StatsPlan:
    """What ``stats()`` sends and how it reads the reply, built once per schema."""

    zeros: tuple[tuple[str, dict[str, int]], ...]  # (attr, its counts before counting)
    group: tuple[Any, ...]  # the GROUPBY ... REDUCE COUNT arguments
    names: tuple[bytes, ...]  # the row field names: the attrs, then the count alias
    str_names: tuple[str, ...]  # the same, for a client that decodes replies
    stats_type: type[Stats]


_STATS_PLANS: dict[QuerySchema, _StatsPlan] = {}


def _stats_plan(schema: QuerySchema) -> _StatsPlan:
    plan = _STATS_PLANS.get(schema)
    if plan is None:
        attrs = schema.stats_fields
        zeros = []
        for attr in attrs:
            spec = schema.field(attr)
            enum = spec.enum if spec is not None else None
            zeros.append((attr, {str(m.value): 0 for m in enum} if enum is not None else {}))
        group = ("GROUPBY", len(attrs), *(f"@{a}" for a in attrs))
        str_names = (*attrs, _COUNT_ALIAS)
        plan = _StatsPlan(
            zeros=tuple(zeros),
            group=(*group, "REDUCE", "COUNT", 0, "AS", _COUNT_ALIAS),
            names=tuple(n.encode() for n in str_names),
            str_names=str_names,
            stats_type=schema.stats_type or Stats,
        )
        _STATS_PLANS[schema] = plan
    return plan


# ---------------------------------------------------------------------------------- the mixin


class QueryMixin(Generic[M]):
    """Query methods shared by repositories: find, count, ids, iterate, stats.

    The filters, sort fields and stats of each record kind come from the repository's
    :attr:`query_schema`, declared next to it. See the module docstring for the exact semantics
    of every filter.
    """

    #: What this kind of record is indexed, filtered, sorted and counted by.
    query_schema: ClassVar[QuerySchema | None] = None

    if TYPE_CHECKING:
        model: type[M]
        namespace: str

        @property
        def _client(self) -> Client: ...

        @property
        def key_prefix(self) -> str: ...

        def _decode(self, key: str, raw: bytes | str) -> M: ...

        def _validator(self) -> Callable[[bytes | str], M] | None: ...

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
        schema = type(self).query_schema
        if schema is None:
            raise FlywheelStateError(f"{self.model.__name__} records have no query schema")
        return schema

    @property
    def index_alias(self) -> str:
        """The index alias queries run against, ``{namespace}:{kind}:idx``."""
        cached = self._alias_cache
        if cached is not None and cached[0] == self.namespace:
            return cached[1]
        alias = alias_name(self.namespace, self.model.KIND)
        self._alias_cache = (self.namespace, alias)
        return alias

    _alias_cache: tuple[str, str] | None = None

    def _compile(
        self, filters: Mapping[str, Any], where: Where = None, schema: QuerySchema | None = None
    ) -> str | None:
        if schema is None:
            schema = self._schema
        if where is not None or len(filters) > 4:
            return compile_filters(schema, self.model.__name__, filters, where)
        # Plain-string keyword filters (the common admin query) compile to the same text every
        # time: remember the last few. Only exact ``str`` values: their hash and equality are
        # the value itself, so a cached text is the one compiling would give.
        for value in filters.values():
            if type(value) is not str:
                return compile_filters(schema, self.model.__name__, filters, where)
        key = (schema, *filters.items())
        cache = _COMPILED
        found = cache.get(key, _NOT_CACHED)
        if found is not _NOT_CACHED:
            return found  # type: ignore[return-value]
        query = compile_filters(schema, self.model.__name__, filters, where)
        if len(cache) >= 512:
            cache.clear()
        cache[key] = query
        return query

    def _tail(self, client: Any = None) -> list[Any]:
        # Past the server's own TIMEOUT (500 ms by default, ON_TIMEOUT RETURN) a query silently
        # returns what it has so far: a count of 43,999 instead of 100,000, an empty GROUPBY.
        # Give the server a longer budget than the client's read timeout instead, so a slow
        # query ends as a clear client-side timeout error, never as a wrong answer.
        # Computed once per client (a per-query fixed cost otherwise).
        if client is None:
            client = self._client
        cached = self._tail_cache
        if cached is not None and cached[0] is client:
            return cached[1]
        pool = getattr(client, "connection_pool", None)  # a RedisCluster has none
        kwargs = pool.connection_kwargs if pool is not None else client.get_connection_kwargs()
        timeout = kwargs.get("socket_timeout")
        ms = 0 if timeout is None else max(1000, int(float(timeout) * 2000))
        tail = ["TIMEOUT", ms, *_DIALECT]
        self._tail_cache = (client, tail)
        return tail

    _tail_cache: tuple[Any, list[Any]] | None = None

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
        client = self._client
        alias = self.index_alias
        try:
            reply = await execute_read(
                client, "FT.SEARCH", alias, query, "LIMIT", 0, 0, *self._tail(client)
            )
        except Exception as exc:
            reraise(exc, f"counting in {alias}")
        return int(reply[0])

    async def _page(
        self, query: str, attr: str, descending: bool, offset: int, limit: int, *, docs: bool
    ) -> tuple[int, list[Any], list[Any]]:
        """The total, and the keys and documents of rows ``offset .. offset + limit`` in
        (attr, key) order (a document is None when its record went away since it matched; the
        documents are all None without ``docs``)."""
        cached = self._result_window
        if cached is not None and (cached[0] is None or offset + limit <= cached[0]):
            window = cached[0]  # the common case, without awaiting the check
        else:
            window = await self._check_window(offset, limit)
        client = self._client
        alias = self.index_alias
        # FT.SEARCH sorts on one field and breaks ties by an internal document number, not by
        # key. Rows of different sort values are in the right order; only rows of one exact
        # value (a tie) may be in the wrong one. The search reads one row more on each side of
        # the page: when no two neighbouring rows share a sort key the page is exact as it is
        # (one round trip). Otherwise _resolve_ties orders ties inside the page by key and
        # reads the members of a tied value that straddles a page boundary with a narrow query
        # on that one value, instead of sorting every match.
        lo = offset - 1 if offset > 0 else 0
        before = offset - lo
        after = 1 if window is None or offset + limit < window else 0
        shape = ("RETURN", 1, "$") if docs else ("NOCONTENT",)
        try:
            reply = await execute_read(
                client, "FT.SEARCH", alias, query, "SORTBY", attr, "DESC" if descending else "ASC",
                "LIMIT", lo, before + limit + after, "WITHSORTKEYS", *shape,
                *self._tail(client),
            )  # fmt: skip
        except Exception as exc:
            reraise(exc, f"querying {alias}")
        step = 3 if docs else 2
        # reply: [total, key, sort key, [b"$", document] (docs only), key, sort key, ...]
        sort_keys = reply[2::step]
        if not any(map(operator.eq, sort_keys, sort_keys[1:])):
            first, stop = 1 + step * before, 1 + step * (before + limit)
            keys = reply[first:stop:step]
            if not docs:
                return int(reply[0]), keys, [None] * len(keys)
            # RETURN 1 $: [b"$", document]; nothing when the record went away meanwhile.
            raws = [f[1] if f else None for f in reply[first + 2 : stop + 2 : step]]
            return int(reply[0]), keys, raws
        page = await self._tied_page(
            reply, query, attr, descending, offset, before, limit, after, docs
        )
        if page is not None:
            return page
        total, rows = await self._page_by_aggregate(query, attr, descending, offset, limit, docs)
        return total, [row["__key"] for row in rows], [row.get("$") for row in rows]

    async def _tied_page(
        self,
        reply: Any,
        query: str,
        attr: str,
        descending: bool,
        offset: int,
        before: int,
        limit: int,
        after: int,
        docs: bool,
    ) -> tuple[int, list[Any], list[Any]] | None:
        """The page from an FT.SEARCH window (see :meth:`_page`) in which neighbouring rows
        share a sort key: its ties resolved, or None (a tie of null values on a boundary: the
        exact path decides)."""
        step = 3 if docs else 2
        count = (len(reply) - 1) // step
        keys = reply[1::step][:count]
        sort_keys = reply[2::step][:count]
        # RETURN 1 $: [b"$", document]; nothing when the record went away meanwhile.
        fields = reply[3::step][:count] if docs else [None] * count
        raws = [f[1] if f else None for f in fields]
        # The window stops at the result window's edge: rows may follow that were not read.
        more_after = after == 0 and count == before + limit
        page = await self._resolve_ties(
            query, attr, descending, keys, raws, sort_keys, offset, before, limit, more_after, docs
        )
        return None if page is None else (int(reply[0]), *page)

    async def _exact_values(
        self, attr: str, keys: list[Any], raws: list[Any], sort_keys: list[Any], docs: bool
    ) -> tuple[list[Any], list[bool]]:
        """The exact sort value of each row that shares its rounded sort key with a neighbour.

        Returns the values and, for each row, whether its value is known: other rows (and a
        record gone since the search, or not JSON) have a value equal to nothing. A null sort
        value is None (known).
        """
        n = len(sort_keys)
        tied = [
            i
            for i in range(n)
            if (i > 0 and sort_keys[i - 1] == sort_keys[i])
            or (i + 1 < n and sort_keys[i + 1] == sort_keys[i])
        ]
        values: list[Any] = [None] * n
        known = [False] * n
        if docs:
            for i in tied:
                raw = raws[i]
                if raw is not None:
                    value = _document_sort_value(attr, raw, _INVALID)
                    if value is not _INVALID:
                        values[i] = value
                        known[i] = True
            return values, known
        with translate_errors(f"reading sort values in {self.index_alias}"):
            async with self._client.pipeline(transaction=False) as pipe:
                for i in tied:
                    pipe.execute_command("JSON.GET", keys[i], f"$.{attr}")
                replies = await pipe.execute(raise_on_error=False)
        for i, reply in zip(tied, replies, strict=True):
            if isinstance(reply, (bytes, str)):
                found = json.loads(reply)
                if found:
                    values[i] = _sort_value(found[0])
                    known[i] = True
        return values, known

    async def _resolve_ties(
        self,
        query: str,
        attr: str,
        descending: bool,
        keys: list[Any],
        raws: list[Any],
        sort_keys: list[Any],
        offset: int,
        before: int,
        limit: int,
        more_after: bool,
        docs: bool,
    ) -> tuple[list[Any], list[Any]] | None:
        """The (attr, key) page's keys and documents from a search window with ties in it.

        ``keys`` / ``raws`` are the window in FT.SEARCH order: ``before`` rows (0 or 1) before
        the page, the page, and at most one row after it. A run of rows of one exact value sits
        at the same positions in FT.SEARCH order as in (attr, key) order, so a run inside the
        page only needs sorting by key. A run that also holds the row before the page puts the
        last members of its value (in key order) on this page, and a run that holds the row
        after it the first ones: one FT.AGGREGATE on ``@attr:[v v]`` reads exactly those. A run
        that covers the whole page first counts the records sorted before its value.
        """
        values, known = await self._exact_values(attr, keys, raws, sort_keys, docs)
        n = len(keys)
        end = min(n, before + limit)
        # Runs of two or more rows of one exact value, [start, stop) in the window: only rows
        # whose value is known (tied by sort key with a neighbour) can be in one. Every other
        # row is a run of its own and stays where FT.SEARCH put it.
        runs: list[tuple[int, int]] = []
        start = prev = -2
        for i in range(n):
            if not known[i]:
                continue
            if i != prev + 1 or values[i] != values[prev]:
                if prev > start:
                    runs.append((start, prev + 1))
                start = i
            prev = i
        if prev > start:
            runs.append((start, prev + 1))
        if more_after and end > before and not (runs and runs[-1][1] == end):
            # The window stops at the result window's edge and its last row is alone in it:
            # rows of the same value may follow, unread.
            if not known[end - 1]:
                return None  # its exact value is not known: the exact path decides
            runs.append((end - 1, end))
        segments: list[tuple[list[Any], list[Any]] | None] = []  # the page: (keys, documents)
        lookups: list[tuple[int, Any, int, int, bool]] = []  # (slot, value, skip, take, desc)
        counts: list[tuple[int, Any, int]] = []  # (slot, value, take): runs needing a rank
        done = before  # window rows before this one are in segments
        for run_start, run_stop in runs:
            first, stop = max(run_start, before), min(run_stop, end)
            if first >= stop:
                continue  # the row before or after the page, in a run of its own
            if first > done:
                segments.append((keys[done:first], raws[done:first]))
            done = stop
            from_before = run_start < before
            into_after = run_stop > end or (more_after and run_stop == end)
            if not (from_before or into_after):
                order = sorted(range(first, stop), key=lambda i: _key_bytes(keys[i]))
                segments.append(([keys[i] for i in order], [raws[i] for i in order]))
                continue
            value = values[run_start]
            if value is None:
                return None  # nulls can't be selected by a range: the exact path decides
            slot = len(segments)
            segments.append(None)
            if from_before and into_after:
                counts.append((slot, value, stop - first))
            elif from_before:
                lookups.append((slot, value, 0, stop - first, True))
            else:
                lookups.append((slot, value, 0, stop - first, False))
        if end > done:
            segments.append((keys[done:end], raws[done:end]))
        if counts:
            counted = await self._ranks(query, attr, descending, [c[1] for c in counts])
            for (slot, value, take), rank in zip(counts, counted, strict=True):
                # The page starts at position `offset` and the value's first record is at
                # position `rank`: the page holds the value's members from offset - rank on.
                lookups.append((slot, value, max(0, offset - rank), take, False))
        if lookups:
            found = await self._value_members(query, attr, lookups, docs)
            for (slot, *_), rows in zip(lookups, found, strict=True):
                segments[slot] = ([row["__key"] for row in rows], [row.get("$") for row in rows])
        out_keys: list[Any] = []
        out_raws: list[Any] = []
        for segment in segments:
            if segment is not None:
                out_keys += segment[0]
                out_raws += segment[1]
        return out_keys, out_raws

    def _narrow(self, query: str, attr: str, low: str, high: str) -> str:
        narrow = f"@{attr}:[{low} {high}]"
        return narrow if query == "*" else f"{query} {narrow}"

    async def _ranks(
        self, query: str, attr: str, descending: bool, values: list[float]
    ) -> list[int]:
        """For each value, how many matches sort before it (counted by the server)."""
        commands: list[list[Any]] = []
        for value in values:
            v = _number(value)
            low, high = (f"({v}", "+inf") if descending else ("-inf", f"({v}")
            commands.append(["FT.SEARCH", "", self._narrow(query, attr, low, high), "LIMIT", 0, 0])
        replies = await self._send(commands)
        return [int(reply[0]) for reply in replies]

    async def _send(self, commands: list[list[Any]]) -> list[Any]:
        """The replies of ``commands`` on the index (each has "" for the index name), in one
        round trip: a lone command without the cost of a pipeline."""
        client = self._client
        alias = self.index_alias
        tail = self._tail(client)
        for command in commands:
            command[1] = alias
        try:
            if len(commands) == 1:
                return [await execute_read(client, *commands[0], *tail)]
            async with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command, *tail)
                return list(await pipe.execute())
        except Exception as exc:
            reraise(exc, f"querying {alias}")

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
        commands: list[list[Any]] = []
        for _, value, skip, take, desc in lookups:
            v = _number(value)
            args: list[Any] = ["FT.AGGREGATE", "", self._narrow(query, attr, v, v), "LOAD", 1]
            args += [_KEY, "SORTBY", 2, _KEY, "DESC" if desc else "ASC", "MAX", skip + take]
            args += ["LIMIT", skip, take]
            if docs:
                args += ["LOAD", 1, "$"]
            commands.append(args)
        replies = await self._send(commands)
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
        where: Where = None,
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
            where: A filter expression built with :data:`~flywheel_state.F` (``&``, ``|``,
                ``~``, ranges, ``is_missing()``), or a mapping of keyword filters (for a filter
                name that is also an option). ANDed with the keyword filters.
            **filters: Equality and bound shorthands. Sessions: ``backend``, ``status``,
                ``flow_id``, ``user_id`` (a value or a collection: match any),
                ``active_after`` / ``created_after`` (inclusive),
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
        if type(limit) is not int or not 0 < limit <= MAX_PAGE_SIZE:
            limit = _check_int("limit", limit, 1, MAX_PAGE_SIZE)
        if type(offset) is not int or offset < 0:
            offset = _check_int("offset", offset, 0, None)
        skip = False if on_corrupt == "raise" else self._on_corrupt(on_corrupt)
        schema = self._schema
        attr, descending = parse_sort(schema, sort)
        query = self._compile(filters, where, schema)
        if query is None:
            return Page(items=[], total=0, offset=offset, limit=limit)
        total, keys, raws = await self._page(query, attr, descending, offset, limit, docs=True)
        if not skip:
            items = self._decode_docs(keys, raws, None)
            return Page._of(items, total, offset, limit)
        skipped: list[str] = []
        items = self._decode_docs(keys, raws, skipped)
        return Page(items=items, total=total, offset=offset, limit=limit, skipped=tuple(skipped))

    def _decode_rows(self, rows: list[dict[str, Any]], skipped: list[str] | None) -> list[M]:
        """The rows' documents; with a ``skipped`` list, invalid ones go there instead."""
        return self._decode_docs(
            [row["__key"] for row in rows], [row.get("$") for row in rows], skipped
        )

    def _decode_docs(self, keys: list[Any], raws: list[Any], skipped: list[str] | None) -> list[M]:
        """The documents ``raws`` of ``keys`` (None: gone since they matched, left out); with a
        ``skipped`` list, invalid ones go there instead of raising."""
        # A pause only pays on batches large enough to trigger collections (one per ~700
        # allocations, several per model); on a short page it is a fixed cost.
        if len(raws) > 16 and getattr(self, "pause_gc_in_batches", False) and gc.isenabled():
            gc.disable()
            try:
                return self._decode_all(keys, raws, skipped)
            finally:
                gc.enable()
        return self._decode_all(keys, raws, skipped)

    def _decode_all(self, keys: list[Any], raws: list[Any], skipped: list[str] | None) -> list[M]:
        out: list[M] = []
        decode = self._decode
        validate = self._validator()
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:  # expired or deleted between matching and loading
                continue
            if validate is not None and not has_envelope_marker(raw):
                try:
                    out.append(validate(raw))
                    continue
                except (ValidationError, FlywheelStateError):
                    pass  # _decode raises the CorruptRecordError naming the key
            try:
                out.append(decode(key if type(key) is str else as_str(key), raw))
            except CorruptRecordError as exc:
                if skipped is None:
                    raise
                skipped.append(self._skipped(exc, f"querying {self.index_alias}"))
        return out

    async def count(self, *, where: Where = None, **filters: Any) -> int:
        """How many records match ``filters`` and ``where`` (as in :meth:`find`).

        Raises:
            InvalidQueryError: Unknown filter or wrong value type.
        """
        query = self._compile(filters, where)
        if query is None:
            return 0
        return await self._count(query)

    async def ids(
        self,
        *,
        sort: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        where: Where = None,
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
            where: As in :meth:`find`.
            **filters: As in :meth:`find`.

        Raises:
            InvalidQueryError: Unknown filter, wrong value type, bad sort, limit or offset.
        """
        if limit is not None:
            limit = _check_int("limit", limit, 1, MAX_PAGE_SIZE)
        offset = _check_int("offset", offset, 0, None)
        order = parse_sort(self._schema, sort) if sort is not None or limit is not None else None
        query = self._compile(filters, where)
        if query is None:
            return []
        if limit is not None and order is not None:
            _, keys, _ = await self._page(query, *order, offset, limit, docs=False)
            return [self._id(key) for key in keys]
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
        where: Where = None,
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
            where: As in :meth:`find`.
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
        query = self._compile(filters, where)
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

    async def stats(self, *, where: Where = None, **filters: Any) -> Stats:
        """Record counts per value of the kind's stats fields, from one FT.AGGREGATE.

        Sessions give a ``SessionStats`` (``backend``, ``status``, ``total``), executions an
        ``ExecutionStats`` (``flow_id``, ``status``, ``total``). Enum fields list every member
        (0 when unused). Records whose field is null are counted in ``total`` only. Filters
        (keyword or ``where=``, as in :meth:`find`) narrow what is counted. Documents are not
        loaded into Python: the server groups and counts.
        """
        schema = self._schema
        query = self._compile(filters, where, schema)
        plan = _stats_plan(schema)
        out = {attr: dict(zero) for attr, zero in plan.zeros}
        total = 0
        if query is not None:
            client = self._client
            alias = self.index_alias
            tail = self._tail(client)
            try:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.execute_command("FT.SEARCH", alias, query, "LIMIT", 0, 0, *tail)
                    pipe.execute_command("FT.AGGREGATE", alias, query, *plan.group, *tail)
                    count_reply, group_reply = await pipe.execute()
            except Exception as exc:
                reraise(exc, f"computing stats of {alias}")
            # Rows: [name, value, ..., "__count", n], names in GROUPBY order; a null group
            # value is None. Counted per raw value first, decoded once per distinct value.
            tallies: list[dict[Any, int]] = [{} for _ in plan.zeros]
            names = list(plan.names)
            for row in group_reply[1:]:
                if row[0::2] != names:  # another layout (or a client that decodes replies)
                    fields = dict(zip(row[::2], row[1::2], strict=False))
                    named = plan.names if row and type(row[0]) is bytes else plan.str_names
                    row = [x for name in named for x in (name, fields.get(name))]
                n = int(row[-1])
                for tally, value in zip(tallies, row[1:-1:2], strict=False):
                    if value is not None:
                        tally[value] = tally.get(value, 0) + n
            for (attr, _), tally in zip(plan.zeros, tallies, strict=True):
                counts = out[attr]
                for value, n in tally.items():
                    key = value.decode("utf-8", "replace") if type(value) is bytes else str(value)
                    counts[key] = counts.get(key, 0) + n
            total = int(count_reply[0])
        stats_type = plan.stats_type
        result: Stats = stats_type(total=total, **out)
        return result
