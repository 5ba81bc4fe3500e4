"""Indexed queries against the real server: filters, sorts, pages, cursors, stats, safety.

The property tests compare find / count / ids with a brute-force Python filter over random
documents holding hostile strings (quotes, braces, ``@``, ``|``, ``-``, ``:``, ``*``, spaces,
unicode, the empty string).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel_state import (
    Backend,
    CorruptRecordError,
    ExecutionResult,
    ExecutionStatus,
    InvalidQueryError,
    Session,
    SessionStatus,
    Store,
)
from flywheel_state.repositories import MAX_PAGE_SIZE, Page

T0 = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)
TRIM = " \t\n\v\f\r"

HOSTILE = [
    "",
    " ",
    "plain",
    "a b",
    " lead",
    "trail ",
    'q"uote',
    "it's",
    "{brace}",
    "}",
    "@at",
    "x|y",
    "|",
    "da-sh",
    "-neg",
    "co:lon",
    "st*r",
    "*",
    "?",
    "`tick`",
    "$param",
    "(paren)",
    "[1 2]",
    "~tilde",
    "%fuzzy%",
    "back\\slash",
    "\\",
    "a,b;c.d/e",
    "=><!&^#+",
    "ünïcödé",
    "日本語",
    "é—”«»",
    "\uff5c\uff20\uff0a",  # fullwidth | @ *
    "a\u00a0b",
    "zero\u200bwidth",
    "😀",
    "Case",
    "case",
]


def session(id: str, **fields: Any) -> Session:
    data: dict[str, Any] = {
        "id": id,
        "backend": Backend.FLOWISE,
        "status": SessionStatus.ACTIVE,
        "current_flow_id": "flow",
        "created_at": T0,
        "last_active": T0,
    }
    data.update(fields)
    return Session(**data)


def execution(id: str, **fields: Any) -> ExecutionResult:
    data: dict[str, Any] = {
        "id": id,
        "session_id": "s1",
        "flow_id": "flow",
        "backend": Backend.FLOWISE,
        "status": ExecutionStatus.COMPLETED,
        "created_at": T0,
        "duration_ms": 100.0,
    }
    data.update(fields)
    return ExecutionResult(**data)


def ids_of(page: Page[Any]) -> list[str]:
    return [m.id for m in page.items]


# ---------------------------------------------------------------- brute force


def tag_matches(stored: str | None, wanted: Any) -> bool:
    """The documented TAG semantics: exact, case-sensitive, ends trimmed; None never matches."""
    if stored is None:
        return False
    values = [wanted] if isinstance(wanted, str) else list(wanted)
    return any(stored.strip(TRIM) == str(v).strip(TRIM) for v in values)


def brute_sort(records: Iterable[Any], attr: str, descending: bool) -> list[Any]:
    """Sort by ``attr`` (nulls last either way), ties broken by id ascending."""
    present = [r for r in records if getattr(r, attr) is not None]
    missing = [r for r in records if getattr(r, attr) is None]
    present.sort(key=lambda r: r.id)
    present.sort(key=lambda r: getattr(r, attr), reverse=descending)
    missing.sort(key=lambda r: r.id)
    return present + missing


# ---------------------------------------------------------------- session filters


async def test_every_session_filter(store: Store) -> None:
    repo = store.sessions
    await repo.save_many(
        [
            session(
                "a", backend=Backend.FLOWISE, status="active", current_flow_id="f1", user_id="u1"
            ),
            session(
                "b", backend=Backend.LANGFLOW, status="idle", current_flow_id="f1", user_id="u2"
            ),
            session(
                "c", backend=Backend.CUSTOM, status="completed", current_flow_id="f2", user_id="u1"
            ),
            session(
                "d", backend=Backend.FLOWISE, status="idle", current_flow_id=None, user_id=None
            ),
        ]
    )
    assert ids_of(await repo.find(backend="flowise", sort="created_at")) == ["a", "d"]
    assert ids_of(await repo.find(backend=Backend.LANGFLOW)) == ["b"]
    assert sorted(await repo.ids(status="idle")) == ["b", "d"]
    assert sorted(await repo.ids(status=SessionStatus.COMPLETED)) == ["c"]
    assert sorted(await repo.ids(flow_id="f1")) == ["a", "b"]
    assert sorted(await repo.ids(user_id="u1")) == ["a", "c"]
    # Collections match any of their values; enum members and strings mix.
    assert sorted(await repo.ids(status=["active", SessionStatus.COMPLETED])) == ["a", "c"]
    assert sorted(await repo.ids(backend={Backend.CUSTOM, "langflow"})) == ["b", "c"]
    assert sorted(await repo.ids(flow_id=("f2", "nope"))) == ["c"]
    # Filters combine with AND.
    assert await repo.ids(backend="flowise", status="idle") == ["d"]
    assert await repo.ids(flow_id="f1", user_id="u1", status="active") == ["a"]
    assert await repo.ids(flow_id="f1", user_id="u1", status="idle") == []
    assert await repo.count(backend="flowise") == 2
    assert await repo.count() == 4


async def test_time_ranges_are_half_open_and_naive_means_utc(store: Store) -> None:
    repo = store.sessions
    times = [T0 + timedelta(minutes=i) for i in range(5)]
    await repo.save_many(
        [
            session(f"s{i}", created_at=t, last_active=t + timedelta(hours=1))
            for i, t in enumerate(times)
        ]
    )
    # created_after is inclusive, created_before exclusive.
    assert sorted(await repo.ids(created_after=times[1])) == ["s1", "s2", "s3", "s4"]
    assert sorted(await repo.ids(created_before=times[3])) == ["s0", "s1", "s2"]
    assert sorted(await repo.ids(created_after=times[1], created_before=times[3])) == [
        "s1",
        "s2",
    ]
    assert await repo.ids(created_after=times[2], created_before=times[2]) == []
    assert await repo.count(created_after=times[3], created_before=times[1]) == 0
    # Microsecond precision: one microsecond after a record's time excludes it.
    assert sorted(await repo.ids(created_after=times[3] + timedelta(microseconds=1))) == ["s4"]
    # The same on last_active.
    hour = timedelta(hours=1)
    assert sorted(await repo.ids(active_after=times[3] + hour)) == ["s3", "s4"]
    assert sorted(await repo.ids(active_before=times[1] + hour)) == ["s0"]
    # A naive datetime is UTC; an aware one in another zone is converted.
    naive = times[2].replace(tzinfo=None)
    assert sorted(await repo.ids(created_after=naive)) == ["s2", "s3", "s4"]
    plus2 = timezone(timedelta(hours=2))
    assert sorted(await repo.ids(created_before=times[2].astimezone(plus2))) == ["s0", "s1"]


async def test_sorts_both_ways_with_id_tie_break(store: Store) -> None:
    repo = store.sessions
    records = [
        session(id, created_at=T0 + timedelta(seconds=c), last_active=T0 + timedelta(seconds=a))
        for id, c, a in [("b", 1, 5), ("a", 1, 3), ("d", 2, 3), ("c", 0, 9), ("e", 2, 3)]
    ]
    await repo.save_many(records)
    assert ids_of(await repo.find()) == ["c", "b", "a", "d", "e"]  # default -last_active
    assert ids_of(await repo.find(sort="-last_active")) == ["c", "b", "a", "d", "e"]
    assert ids_of(await repo.find(sort="last_active")) == ["a", "d", "e", "b", "c"]
    assert ids_of(await repo.find(sort="created_at")) == ["c", "a", "b", "d", "e"]
    assert ids_of(await repo.find(sort="-created_at")) == ["d", "e", "a", "b", "c"]
    assert await repo.ids(sort="created_at", limit=5) == ["c", "a", "b", "d", "e"]


async def test_pagination_with_ties_never_repeats_or_skips(store: Store) -> None:
    repo = store.sessions
    # 60 records over 4 distinct timestamps: many ties straddle page boundaries.
    records = [session(f"s{i:02d}", last_active=T0 + timedelta(seconds=i % 4)) for i in range(60)]
    await repo.save_many(records)
    expected = [r.id for r in brute_sort(records, "last_active", descending=True)]
    for size in (1, 7, 10, 60):
        seen: list[str] = []
        for offset in range(0, 60, size):
            page = await repo.find(limit=size, offset=offset)
            assert page.total == 60 and page.offset == offset and page.limit == size
            seen += ids_of(page)
        assert seen == expected
        ids_pages = [await repo.ids(limit=size, offset=o) for o in range(0, 60, size)]
        assert list(itertools.chain.from_iterable(ids_pages)) == expected


@pytest.mark.parametrize("step", [timedelta(seconds=7), timedelta(microseconds=1)])
async def test_pages_in_exact_order_for_distinct_and_near_equal_values(
    store: Store, step: timedelta
) -> None:
    # Written in an order unrelated to their ids or times, with a few exact ties mixed in:
    # distinct values (a page is one FT.SEARCH), values a microsecond apart (they look equal
    # in the server's rounded sort keys, so pages take the exact path) and true ties.
    repo = store.sessions
    order = [(i * 37) % 41 for i in range(41)]
    records = [
        session(f"id{(i * 13) % 41:02d}", last_active=T0 + step * (i // 2 if i > 30 else i))
        for i in order
    ]
    await repo.save_many(records)
    for sort in ("last_active", "-last_active"):
        expected = [r.id for r in brute_sort(records, "last_active", sort.startswith("-"))]
        for size in (1, 4, 9):
            pages = [await repo.find(sort=sort, limit=size, offset=o) for o in range(0, 41, size)]
            assert [i for p in pages for i in ids_of(p)] == expected
            assert {p.total for p in pages} == {41}
            ids = [await repo.ids(sort=sort, limit=size, offset=o) for o in range(0, 41, size)]
            assert list(itertools.chain.from_iterable(ids)) == expected


async def test_page_edges(store: Store) -> None:
    repo = store.sessions
    await repo.save_many([session(f"s{i}") for i in range(3)])
    past = await repo.find(offset=10)
    assert past.items == [] and past.total == 3 and past.offset == 10 and past.limit == 50
    last = await repo.find(limit=2, offset=2, sort="created_at")
    assert ids_of(last) == ["s2"] and last.total == 3
    assert await repo.ids(limit=2, offset=5) == []
    assert await repo.ids(offset=2, sort="created_at") == ["s2"]
    full = await repo.find(limit=MAX_PAGE_SIZE)
    assert len(full.items) == 3
    nothing = await repo.find(status="failed")
    assert nothing.items == [] and nothing.total == 0


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": MAX_PAGE_SIZE + 1}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": 2.0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": None}, "offset"),
        ({"sort": "updated_at"}, "sort"),
        ({"sort": "--last_active"}, "sort"),
        ({"sort": "user_id"}, "sort"),
        ({"sort": 1}, "sort"),
        ({"nope": 1}, "nope"),
        ({"current_flow_id": "x"}, "current_flow_id"),
        ({"session_id": "x"}, "session_id"),
        ({"backend": "flowize"}, "flowise, langflow, custom"),
        ({"backend": ExecutionStatus.PENDING}, "backend"),
        ({"status": "ACTIVE"}, "pending, active, idle"),
        ({"status": ["active", "bogus"]}, "status"),
        ({"status": 3}, "status"),
        ({"flow_id": None}, "flow_id"),
        ({"user_id": ["a", None]}, "user_id"),
        ({"flow_id": 5}, "flow_id"),
        ({"flow_id": b"bytes"}, "flow_id"),
        ({"flow_id": {"a": 1}}, "flow_id"),
        ({"flow_id": "tab\there"}, "flow_id"),
        ({"flow_id": "nul\x00"}, "flow_id"),
        ({"created_after": 1700000000}, "created_after"),
        ({"created_after": 1700000000.5}, "created_after"),
        ({"created_before": "2026-01-01"}, "created_before"),
        ({"active_after": True}, "active_after"),
        ({"active_before": "1 OR 1"}, "active_before"),
        ({"active_after": None}, "active_after"),
    ],
)
async def test_invalid_session_queries(store: Store, kwargs: dict[str, Any], names: str) -> None:
    repo = store.sessions
    with pytest.raises(InvalidQueryError) as info:
        await repo.find(**kwargs)
    assert names in str(info.value)
    if {"limit", "offset"} & set(kwargs):
        return
    # The other methods validate the same way (iterate as soon as it is called).
    with pytest.raises(InvalidQueryError, match=names):
        await repo.ids(**kwargs)
    with pytest.raises(InvalidQueryError, match=names):
        repo.iterate(**kwargs)
    if "sort" not in kwargs:
        with pytest.raises(InvalidQueryError, match=names):
            await repo.count(**kwargs)


async def test_invalid_iterate_and_ids_arguments(store: Store) -> None:
    for bad in (0, -5, 10_001, True, "9"):
        with pytest.raises(InvalidQueryError, match="batch_size"):
            store.sessions.iterate(batch_size=bad)
    with pytest.raises(InvalidQueryError, match="limit"):
        await store.sessions.ids(limit=0)
    with pytest.raises(InvalidQueryError, match="offset"):
        await store.sessions.ids(offset=-1)
    with pytest.raises(InvalidQueryError, match="sort"):
        await store.sessions.ids(sort="nope")


async def test_offset_beyond_the_server_window_points_at_iterate(
    store: Store, sync_client: redis.Redis
) -> None:
    (entry,) = sync_client.execute_command("FT.CONFIG", "GET", "MAXSEARCHRESULTS")
    window = int(entry[1])
    await store.sessions.save(session("s"))
    edge = await store.sessions.find(offset=window - 10, limit=10)
    assert edge.items == [] and edge.total == 1
    with pytest.raises(InvalidQueryError, match=r"iterate\(\)"):
        await store.sessions.find(offset=window - 10, limit=11)
    with pytest.raises(InvalidQueryError, match="MAXSEARCHRESULTS"):
        await store.sessions.ids(offset=window, limit=1)


async def test_small_server_window(store: Store, sync_client: redis.Redis) -> None:
    # A server configured with a small MAXSEARCHRESULTS (read once per repository): pages stop
    # at the window with a clear error, cursors walk past it, sorted walks refuse to start.
    (entry,) = sync_client.execute_command("FT.CONFIG", "GET", "MAXSEARCHRESULTS")
    sync_client.execute_command("FT.CONFIG", "SET", "MAXSEARCHRESULTS", 20)
    try:
        repo = store.sessions
        await repo.save_many([session(f"s{i:02d}") for i in range(30)])
        assert len((await repo.find(offset=10, limit=10)).items) == 10
        with pytest.raises(InvalidQueryError, match="result window of 20"):
            await repo.find(offset=11, limit=10)
        assert len([s async for s in repo.iterate(batch_size=7)]) == 30
        assert len(await repo.ids(limit=None)) == 30
        with pytest.raises(InvalidQueryError, match="sort=None"):
            _ = [s async for s in repo.iterate(sort="created_at")]
        assert len([s async for s in repo.iterate(sort="created_at", backend="langflow")]) == 0
    finally:
        sync_client.execute_command("FT.CONFIG", "SET", "MAXSEARCHRESULTS", entry[1])


async def test_empty_collection_matches_nothing(store: Store) -> None:
    repo = store.sessions
    await repo.save(session("a"))
    assert await repo.count(status=[]) == 0
    assert await repo.count(flow_id=set(), backend="flowise") == 0
    page = await repo.find(backend=())
    assert page.items == [] and page.total == 0
    assert await repo.ids(user_id=[]) == []
    assert await repo.ids(user_id=[], limit=5) == []
    assert [s async for s in repo.iterate(flow_id=[])] == []
    # Still validated: a bad member of an empty-looking query is an error.
    with pytest.raises(InvalidQueryError):
        await repo.count(status=[], backend="nope")


async def test_hostile_tag_values_are_data(store: Store) -> None:
    repo = store.sessions
    await repo.save_many(
        [session(f"s{i}", current_flow_id=v, user_id=v) for i, v in enumerate(HOSTILE)]
    )
    for i, value in enumerate(HOSTILE):
        expected = sorted(f"s{j}" for j, other in enumerate(HOSTILE) if tag_matches(other, value))
        assert sorted(await repo.ids(flow_id=value)) == expected, value
        assert await repo.count(user_id=value) == len(expected), value
        assert f"s{i}" in expected
    # Several hostile values at once: still a set of literal values.
    assert sorted(await repo.ids(flow_id=["x|y", "*", "{brace}"])) == ["s11", "s17", "s8"]
    # Syntax-looking values match nothing but themselves.
    assert await repo.count(flow_id="plain | Case") == 0
    assert await repo.count(flow_id="*") == 1
    assert await repo.count(user_id="-plain") == 0


async def test_empty_string_and_trimmed_spaces(store: Store) -> None:
    repo = store.sessions
    await repo.save_many(
        [
            session("empty", current_flow_id=""),
            session("blank", current_flow_id="  "),
            session("x", current_flow_id="x"),
            session("padded", current_flow_id=" x "),
            session("null", current_flow_id=None),
        ]
    )
    assert sorted(await repo.ids(flow_id="")) == ["blank", "empty"]
    assert sorted(await repo.ids(flow_id="x")) == ["padded", "x"]
    assert sorted(await repo.ids(flow_id="   x")) == ["padded", "x"]
    assert sorted(await repo.ids(flow_id=["", "x"])) == ["blank", "empty", "padded", "x"]


async def test_queries_see_writes_at_once(store: Store) -> None:
    repo = store.sessions
    for i in range(50):
        flow = f"rw{i}"
        await repo.save(session(f"s{i}", current_flow_id=flow, status="pending"))
        assert await repo.count(flow_id=flow) == 1
        await repo.update(f"s{i}", status=SessionStatus.RUNNING)
        assert await repo.ids(flow_id=flow, status="running") == [f"s{i}"]
        assert await repo.count(flow_id=flow, status="pending") == 0
        await repo.touch(f"s{i}")
        assert (await repo.find(limit=1)).items[0].id == f"s{i}"  # newest last_active
        await repo.delete(f"s{i}")
        assert await repo.count(flow_id=flow) == 0


async def test_find_loads_whole_documents(store: Store) -> None:
    repo = store.sessions
    s = session("full", context={"topic": "t", "n": [1, 2]}, user_id="u", total_queries=4)
    await repo.save(s)
    (got,) = (await repo.find(user_id="u")).items
    assert got == await repo.get("full")
    assert got.context == {"topic": "t", "n": [1, 2]} and got.version == 1
    (it,) = [x async for x in repo.iterate(user_id="u")]
    assert it == got


async def test_invalid_document_is_a_corrupt_record(store: Store, sync_client: redis.Redis) -> None:
    key = f"{store.namespace}:session:bad"
    doc = {
        "id": "bad",
        "backend": "flowise",
        "status": "active",
        "history": "not a list",
        "last_active": T0.timestamp(),
        "created_at": T0.timestamp(),
    }
    sync_client.execute_command("JSON.SET", key, "$", json.dumps(doc))
    with pytest.raises(CorruptRecordError) as info:
        await store.sessions.find(backend="flowise")
    assert info.value.key == key
    with pytest.raises(CorruptRecordError):
        _ = [s async for s in store.sessions.iterate()]
    # Counting and listing ids never load documents.
    assert await store.sessions.count(backend="flowise") == 1
    assert await store.sessions.ids() == ["bad"]


# ---------------------------------------------------------------- cursors


async def test_iterate_over_more_than_ten_thousand_matches(
    store: Store, sync_client: redis.Redis
) -> None:
    repo = store.sessions
    n = 10_050
    records = [
        session(
            f"s{i:05d}",
            status="active" if i % 10 else "idle",
            created_at=T0 + timedelta(seconds=(i * 7919) % 97),  # 97 values: many ties
        )
        for i in range(n)
    ]
    await repo.save_many(records, ttl=600)
    active = {r.id for r in records if r.status == SessionStatus.ACTIVE}

    streamed = [s.id async for s in repo.iterate(batch_size=1000)]
    assert len(streamed) == n and set(streamed) == {r.id for r in records}

    ordered = [s.id async for s in repo.iterate(sort="-created_at", status="active")]
    want = [
        r.id
        for r in brute_sort([r for r in records if r.id in active], "created_at", descending=True)
    ]
    assert ordered == want

    all_ids = await repo.ids(limit=None)
    assert len(all_ids) == n and set(all_ids) == {r.id for r in records}
    assert await repo.ids(sort="-created_at", status="active", limit=None) == want
    tail = await repo.ids(sort="-created_at", status="active", limit=None, offset=9000)
    assert tail == want[9000:]
    # A slow query gets the time it needs: past the server's TIMEOUT a query would silently
    # return partial results (ON_TIMEOUT RETURN), so every query sets its own budget.
    (entry,) = sync_client.execute_command("FT.CONFIG", "GET", "TIMEOUT")
    sync_client.execute_command("FT.CONFIG", "SET", "TIMEOUT", 1)
    try:
        stats = await repo.stats()
        assert stats["total"] == {"all": n} and stats["status"]["active"] == len(active)
        assert await repo.count(status=["active", "idle"]) == n
    finally:
        sync_client.execute_command("FT.CONFIG", "SET", "TIMEOUT", entry[1])
    # Deep pages beyond 10,000 work too (within the server's window).
    deep = await repo.find(sort="-created_at", status="active", offset=9_000, limit=45)
    assert ids_of(deep) == want[9000:9045] and deep.total == len(want)
    assert cursors_open(sync_client, store) == 0


def cursors_open(sync_client: redis.Redis, store: Store) -> int:
    info = sync_client.execute_command("FT.INFO", f"{store.namespace}:session:idx")
    fields = dict(zip(info[::2], info[1::2], strict=True))
    stats = fields["cursor_stats"]
    return int(dict(zip(stats[::2], stats[1::2], strict=True))["index_total"])


async def test_breaking_out_of_iterate_releases_the_cursor(
    store: Store, sync_client: redis.Redis
) -> None:
    await store.sessions.save_many([session(f"s{i}") for i in range(30)])
    iterator = store.sessions.iterate(batch_size=5)
    first = [await iterator.__anext__() for _ in range(3)]
    assert len(first) == 3
    assert cursors_open(sync_client, store) == 1
    await iterator.aclose()  # type: ignore[attr-defined]
    assert cursors_open(sync_client, store) == 0
    # A plain `break` leaves closing to the event loop's async-generator finalizer.
    async for _ in store.sessions.iterate(batch_size=5, sort="created_at"):
        break
    for _ in range(20):
        await asyncio.sleep(0.01)
        if cursors_open(sync_client, store) == 0:
            break
    assert cursors_open(sync_client, store) == 0


# ---------------------------------------------------------------- stats


async def test_stats_equal_brute_force(store: Store) -> None:
    repo = store.sessions
    backends = list(Backend)
    statuses = list(SessionStatus)
    records = [
        session(f"s{i}", backend=backends[i % 3], status=statuses[(i * 5) % 4]) for i in range(40)
    ]
    await repo.save_many(records)
    stats = await repo.stats()
    assert stats["total"] == {"all": 40}
    assert stats["backend"] == {b.value: sum(r.backend == b for r in records) for b in backends}
    assert stats["status"] == {s.value: sum(r.status == s for r in records) for s in statuses}
    assert stats["status"]["failed"] == 0


async def test_stats_of_empty_namespace(store: Store) -> None:
    stats = await store.sessions.stats()
    assert stats["total"] == {"all": 0}
    assert set(stats["backend"]) == {b.value for b in Backend}
    assert sum(stats["status"].values()) == 0
    ex = await store.executions.stats()
    assert ex["flow_id"] == {} and ex["total"] == {"all": 0}


async def test_stats_count_null_values_in_the_total_only(store: Store) -> None:
    repo = store.executions
    await repo.save_many(
        [
            execution("e1", flow_id="f1"),
            execution("e2", flow_id="f1", status=ExecutionStatus.FAILED),
            execution("e3", flow_id=None),
            execution("e4", flow_id="f2"),
        ]
    )
    stats = await repo.stats()
    assert stats["total"] == {"all": 4}
    assert stats["flow_id"] == {"f1": 2, "f2": 1}
    assert sum(stats["status"].values()) == 4
    assert stats["status"]["failed"] == 1


# ---------------------------------------------------------------- executions


async def test_execution_filters_and_sorts(store: Store) -> None:
    repo = store.executions
    records = [
        execution(
            "e1",
            session_id="s1",
            flow_id="f1",
            duration_ms=10,
            created_at=T0 + timedelta(seconds=1),
        ),
        execution(
            "e2",
            session_id="s1",
            flow_id="f2",
            duration_ms=20.5,
            status=ExecutionStatus.FAILED,
            created_at=T0 + timedelta(seconds=2),
        ),
        execution(
            "e3",
            session_id="s2",
            flow_id="f1",
            duration_ms=None,
            backend=Backend.LANGFLOW,
            created_at=T0 + timedelta(seconds=3),
        ),
        execution(
            "e4",
            session_id="s2",
            flow_id="f1",
            duration_ms=20.5,
            backend=None,
            created_at=T0 + timedelta(seconds=3),
        ),
        execution(
            "e5",
            session_id=None,
            flow_id=None,
            duration_ms=None,
            created_at=T0 + timedelta(seconds=4),
        ),
    ]
    await repo.save_many(records)
    assert ids_of(await repo.find(session_id="s1")) == ["e2", "e1"]  # default -created_at
    assert await repo.ids(flow_id="f1", sort="created_at", limit=10) == ["e1", "e3", "e4"]
    assert sorted(await repo.ids(backend="flowise")) == ["e1", "e2", "e5"]
    assert await repo.ids(status=ExecutionStatus.FAILED) == ["e2"]
    assert sorted(await repo.ids(status=["completed"], session_id=["s2", "s9"])) == ["e3", "e4"]
    assert sorted(await repo.ids(created_after=T0 + timedelta(seconds=3))) == ["e3", "e4", "e5"]
    assert await repo.ids(created_before=T0 + timedelta(seconds=2)) == ["e1"]
    # Duration bounds are both inclusive; null durations never match a bound.
    assert sorted(await repo.ids(min_duration_ms=20.5)) == ["e2", "e4"]
    assert await repo.ids(max_duration_ms=10) == ["e1"]
    assert sorted(await repo.ids(min_duration_ms=10, max_duration_ms=20.5)) == ["e1", "e2", "e4"]
    assert await repo.count(min_duration_ms=20.6) == 0
    assert await repo.count(min_duration_ms=30, max_duration_ms=5) == 0
    # Sorting on duration: nulls last in both directions, ties by id.
    assert ids_of(await repo.find(sort="duration_ms")) == ["e1", "e2", "e4", "e3", "e5"]
    assert ids_of(await repo.find(sort="-duration_ms")) == ["e2", "e4", "e1", "e3", "e5"]
    stats = await repo.stats()
    assert stats["flow_id"] == {"f1": 3, "f2": 1}
    assert stats["status"] == {
        "pending": 0,
        "running": 0,
        "completed": 4,
        "failed": 1,
        "cancelled": 0,
    }
    assert stats["total"] == {"all": 5}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_duration_ms": True},
        {"min_duration_ms": "5"},
        {"max_duration_ms": float("nan")},
        {"max_duration_ms": float("inf")},
        {"min_duration_ms": 10**400},  # an int too large for a float
        {"min_duration_ms": None},
        {"max_duration_ms": T0},
        {"created_after": 5},
        {"sort": "last_active"},
        {"user_id": "u"},
        {"status": "idle"},  # a SessionStatus, not an ExecutionStatus
        {"session_id": None},
    ],
)
async def test_invalid_execution_queries(store: Store, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidQueryError):
        await store.executions.find(**kwargs)


# ---------------------------------------------------------------- property tests

TAG_TEXT = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=6),
)
TIMES = [T0 + timedelta(seconds=s) for s in (0, 1, 2, 3)]
ID_TEXT = st.text(st.sampled_from("aZé日_-:.9"), min_size=1, max_size=4)


def unique_ids(draw: Callable[[Any], Any], n: int) -> list[str]:
    return draw(st.lists(ID_TEXT, min_size=n, max_size=n, unique=True))


@st.composite
def session_case(draw: Callable[[Any], Any]) -> tuple[list[Session], dict[str, Any], str]:
    pool = draw(st.lists(TAG_TEXT, min_size=1, max_size=4))
    maybe = st.one_of(st.none(), st.sampled_from(pool))
    n = draw(st.integers(0, 12))
    records = [
        Session(
            id=id,
            backend=draw(st.sampled_from(list(Backend))),
            status=draw(st.sampled_from(list(SessionStatus)[:3])),
            current_flow_id=draw(maybe),
            user_id=draw(maybe),
            created_at=draw(st.sampled_from(TIMES)),
            last_active=draw(st.sampled_from(TIMES)),
        )
        for id in unique_ids(draw, n)
    ]
    value = st.one_of(st.sampled_from(pool), TAG_TEXT, st.sampled_from(pool).map(lambda v: f" {v}"))
    filters: dict[str, Any] = {}
    if draw(st.booleans()):
        filters["flow_id"] = draw(st.one_of(value, st.lists(value, max_size=3)))
    if draw(st.booleans()):
        filters["user_id"] = draw(st.one_of(value, st.lists(value, max_size=3)))
    if draw(st.booleans()):
        filters["backend"] = draw(st.lists(st.sampled_from(list(Backend)), max_size=2))
    if draw(st.booleans()):
        filters["status"] = draw(st.sampled_from(["pending", "active", "idle"]))
    for name in ("created_after", "created_before", "active_after", "active_before"):
        if draw(st.integers(0, 3)) == 0:
            filters[name] = draw(st.sampled_from(TIMES))
    sort = draw(st.sampled_from(["last_active", "-last_active", "created_at", "-created_at"]))
    return records, filters, sort


def session_matches(s: Session, f: dict[str, Any]) -> bool:
    checks = [
        "flow_id" not in f or tag_matches(s.current_flow_id, f["flow_id"]),
        "user_id" not in f or tag_matches(s.user_id, f["user_id"]),
        "backend" not in f or s.backend in f["backend"],
        "status" not in f or s.status.value == f["status"],
        "created_after" not in f or s.created_at >= f["created_after"],
        "created_before" not in f or s.created_at < f["created_before"],
        "active_after" not in f or s.last_active >= f["active_after"],
        "active_before" not in f or s.last_active < f["active_before"],
    ]
    return all(checks)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=session_case(), limit=st.integers(1, 5), offset=st.integers(0, 6))
async def test_session_queries_equal_brute_force(
    store: Store, case: tuple[list[Session], dict[str, Any], str], limit: int, offset: int
) -> None:
    records, filters, sort = case
    repo = store.sessions
    await repo.save_many(records)
    try:
        attr = sort.lstrip("-")
        want = [
            r.id
            for r in brute_sort(
                [r for r in records if session_matches(r, filters)], attr, sort.startswith("-")
            )
        ]
        assert await repo.count(**filters) == len(want)
        page = await repo.find(sort=sort, limit=limit, offset=offset, **filters)
        assert ids_of(page) == want[offset : offset + limit]
        assert page.total == len(want)
        assert await repo.ids(sort=sort, **filters) == want
        assert sorted(await repo.ids(**filters)) == sorted(want)
        assert [s.id async for s in repo.iterate(sort=sort, batch_size=3, **filters)] == want
        stats = await repo.stats()
        assert stats["total"]["all"] == len(records)
        for b in Backend:
            assert stats["backend"][b.value] == sum(r.backend == b for r in records)
    finally:
        await repo.delete_many([r.id for r in records])


@st.composite
def execution_case(
    draw: Callable[[Any], Any],
) -> tuple[list[ExecutionResult], dict[str, Any], str]:
    pool = draw(st.lists(TAG_TEXT, min_size=1, max_size=4))
    maybe = st.one_of(st.none(), st.sampled_from(pool))
    durations = st.one_of(st.none(), st.sampled_from([0, 1.5, 2, 1e-05, -3.0, 250.25]))
    n = draw(st.integers(0, 12))
    records = [
        ExecutionResult(
            id=id,
            session_id=draw(maybe),
            flow_id=draw(maybe),
            backend=draw(st.one_of(st.none(), st.sampled_from(list(Backend)))),
            status=draw(st.sampled_from(list(ExecutionStatus))),
            duration_ms=draw(durations),
            created_at=draw(st.sampled_from(TIMES)),
        )
        for id in unique_ids(draw, n)
    ]
    value = st.one_of(st.sampled_from(pool), TAG_TEXT)
    filters: dict[str, Any] = {}
    for name in ("session_id", "flow_id"):
        if draw(st.booleans()):
            filters[name] = draw(st.one_of(value, st.lists(value, max_size=3)))
    if draw(st.booleans()):
        filters["status"] = draw(st.lists(st.sampled_from(list(ExecutionStatus)), max_size=3))
    if draw(st.integers(0, 2)) == 0:
        filters["backend"] = draw(st.sampled_from(list(Backend)))
    for name in ("min_duration_ms", "max_duration_ms"):
        if draw(st.integers(0, 2)) == 0:
            filters[name] = draw(st.sampled_from([0, 1.5, 2, -3, 1e-05, 300]))
    if draw(st.integers(0, 3)) == 0:
        filters["created_after"] = draw(st.sampled_from(TIMES))
    sort = draw(st.sampled_from(["duration_ms", "-duration_ms", "created_at", "-created_at"]))
    return records, filters, sort


def execution_matches(e: ExecutionResult, f: dict[str, Any]) -> bool:
    d = e.duration_ms
    checks = [
        "session_id" not in f or tag_matches(e.session_id, f["session_id"]),
        "flow_id" not in f or tag_matches(e.flow_id, f["flow_id"]),
        "status" not in f or e.status in f["status"],
        "backend" not in f or e.backend == f["backend"],
        "min_duration_ms" not in f or (d is not None and d >= f["min_duration_ms"]),
        "max_duration_ms" not in f or (d is not None and d <= f["max_duration_ms"]),
        "created_after" not in f or e.created_at >= f["created_after"],
    ]
    return all(checks)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=execution_case(), limit=st.integers(1, 5), offset=st.integers(0, 4))
async def test_execution_queries_equal_brute_force(
    store: Store,
    case: tuple[list[ExecutionResult], dict[str, Any], str],
    limit: int,
    offset: int,
) -> None:
    records, filters, sort = case
    repo = store.executions
    await repo.save_many(records)
    try:
        attr = sort.lstrip("-")
        want = [
            r.id
            for r in brute_sort(
                [r for r in records if execution_matches(r, filters)], attr, sort.startswith("-")
            )
        ]
        assert await repo.count(**filters) == len(want)
        page = await repo.find(sort=sort, limit=limit, offset=offset, **filters)
        assert ids_of(page) == want[offset : offset + limit]
        assert page.total == len(want)
        assert await repo.ids(sort=sort, **filters) == want
        stats = await repo.stats()
        flows: dict[str, int] = {}
        for r in records:
            if r.flow_id is not None:
                flows[r.flow_id] = flows.get(r.flow_id, 0) + 1
        assert stats["flow_id"] == flows
        assert stats["status"] == {
            s.value: sum(r.status == s for r in records) for s in ExecutionStatus
        }
    finally:
        await repo.delete_many([r.id for r in records])


def test_page_fast_constructor_builds_the_same_frozen_page() -> None:
    items = [object()]
    fast = Page._of(items, 7, 3, 2)
    assert fast == Page(items=items, total=7, offset=3, limit=2)
    assert fast.skipped == ()
    assert repr(fast) == repr(Page(items=items, total=7, offset=3, limit=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.total = 8  # type: ignore[misc]
