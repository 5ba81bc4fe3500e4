"""Filter types and the query compiler: what a kind's index holds, and filters as query text.

A :class:`QuerySchema` is the one declaration of what one kind of record indexes: its fields
(:class:`Indexed`: TAG or NUMERIC, sortable or not, the enum of its values, datetimes or
numbers), the keyword filters that are not plain field names (``aliases``: ``flow_id`` ->
``current_flow_id``, ``active_after`` -> ``last_active >=``), the default order and the fields
``stats()`` counts. Everything else is derived from it: the keyword filters, the sortable
fields (and the CLI's ``--sort`` choices), the live :class:`~flywheel_state.indexes.IndexSpec`.
Each repository declares its schema next to itself (``SessionRepository.query_schema``); this
module knows no kind of record.

Filters are data, never query syntax: TAG values are escaped character by character (ASCII
punctuation only: non-ASCII is never escaped), trimmed like the index trims them, refused when
they hold a control character (the TAG separator ``\\x1f`` included) or a lone surrogate;
numeric bounds are checked to be numbers or datetimes and formatted here. Every query runs with
DIALECT 2.

Expressions (:data:`F`) compose filters with ``&``, ``|`` and ``~``::

    where = (F.backend == "flowise") & ~(F.status == "completed") | F.user_id.is_missing()

They compile to the same query text the keyword filters do, node by node.
"""

from __future__ import annotations

import builtins
import math
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from flywheel_state.errors import InvalidQueryError
from flywheel_state.indexes import IndexField, IndexSpec
from flywheel_state.models._types import epoch_seconds

__all__ = [
    "Expr",
    "F",
    "FieldRef",
    "Indexed",
    "QuerySchema",
    "RangeFilter",
    "TagFilter",
    "compile_filters",
    "parse_sort",
]

# Characters RediSearch strips from both ends of a TAG value when it indexes it.
_TAG_TRIM = " \t\n\v\f\r"


# ---------------------------------------------------------------------------------- declaration


@dataclass(frozen=True)
class Indexed:
    """One indexed field of a kind of record (the JSON field and the index attribute share a name).

    Attributes:
        name: The field (``$.name`` in the document, ``@name`` in queries).
        type: ``"TAG"`` (exact strings) or ``"NUMERIC"``.
        sortable: Kept in the index for sorting (NUMERIC: ``sort`` may name it) and for
            GROUPBY (TAG: ``stats()`` reads the index instead of the documents).
        enum: TAG only: values must be members of this enum or their string values.
        datetimes: NUMERIC only: filter values are datetimes (naive means UTC), not numbers.
    """

    name: str
    type: Literal["TAG", "NUMERIC"]
    sortable: bool = False
    enum: builtins.type[Enum] | None = None
    datetimes: bool = False


@dataclass(frozen=True)
class TagFilter:
    """A keyword filter on a TAG field: one value or a collection of values (match any)."""

    field: str
    enum: type[Enum] | None = None


@dataclass(frozen=True)
class RangeFilter:
    """A keyword filter that is one bound of a NUMERIC field."""

    field: str
    bound: Literal["lower", "upper"]
    inclusive: bool
    datetimes: bool


@dataclass(frozen=True, eq=False)
class QuerySchema:
    """What one kind of record is indexed, filtered, sorted and counted by: the one declaration.

    Attributes:
        fields: The indexed fields, in index order.
        aliases: Keyword filters that are not a field name: name -> ``(field, op)`` where op is
            ``"=="`` (a TAG alias), ``">="``, ``">"``, ``"<"`` or ``"<="`` (a bound).
        default_sort: The order used when ``sort`` is None (``-`` prefix: descending).
        stats_fields: The TAG fields :meth:`stats` counts per value, in result order.
        stats_type: The dataclass ``stats()`` returns (one ``dict[str, int]`` attribute per
            stats field, plus ``total``).
    """

    fields: tuple[Indexed, ...]
    aliases: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    default_sort: str = ""
    stats_fields: tuple[str, ...] = ()
    stats_type: type[Any] | None = None

    def __post_init__(self) -> None:
        by_name = {f.name: f for f in self.fields}
        filters: dict[str, TagFilter | RangeFilter] = {}
        # A TAG field with a keyword alias is filtered by that alias only (``flow_id``, not
        # ``current_flow_id``: the keyword names predate this schema); expressions take both.
        renamed = {target for target, op in self.aliases.values() if op == "=="}
        for f in self.fields:
            if f.type == "TAG" and f.name not in renamed:
                filters[f.name] = TagFilter(f.name, f.enum)
        for name, (target, op) in self.aliases.items():
            spec = by_name[target]
            if op == "==":
                filters[name] = TagFilter(target, spec.enum)
            else:
                bound: Literal["lower", "upper"] = "lower" if op in (">=", ">") else "upper"
                filters[name] = RangeFilter(target, bound, op in (">=", "<="), spec.datetimes)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_filters", filters)

    @property
    def filters(self) -> Mapping[str, TagFilter | RangeFilter]:
        """Keyword filter name -> definition (TAG fields by name, plus the aliases)."""
        out: Mapping[str, TagFilter | RangeFilter] = self._filters  # type: ignore[attr-defined]
        return out

    def field(self, name: str) -> Indexed | None:
        """The indexed field ``name`` (or the TAG field a ``==`` alias names), or None."""
        by_name: dict[str, Indexed] = self._by_name  # type: ignore[attr-defined]
        found = by_name.get(name)
        if found is None and name in self.aliases and self.aliases[name][1] == "==":
            found = by_name[self.aliases[name][0]]
        return found

    @property
    def sort_fields(self) -> tuple[str, ...]:
        """The fields ``sort`` may name (the sortable NUMERIC ones), in declaration order."""
        return tuple(f.name for f in self.fields if f.type == "NUMERIC" and f.sortable)

    @property
    def sort_options(self) -> tuple[str, ...]:
        """Every ``sort`` value accepted: the default first, then each field both ways."""
        out = [self.default_sort]
        for name in self.sort_fields:
            for text in (f"-{name}", name):
                if text not in out:
                    out.append(text)
        return tuple(out)

    def index_spec(self, kind: str, version: int) -> IndexSpec:
        """The index these fields need, as version ``version`` of ``kind``'s index."""
        return IndexSpec(
            kind,
            version,
            tuple(IndexField(f.name, f.type, sortable=f.sortable) for f in self.fields),
        )


# ---------------------------------------------------------------------------------- expressions


class Expr:
    """A filter expression: combine with ``&`` (and), ``|`` (or), ``~`` (not)."""

    __slots__ = ()

    def __and__(self, other: Expr) -> Expr:
        return _And((self, _expr(other)))

    def __or__(self, other: Expr) -> Expr:
        return _Or((self, _expr(other)))

    def __invert__(self) -> Expr:
        return _Not(self)

    def __bool__(self) -> bool:
        raise TypeError(
            "a filter expression has no truth value: combine with &, | and ~ (not and/or/not)"
        )


def _expr(value: Any) -> Expr:
    if not isinstance(value, Expr):
        raise InvalidQueryError(
            f"filter expressions combine with other expressions, got {type(value).__name__}"
        )
    return value


@dataclass(frozen=True, eq=False)
class _And(Expr):
    parts: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class _Or(Expr):
    parts: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class _Not(Expr):
    part: Expr


@dataclass(frozen=True, eq=False)
class _Cmp(Expr):
    name: str
    op: str  # "in", ">=", ">", "<", "<=", "missing"
    value: Any = None


class FieldRef:
    """One field in an expression: ``F.status == "active"``, ``F.created_at >= t``, ...

    Comparisons build expressions; they are checked against the repository's schema when the
    query runs (an unknown field, a range on a TAG field or a value of the wrong type is an
    InvalidQueryError naming the field).
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, value: object) -> Expr:  # type: ignore[override]
        """Equal to ``value`` (TAG: exact after trimming the ends; NUMERIC: the same number)."""
        return _Cmp(self.name, "==", value)

    def __ne__(self, value: object) -> Expr:  # type: ignore[override]
        """Not equal (also true where the field is null or missing)."""
        return _Not(_Cmp(self.name, "==", value))

    def is_in(self, values: Iterable[Any]) -> Expr:
        """Equal to any of ``values`` (TAG fields; an empty collection matches nothing)."""
        if isinstance(values, Collection) and not isinstance(values, (str, bytes, Mapping)):
            values = tuple(values)  # a snapshot: the expression is immutable (and cached)
        return _Cmp(self.name, "in", values)

    def __ge__(self, value: Any) -> Expr:
        return _Cmp(self.name, ">=", value)

    def __gt__(self, value: Any) -> Expr:
        return _Cmp(self.name, ">", value)

    def __le__(self, value: Any) -> Expr:
        return _Cmp(self.name, "<=", value)

    def __lt__(self, value: Any) -> Expr:
        return _Cmp(self.name, "<", value)

    def between(self, low: Any, high: Any) -> Expr:
        """``low <= field < high`` (half-open, like the ``*_after`` / ``*_before`` filters)."""
        return _And((_Cmp(self.name, ">=", low), _Cmp(self.name, "<", high)))

    def is_missing(self) -> Expr:
        """The field is null or absent in the document."""
        return _Cmp(self.name, "missing")

    def is_present(self) -> Expr:
        """The field holds a value (not null, not absent)."""
        return _Not(_Cmp(self.name, "missing"))

    __hash__ = None  # type: ignore[assignment]


class _FieldFactory:
    """``F.<field>``: a :class:`FieldRef` for building filter expressions."""

    def __getattr__(self, name: str) -> FieldRef:
        if name.startswith("__"):
            raise AttributeError(name)
        return FieldRef(name)

    def __call__(self, name: str) -> FieldRef:
        """``F("name")``: the same as ``F.name``, for field names that are not identifiers."""
        return FieldRef(name)


F = _FieldFactory()
"""Filter expressions: ``F.backend == "flowise"``, ``F.created_at >= t``,
``F.user_id.is_missing()``, combined with ``&``, ``|`` and ``~``; pass them as ``where=`` to
find / count / ids / iterate / stats."""

Where = Expr | Mapping[str, Any] | None


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


def _tag_values(name: str, enum: type[Enum] | None, value: Any) -> list[str]:
    if value is None:
        raise InvalidQueryError(
            f"filter {name}=None is not supported: the index does not record null values, "
            f"so it cannot find records whose {name} is null (use F.{name}.is_missing())"
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
        text = _tag_value(name, enum, item)
        if text not in out:
            out.append(text)
    return out


_ENUM_VALUES: dict[type[Enum], tuple[str, ...]] = {}


def _enum_values(enum: type[Enum]) -> tuple[str, ...]:
    values = _ENUM_VALUES.get(enum)
    if values is None:
        values = _ENUM_VALUES[enum] = tuple(str(m.value) for m in enum)
    return values


def _tag_value(name: str, enum: type[Enum] | None, item: Any) -> str:
    if enum is not None:
        allowed = _enum_values(enum)
        candidate = item.value if isinstance(item, Enum) else item
        if isinstance(candidate, str) and candidate in allowed:
            return candidate
        raise InvalidQueryError(
            f"filter {name}: {item!r} is not a {enum.__name__}; "
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


def _bound_value(name: str, datetimes: bool, value: Any) -> float:
    if datetimes:
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

    def tighten(self, bound: str, inclusive: bool, value: float) -> None:
        if bound == "lower":
            if value > self.lower or (value == self.lower and not inclusive):
                self.lower, self.lower_inclusive = value, inclusive
        elif value < self.upper or (value == self.upper and not inclusive):
            self.upper, self.upper_inclusive = value, inclusive

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


def _tag_query(attr: str, values: list[str]) -> str:
    return f"@{attr}:{{{' | '.join(_escape_tag(v) for v in values)}}}"


def _compile_kwargs(schema: QuerySchema, model_name: str, filters: Mapping[str, Any]) -> str | None:
    """Keyword filters as query text ("*": everything), or None when they match nothing."""
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
            values = _tag_values(name, spec.enum, value)
            if not values:
                matches_nothing = True
                continue
            tags.append(_tag_query(spec.field, values))
        else:
            ranges.setdefault(spec.field, _Range()).tighten(
                spec.bound, spec.inclusive, _bound_value(name, spec.datetimes, value)
            )
    if matches_nothing or any(r.empty() for r in ranges.values()):
        return None
    parts = tags + [r.query(attr) for attr, r in ranges.items()]
    return " ".join(parts) if parts else "*"


# An expression compiles to query text, or to one of these two constants.
_ALL = "*"
_NOTHING = None

_BOUNDS = {
    ">=": ("lower", True),
    ">": ("lower", False),
    "<": ("upper", False),
    "<=": ("upper", True),
}


def _compile_expr(schema: QuerySchema, model_name: str, expr: Expr) -> str | None:
    if isinstance(expr, _Cmp):
        return _compile_cmp(schema, model_name, expr)
    if isinstance(expr, _Not):
        inner = _compile_expr(schema, model_name, expr.part)
        if inner is _NOTHING:
            return _ALL
        if inner == _ALL:
            return _NOTHING
        return f"-({inner})"
    if isinstance(expr, _And):
        parts: list[str] = []
        for part in expr.parts:
            text = _compile_expr(schema, model_name, part)
            if text is _NOTHING:
                # Keep checking the other parts: a bad value is an error wherever it is.
                for rest in expr.parts:
                    _compile_expr(schema, model_name, rest)
                return _NOTHING
            if text != _ALL and text not in parts:
                parts.append(text)
        if not parts:
            return _ALL
        return parts[0] if len(parts) == 1 else "(" + " ".join(parts) + ")"
    if isinstance(expr, _Or):
        alternatives: list[str] = []
        everything = False
        for part in expr.parts:
            text = _compile_expr(schema, model_name, part)
            if text == _ALL:
                everything = True
            elif text is not _NOTHING and text not in alternatives:
                alternatives.append(text)
        if everything:
            return _ALL
        if not alternatives:
            return _NOTHING
        if len(alternatives) == 1:
            return alternatives[0]
        return "(" + " | ".join(f"({a})" for a in alternatives) + ")"
    raise InvalidQueryError(f"not a filter expression: {type(expr).__name__}")


def _compile_cmp(schema: QuerySchema, model_name: str, cmp: _Cmp) -> str | None:
    spec = schema.field(cmp.name)
    if spec is None:
        known = ", ".join(f.name for f in schema.fields)
        raise InvalidQueryError(
            f"unknown field {cmp.name!r} in a filter expression for {model_name}; "
            f"indexed fields: {known}"
        )
    name, attr = cmp.name, spec.name
    if cmp.op == "missing":
        # ismissing() only sees absent fields, not JSON nulls (which a None field is stored
        # as): "missing" is "holds no value", the complement of any-value-at-all.
        if spec.type == "TAG":
            return f"-@{attr}:{{w'*'}}"
        return f"-@{attr}:[-inf +inf]"
    if spec.type == "TAG":
        if cmp.op not in ("==", "in"):
            raise InvalidQueryError(
                f"field {name} is a TAG field: compare it with == or is_in(), not {cmp.op}"
            )
        if cmp.op == "==" and not isinstance(cmp.value, (str, Enum)):
            raise InvalidQueryError(
                f"field {name} == takes a string, got {_type_name(cmp.value)}: {cmp.value!r} "
                "(use is_in() for several values, is_missing() for null)"
            )
        values = _tag_values(name, spec.enum, cmp.value)
        return _tag_query(attr, values) if values else _NOTHING
    # NUMERIC
    r = _Range()
    if cmp.op == "==":
        v = _bound_value(name, spec.datetimes, cmp.value)
        r.tighten("lower", True, v)
        r.tighten("upper", True, v)
    elif cmp.op in _BOUNDS:
        bound, inclusive = _BOUNDS[cmp.op]
        r.tighten(bound, inclusive, _bound_value(name, spec.datetimes, cmp.value))
    else:
        raise InvalidQueryError(
            f"field {name} is a NUMERIC field: compare it with ==, <, <=, > or >=, not {cmp.op}"
        )
    return _NOTHING if r.empty() else r.query(attr)


def compile_filters(
    schema: QuerySchema,
    model_name: str,
    filters: Mapping[str, Any],
    where: Where = None,
) -> str | None:
    """The RediSearch query text for keyword ``filters`` and ``where``, or None: matches nothing.

    Args:
        schema: The record kind's schema.
        model_name: Used in error messages.
        filters: Keyword filters (equality / bounds), as given to ``find`` / ``count`` / ...
        where: An expression (:data:`F`), a mapping of keyword filters (for filter names that
            would clash with an option), or None. ANDed with ``filters``.

    Raises:
        InvalidQueryError: An unknown filter or field, or a value of the wrong type.
    """
    if where is not None and not isinstance(where, Expr):
        if not isinstance(where, Mapping):
            raise InvalidQueryError(
                f"where takes a filter expression (F.field == value ...) or a mapping of "
                f"filters, got {_type_name(where)}"
            )
        both = set(where).intersection(filters)
        if both:
            raise InvalidQueryError(
                f"filter {sorted(both)[0]!r} is given both as a keyword and in where="
            )
        filters = {**where, **filters} if filters else where
        where = None
    query = _compile_kwargs(schema, model_name, filters) if filters else _ALL
    if where is None:
        return query
    expr = _compiled_expr(schema, model_name, where)
    if query is _NOTHING or expr is _NOTHING:
        return _NOTHING
    if query == _ALL:
        return expr
    if expr == _ALL:
        return query
    return f"{query} ({expr})"


def _compiled_expr(schema: QuerySchema, model_name: str, expr: Expr) -> str | None:
    """``expr`` compiled for ``schema``, remembered on the (immutable) expression itself, so a
    module-level expression reused by every call compiles once."""
    cached = expr.__dict__.get("_compiled")
    if cached is not None and cached[0] is schema:
        text: str | None = cached[1]
        return text
    text = _compile_expr(schema, model_name, expr)
    expr.__dict__["_compiled"] = (schema, text)
    return text


def parse_sort(schema: QuerySchema, sort: str | None) -> tuple[str, bool]:
    """``(attribute, descending)`` for a ``sort`` argument (None: the schema's default).

    Raises:
        InvalidQueryError: Not a string, or not a sortable field.
    """
    if sort is None or type(sort) is str:
        # Every query parses its sort: remember the answers (a schema is immutable and hashed
        # by identity; only exact strings, whose hash and equality are their text).
        key = (schema, sort)
        found = _SORTS.get(key)
        if found is None:
            found = _parse_sort(schema, sort)
            if len(_SORTS) >= 256:
                _SORTS.clear()
            _SORTS[key] = found
        return found
    return _parse_sort(schema, sort)


_SORTS: dict[tuple[QuerySchema, str | None], tuple[str, bool]] = {}


def _parse_sort(schema: QuerySchema, sort: Any) -> tuple[str, bool]:
    text = schema.default_sort if sort is None else sort
    if not isinstance(text, str):
        raise InvalidQueryError(f"sort must be a string, got {_type_name(text)}: {text!r}")
    descending = text.startswith("-")
    attr = text[1:] if descending else text
    if attr not in schema.sort_fields:
        allowed = ", ".join(f"{f}, -{f}" for f in schema.sort_fields)
        raise InvalidQueryError(f"sort {text!r} is not supported; allowed: {allowed}")
    return attr, descending
