"""Property suite for the value rules, against the real server.

Every write through the API is either refused with a typed error (FlywheelStateError, or
pydantic's ValidationError where a model is built or assigned) and stores nothing, or it reads
back equal: floats within the precision the README states (RedisJSON's number parser is not
correctly rounded), everything else exactly. No find / count / iterate page fails because of
a record written through the API.

Size: 6 properties, EXAMPLES (150) examples each per run against the server (750), plus 450 for
the pure namespace property: 1,200 examples, about 30 s.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from flywheel_state import Settings, Store
from flywheel_state.errors import ConfigError, FlywheelStateError
from flywheel_state.models import Backend, HistoryEntry, Session, SessionStatus

EXAMPLES = 150
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FLOAT_REL = 4.5e-16
"""Relative precision of a stored float (README "Limits and rules")."""
FLOAT_ABS = 1e-320
"""Absolute precision near zero (subnormal magnitudes)."""

# ---------------------------------------------------------------------------------- strategies

SEPARATORS = ["\u2028", "\u2029", "\x1f", "\x00", "\x85", "\ufeff", ":", "|", "*", "\\", " "]
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
chars = st.one_of(st.characters(), st.sampled_from(SEPARATORS), surrogates)
texts = st.text(chars, max_size=12)
floats = st.one_of(
    st.floats(),  # NaN, infinities, -0.0, subnormals included
    st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e-7, 2.2250738585072014e-308]),
)
ints = st.one_of(
    st.integers(-(2**63) - 2, 2**63 + 2),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63 - 1, -(2**63), 2**64, 10**400]),
)
offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60 - 59, 23 * 60 + 59)
)
datetimes = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.just(timezone.utc), offsets)),
    st.sampled_from(
        [
            datetime.min,
            datetime.max,
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
            datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
        ]
    ),
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
hostile = st.one_of(
    st.tuples(st.integers()),
    st.frozensets(st.integers(), max_size=2),
    st.binary(max_size=3),
    datetimes,
)
free_form = st.recursive(
    st.one_of(scalars, hostile),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(texts, children, max_size=3),
        st.dictionaries(st.integers(), children, min_size=1, max_size=1),
    ),
    max_leaves=12,
)
plain_ids = st.text(
    st.sampled_from("abcXYZ019:-_./@{}|\\é\u00e9\U0001f600"), min_size=1, max_size=8
)
ids = st.one_of(
    plain_ids,
    st.text(st.sampled_from("abc:-_.*?[]{}|\\/ \t\u2028"), min_size=0, max_size=8),
    st.text(chars, min_size=1, max_size=6),
)


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


nesting = st.integers(120, 130).map(deep)
# Mostly storable values with the hostile ones mixed in, so that both outcomes are exercised.
some_floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), floats)
some_ints = st.one_of(st.integers(-(2**40), 2**40), ints)
some_ids = st.one_of(plain_ids, plain_ids, ids)

# ---------------------------------------------------------------------------------- comparison


def same(a: Any, b: Any) -> bool:
    """Equal as stored data: types kept (bool, int, float), floats within the stated precision."""
    if isinstance(a, BaseModel) and isinstance(b, BaseModel):
        return type(a) is type(b) and same(a.model_dump(), b.model_dump())
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if a == b:
            return math.copysign(1.0, a) == math.copysign(1.0, b)
        return math.isclose(a, b, rel_tol=FLOAT_REL, abs_tol=FLOAT_ABS)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def refused(exc: BaseException) -> bool:
    event(f"refused: {type(exc).__name__}")
    return isinstance(exc, (FlywheelStateError, ValidationError))


async def queries_work(store: Store, *present: str) -> None:
    """Every page and count of the namespace reads, and holds ``present``."""
    page = await store.sessions.find(limit=100)
    assert {s.id for s in page.items} >= set(present)
    walked = {s.id async for s in store.sessions.iterate(batch_size=7)}
    assert walked >= set(present)
    assert await store.sessions.count() == page.total
    await store.sessions.stats()


async def wipe(store: Store) -> None:
    await store.sessions.delete_many(await store.sessions.ids())


def build(**fields: Any) -> Session | None:
    try:
        return Session(**fields)
    except ValidationError:
        return None
    except FlywheelStateError:  # an unusable id
        return None


# ---------------------------------------------------------------------------------- properties


@SETTINGS
@given(
    id=some_ids,
    context=st.dictionaries(texts, free_form, max_size=3),
    metadata=st.one_of(st.just({}), st.dictionaries(texts, free_form, max_size=2)),
    created_at=datetimes,
    last_active=datetimes,
    total_queries=some_ints,
    total_response_time=some_floats,
    flow=st.one_of(st.none(), plain_ids, texts),
)
async def test_save_reads_back_or_is_refused(
    store: Store,
    id: str,
    context: dict[str, Any],
    metadata: dict[str, Any],
    created_at: datetime,
    last_active: datetime,
    total_queries: int,
    total_response_time: float,
    flow: str | None,
) -> None:
    session = build(
        id=id,
        backend=Backend.FLOWISE,
        context=context,
        metadata=metadata,
        created_at=created_at,
        last_active=last_active,
        total_queries=total_queries,
        total_response_time=total_response_time,
        current_flow_id=flow,
    )
    if session is None:
        event("refused: ValidationError (model)")
        return  # refused where the model is built: typed, nothing to store
    try:
        try:
            await store.sessions.save(session)
        except Exception as exc:
            assert refused(exc), repr(exc)
            assert await store.sessions.get_or_none(session.id) is None
            await queries_work(store)
            return
        event("stored")
        got = await store.sessions.get(session.id)
        assert same(got, session)
        await queries_work(store, session.id)
        if session.current_flow_id is not None:
            matched = await store.sessions.ids(flow_id=session.current_flow_id)
            assert session.id in matched
    finally:
        await wipe(store)


UPDATES = st.one_of(
    st.tuples(st.just("context"), st.dictionaries(texts, free_form, max_size=2)),
    st.tuples(st.just("metadata"), free_form),
    st.tuples(st.just("last_active"), datetimes),
    st.tuples(st.just("total_response_time"), floats),
    st.tuples(st.just("successful_queries"), ints),
    st.tuples(st.just("user_id"), st.one_of(st.none(), texts)),
    st.tuples(st.just("status"), st.one_of(st.sampled_from(list(SessionStatus)), texts)),
    st.tuples(st.just("context"), nesting.map(lambda v: {"deep": v})),
)


@SETTINGS
@given(change=UPDATES)
async def test_update_reads_back_or_changes_nothing(store: Store, change: tuple[str, Any]) -> None:
    field, value = change
    await store.sessions.save(Session(id="u1", backend=Backend.LANGFLOW, context={"k": 1}))
    before = await store.sessions.get("u1")
    try:
        try:
            await store.sessions.update("u1", **{field: value})
        except Exception as exc:
            assert refused(exc), repr(exc)
            assert same(await store.sessions.get("u1"), before)
            return
        event("stored")
        got = await store.sessions.get("u1")
        expected = before.model_copy()
        setattr(expected, field, value)  # validated as an assignment: the stored form
        assert same(getattr(got, field), getattr(expected, field))
        assert got.version == before.version + 1
        await queries_work(store, "u1")
    finally:
        await wipe(store)


ENTRIES = st.fixed_dictionaries(
    {"role": st.one_of(st.none(), texts)},
    optional={"content": free_form, "timestamp": datetimes, "extra": free_form},
)


@SETTINGS
@given(entries=st.lists(ENTRIES, min_size=1, max_size=3), key=st.one_of(st.none(), texts))
async def test_append_history_reads_back_or_changes_nothing(
    store: Store, entries: list[dict[str, Any]], key: str | None
) -> None:
    await store.sessions.save(Session(id="h1", backend=Backend.CUSTOM))
    before = await store.sessions.get("h1")
    try:
        try:
            await store.sessions.append_history("h1", *entries, idempotency_key=key)
        except Exception as exc:
            assert refused(exc), repr(exc)
            assert same(await store.sessions.get("h1"), before)
            return
        event("stored")
        got = await store.sessions.get("h1")
        assert len(got.history) == len(entries)
        for stored, entry in zip(got.history, entries, strict=True):
            expected = HistoryEntry.model_validate(entry)
            if expected.timestamp is None:
                expected.timestamp = stored.timestamp  # stamped by the write
            assert same(stored, expected)
        assert got.total_queries == 1
        if key is not None:  # the same key again applies nothing
            assert await store.sessions.append_history("h1", *entries, idempotency_key=key)
            assert len((await store.sessions.get("h1")).history) == len(entries)
        await queries_work(store, "h1")
    finally:
        await wipe(store)


FILTER_VALUES = st.one_of(
    plain_ids,
    texts,
    st.lists(st.one_of(plain_ids, texts), max_size=2),
    st.sampled_from(["flowise", "active", "x", " x "]),
    datetimes,
    ints,
    floats,
    st.none(),
)


@SETTINGS
@given(
    name=st.sampled_from(
        ["flow_id", "user_id", "backend", "status", "active_after", "created_before"]
    ),
    value=FILTER_VALUES,
)
async def test_filters_answer_or_refuse_with_a_typed_error(
    store: Store, name: str, value: Any
) -> None:
    await store.sessions.save(Session(id="f1", backend=Backend.FLOWISE, current_flow_id="x"))
    try:
        try:
            total = await store.sessions.count(**{name: value})
        except Exception as exc:
            assert refused(exc), repr(exc)
            return
        event("answered")
        page = await store.sessions.find(limit=10, **{name: value})
        assert page.total == total
        assert [s.id async for s in store.sessions.iterate(**{name: value})] == [
            s.id for s in page.items
        ]
    finally:
        await wipe(store)


@SETTINGS
@given(id=ids)
async def test_hostile_ids_are_refused_or_address_exactly_one_record(store: Store, id: str) -> None:
    try:
        key = store.sessions.key(id)
    except FlywheelStateError:
        with pytest.raises(FlywheelStateError):
            await store.sessions.get(id)
        return
    assert key == f"{store.namespace}:session:{id}"
    try:
        await store.sessions.save(Session(id=id, backend=Backend.FLOWISE))
        assert [s.id for s in (await store.sessions.find()).items] == [id]
        assert await store.sessions.ids() == [id]
        assert await store.sessions.delete(id)
        assert await store.sessions.count() == 0
    finally:
        await wipe(store)


@settings(max_examples=EXAMPLES * 3, deadline=None, database=None)
@given(a=st.text(max_size=8), b=st.text(max_size=8), id=st.text(min_size=1, max_size=8))
def test_no_namespace_covers_another(a: str, b: str, id: str) -> None:
    try:
        first, second = Settings(namespace=a).namespace, Settings(namespace=b).namespace
    except ConfigError:
        return
    if first == second:
        return
    for kind in ("session", "execution", "_migrations"):
        key = f"{first}:{kind}:{id}"
        # No key, index or bookkeeping record of one namespace lies under the other's prefix.
        assert not key.startswith(f"{second}:")
        assert not f"{first}:{kind}:idx".startswith(f"{second}:")


# ------------------------------------------------------------ filter expressions (where=)

EXPR_TAGS = st.one_of(
    st.sampled_from(["", " ", "x", " x ", "a b", "{b}", "x|y", "-n", "@a", "*", "é", "日本", "\\"]),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=5),
)
EXPR_TIMES = [datetime(2026, 3, 1, 12, 0, s, tzinfo=timezone.utc) for s in range(4)]
_OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
}


def _tag_eq(stored: Any, wanted: list[str]) -> bool:
    trim = " \t\n\v\f\r"
    if stored is None:
        return False
    stored = stored.value if hasattr(stored, "value") else stored
    return any(stored.strip(trim) == w.strip(trim) for w in wanted)


@st.composite
def expr_leaf(draw: Any, kind: str, pool: list[str]) -> tuple[Any, Any]:
    """One comparison: (the expression, the same test in Python on a record)."""
    from flywheel_state import F

    values = st.one_of(st.sampled_from(pool), EXPR_TAGS)
    if kind == "session":
        tags = ["current_flow_id", "user_id", "flow_id"]
        ranges, missing = ["created_at", "last_active"], ["user_id", "current_flow_id"]
        enums = {"backend": [b.value for b in Backend], "status": ["pending", "active", "idle"]}
    else:
        tags = ["session_id", "flow_id"]
        ranges, missing = ["created_at", "duration_ms"], ["session_id", "flow_id", "duration_ms"]
        enums = {"status": ["completed", "failed"], "backend": [b.value for b in Backend]}
    shape = draw(st.sampled_from(["tag", "in", "enum", "range", "missing", "present"]))
    if shape in ("tag", "in"):
        name = draw(st.sampled_from(tags))
        attr = "current_flow_id" if (kind, name) == ("session", "flow_id") else name
        wanted = [draw(values)] if shape == "tag" else draw(st.lists(values, max_size=3))
        expr = F(name) == wanted[0] if shape == "tag" else F(name).is_in(wanted)
        return expr, lambda r: _tag_eq(getattr(r, attr), wanted)
    if shape == "enum":
        name = draw(st.sampled_from(sorted(enums)))
        wanted = draw(st.lists(st.sampled_from(enums[name]), min_size=1, max_size=2))
        return F(name).is_in(wanted), lambda r: _tag_eq(getattr(r, name), wanted)
    if shape == "range":
        name = draw(st.sampled_from(ranges))
        op = draw(st.sampled_from(sorted(_OPS)))
        if name == "duration_ms":
            bound: Any = draw(st.sampled_from([0, 1.5, 2, -3.0, 250.25, 1e-05]))
        else:
            bound = draw(st.sampled_from(EXPR_TIMES))
        cmp = _OPS[op]
        expr = {
            ">=": lambda f: f >= bound,
            ">": lambda f: f > bound,
            "<": lambda f: f < bound,
            "<=": lambda f: f <= bound,
            "==": lambda f: f == bound,
        }[op](F(name))

        def check(r: Any) -> bool:
            value = getattr(r, name)
            return value is not None and cmp(value, bound)

        return expr, check
    name = draw(st.sampled_from(missing))
    if shape == "missing":
        return F(name).is_missing(), lambda r: getattr(r, name) is None
    return F(name).is_present(), lambda r: getattr(r, name) is not None


def expr_tree(kind: str, pool: list[str]) -> Any:
    def extend(children: Any) -> Any:
        return st.one_of(
            st.tuples(children, children).map(
                lambda ab: (ab[0][0] & ab[1][0], lambda r, a=ab[0][1], b=ab[1][1]: a(r) and b(r))
            ),
            st.tuples(children, children).map(
                lambda ab: (ab[0][0] | ab[1][0], lambda r, a=ab[0][1], b=ab[1][1]: a(r) or b(r))
            ),
            children.map(lambda a: (~a[0], lambda r, f=a[1]: not f(r))),
        )

    return st.recursive(expr_leaf(kind, pool), extend, max_leaves=6)


@st.composite
def expression_case(draw: Any, kind: str) -> tuple[str, list[Any], Any, Any, str]:
    from flywheel_state.models import ExecutionResult, ExecutionStatus

    pool = draw(st.lists(EXPR_TAGS, min_size=1, max_size=3))
    maybe = st.one_of(st.none(), st.sampled_from(pool))
    ids = draw(st.lists(st.text("aZé_-:9", min_size=1, max_size=4), max_size=10, unique=True))
    records: list[Any] = []
    for id in ids:
        if kind == "session":
            records.append(
                Session(
                    id=id,
                    backend=draw(st.sampled_from(list(Backend))),
                    status=draw(st.sampled_from(list(SessionStatus)[:3])),
                    current_flow_id=draw(maybe),
                    user_id=draw(maybe),
                    created_at=draw(st.sampled_from(EXPR_TIMES)),
                    last_active=draw(st.sampled_from(EXPR_TIMES)),
                )
            )
        else:
            records.append(
                ExecutionResult(
                    id=id,
                    session_id=draw(maybe),
                    flow_id=draw(maybe),
                    backend=draw(st.one_of(st.none(), st.sampled_from(list(Backend)))),
                    status=draw(
                        st.sampled_from([ExecutionStatus.COMPLETED, ExecutionStatus.FAILED])
                    ),
                    duration_ms=draw(st.one_of(st.none(), st.sampled_from([0, 1.5, 2, -3.0]))),
                    created_at=draw(st.sampled_from(EXPR_TIMES)),
                )
            )
    expr, check = draw(expr_tree(kind, pool))
    sorts = ["last_active", "-created_at"] if kind == "session" else ["duration_ms", "-created_at"]
    return kind, records, expr, check, draw(st.sampled_from(sorts))


def _brute_order(records: list[Any], attr: str, descending: bool) -> list[str]:
    present = sorted((r for r in records if getattr(r, attr) is not None), key=lambda r: r.id)
    present.sort(key=lambda r: getattr(r, attr), reverse=descending)
    missing = sorted((r for r in records if getattr(r, attr) is None), key=lambda r: r.id)
    return [r.id for r in present + missing]


@SETTINGS
@given(case=st.one_of(expression_case("session"), expression_case("execution")))
async def test_filter_expressions_equal_brute_force(
    store: Store, case: tuple[str, list[Any], Any, Any, str]
) -> None:
    kind, records, expr, check, sort = case
    repo: Any = store.sessions if kind == "session" else store.executions
    await repo.save_many(records)
    try:
        attr = sort.lstrip("-")
        want = _brute_order([r for r in records if check(r)], attr, sort.startswith("-"))
        assert await repo.count(where=expr) == len(want)
        page = await repo.find(where=expr, sort=sort, limit=4, offset=1)
        assert [r.id for r in page.items] == want[1:5]
        assert page.total == len(want)
        assert await repo.ids(where=expr, sort=sort) == want
        assert [r.id async for r in repo.iterate(where=expr, sort=sort, batch_size=3)] == want
        assert (await repo.stats(where=expr)).total == len(want)
        # NOT of the expression is the complement, in the same query language.
        assert await repo.count(where=~expr) == len(records) - len(want)
    finally:
        await repo.delete_many([r.id for r in records])
        await wipe(store)


@pytest.mark.unit
@pytest.mark.parametrize("year", [1690, 1697, 1698, 2000, 2241, 2242, 2243, 2250, 2255, 2300])
def test_a_datetime_reads_back_as_it_was_built_whatever_the_year(year: int) -> None:
    """What you read is what you built: the model holds the stored precision, so a trip
    through the stored JSON (epoch seconds, a double) gives the same datetime back."""
    for us in range(1, 400, 7):
        built = HistoryEntry(
            role="user",
            content="x",
            timestamp=datetime(year, 3, 1, 0, 0, 0, us, tzinfo=timezone.utc),
        )
        back = HistoryEntry.model_validate_json(built.model_dump_json())
        assert back.timestamp == built.timestamp, (year, us)
