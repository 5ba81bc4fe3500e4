"""One rule for every value: a write is refused with a typed error and stores nothing, or it
reads back equal (defects 1, 2 and 3 of the hardening issue)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from flywheel_state import Store
from flywheel_state.errors import InvalidQueryError
from flywheel_state.models import Backend, ExecutionResult, HistoryEntry, Session
from flywheel_state.models._types import MAX_DATETIME, MIN_DATETIME

PLUS_ONE = timezone(timedelta(hours=1))
MINUS_FIVE = timezone(timedelta(hours=-5))


def _session(id: str = "s1", **fields: Any) -> Session:
    return Session(id=id, backend=Backend.FLOWISE, **fields)


# ------------------------------------------------------------------ defect 1: accepted, unreadable


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_in_typed_fields(bad: float) -> None:
    with pytest.raises(ValidationError):
        _session(total_response_time=bad)
    with pytest.raises(ValidationError):
        ExecutionResult(id="e1", duration_ms=bad)
    s = _session()
    with pytest.raises(ValidationError):
        s.total_response_time = bad


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("total_response_time", math.inf),
        ("total_response_time", math.nan),
        ("total_queries", 2**64),
    ],
)
async def test_update_refuses_what_the_model_refuses(store: Store, field: str, bad: Any) -> None:
    await store.sessions.save(_session("s1"))
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("s1", **{field: bad})
    assert (await store.sessions.get("s1")).version == 1


@pytest.mark.parametrize("bad", [2**63, 2**64, -(2**63) - 1, 10**400])
def test_integers_beyond_int64_are_refused_in_typed_fields(bad: int) -> None:
    with pytest.raises(ValidationError):
        _session(successful_queries=bad)
    with pytest.raises(ValidationError):
        _session(total_queries=bad)


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, 2**63, 10**400, (1, 2), {1, 2}, b"raw", {1: "int key"}, datetime.now()],
)
async def test_free_form_values_that_would_not_read_back_are_refused(
    store: Store, bad: Any
) -> None:
    await store.sessions.save(_session("kept", context={"ok": 1}))
    with pytest.raises(InvalidQueryError):
        await store.sessions.save(_session("s1", context={"x": {"deep": [bad]}}))
    assert await store.sessions.get_or_none("s1") is None
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("kept", metadata={"x": bad})
    with pytest.raises(InvalidQueryError):
        await store.sessions.append_history("kept", {"role": "user", "content": {"x": bad}})
    with pytest.raises(InvalidQueryError):
        await store.executions.save(ExecutionResult(id="e1", result=[bad]))
    assert await store.executions.get_or_none("e1") is None
    kept = await store.sessions.get("kept")
    assert kept.context == {"ok": 1} and kept.metadata == {} and kept.history == []
    assert kept.version == 1


async def test_plain_json_values_read_back_equal(store: Store) -> None:
    value = {
        "floats": [-0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e20],
        "ints": [2**63 - 1, -(2**63), 0],
        "text": "\u2028\u2029\x00\ufeff\U0001f600 \"'\\",
        "nested": {"a": [{"b": None, "c": True}]},
    }
    await store.sessions.save(_session(context=value))
    got = await store.sessions.get("s1")
    assert got.context == value
    assert math.copysign(1.0, got.context["floats"][0]) == -1.0


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize("bad", [_nested(130), {"n": 10**400}])
async def test_save_and_update_refuse_the_same_bad_value_with_the_same_error(
    store: Store, bad: dict[str, Any]
) -> None:
    with pytest.raises(InvalidQueryError):
        await store.sessions.save(_session("s1", context=bad))
    await store.sessions.save(_session("s2"))
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("s2", context=bad)
    assert await store.sessions.get_or_none("s1") is None
    assert (await store.sessions.get("s2")).version == 1


async def test_the_deepest_storable_value_round_trips_through_save_and_update(store: Store) -> None:
    deepest = _nested(125)  # the document, the context field and 125 levels: 127
    await store.sessions.save(_session("s1", context=deepest))
    assert (await store.sessions.get("s1")).context == deepest
    await store.sessions.update("s1", metadata=deepest)
    assert (await store.sessions.get("s1")).metadata == deepest
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("s1", metadata=_nested(126))


async def test_datetimes_at_both_ends_read_back_equal(store: Store) -> None:
    far = datetime(9999, 12, 31, 23, 59, 59, 999999)
    s = _session(created_at=far, last_active=datetime(1, 1, 1), updated_at=MIN_DATETIME)
    # Far from the epoch datetimes are kept to the millisecond: the model says so at once.
    assert s.created_at == MAX_DATETIME
    await store.sessions.save(s)
    got = await store.sessions.get("s1")
    assert got.created_at == MAX_DATETIME and got.last_active == MIN_DATETIME
    page = await store.sessions.find(sort="created_at")
    assert [x.created_at for x in page.items] == [MAX_DATETIME]
    assert [x.id async for x in store.sessions.iterate()] == ["s1"]
    near = datetime(2031, 5, 6, 7, 8, 9, 123457, tzinfo=timezone.utc)
    await store.sessions.update("s1", last_active=near)
    assert (await store.sessions.get("s1")).last_active == near


# ------------------------------------------------------------------ defect 2: untyped exceptions

EDGES = [datetime(1, 1, 1, tzinfo=PLUS_ONE), datetime(9999, 12, 31, 23, 0, tzinfo=MINUS_FIVE)]


@pytest.mark.parametrize("edge", EDGES)
async def test_datetimes_leaving_the_range_in_utc_are_typed_errors(
    store: Store, edge: datetime
) -> None:
    with pytest.raises(ValidationError):
        _session(last_active=edge)
    with pytest.raises(ValidationError):
        HistoryEntry(timestamp=edge)
    await store.sessions.save(_session("s1"))
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("s1", last_active=edge)
    with pytest.raises(InvalidQueryError):
        await store.sessions.append_history("s1", {"role": "user", "timestamp": edge})
    assert (await store.sessions.get("s1")).version == 1


async def test_filters_take_any_datetime_as_a_bound(store: Store) -> None:
    await store.sessions.save(_session("s1"))
    assert await store.sessions.count(active_after=EDGES[0]) == 1
    assert await store.sessions.count(active_before=EDGES[1]) == 1
    assert await store.sessions.count(active_before=EDGES[0]) == 0
    page = await store.sessions.find(created_after=EDGES[0], created_before=EDGES[1])
    assert [x.id for x in page.items] == ["s1"]


@pytest.mark.parametrize("bad", ["\ud800", "ok\udfffok", ["a", "\ud83d"]])
async def test_lone_surrogates_in_filter_values_are_typed_errors(store: Store, bad: Any) -> None:
    with pytest.raises(InvalidQueryError, match="surrogate"):
        await store.sessions.count(flow_id=bad)
    with pytest.raises(InvalidQueryError, match="surrogate"):
        await store.executions.find(session_id=bad)


# ------------------------------------------------------------------ defect 3: counters wrap


@pytest.mark.parametrize(
    ("start", "expected"),
    [(2**63 - 1, 2**63 - 1), (2**63 - 2, 2**63 - 1), (10**17, 10**17 + 1), (41, 42)],
)
async def test_append_history_counters_saturate_instead_of_wrapping(
    store: Store, start: int, expected: int
) -> None:
    await store.sessions.save(_session("s1", total_queries=start))
    await store.sessions.append_history("s1", HistoryEntry(role="user", content="hi"))
    got = await store.sessions.get("s1")
    assert got.total_queries == expected
    assert len(got.history) == 1
