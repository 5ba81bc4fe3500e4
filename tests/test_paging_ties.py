"""find()/ids() paging through data full of ties: exact (sort value, id) order, no full sort.

Ties of the sort value are resolved on the FT.SEARCH path (a narrow query on the tied value at
a page boundary); the FT.AGGREGATE path that sorts every match is not taken for them, which
these tests check by making that path fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel_state import Store
from flywheel_state.models import Backend, ExecutionResult, Session, SessionStatus

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
# Integer seconds (true ties), plus values a microsecond apart (equal in the server's rounded
# sort keys but not equal) and a far one.
OFFSETS = [
    timedelta(0),
    timedelta(seconds=1),
    timedelta(seconds=1, microseconds=1),
    timedelta(seconds=2),
    timedelta(seconds=3),
    timedelta(days=400),
]


@contextmanager
def no_full_sort(repo: Any) -> Iterator[None]:
    """Fail the test if a page sorts every match (the FT.AGGREGATE path)."""

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a page with ties took the path that sorts every match")

    repo._page_by_aggregate = refuse
    try:
        yield
    finally:
        del repo._page_by_aggregate


def expected_order(records: list[Any], attr: str, descending: bool) -> list[str]:
    present = sorted(records, key=lambda r: r.id.encode())
    present.sort(key=lambda r: getattr(r, attr), reverse=descending)
    return [r.id for r in present]


async def walk(repo: Any, limit: int, **kwargs: Any) -> tuple[list[str], list[str], set[int]]:
    """Every page of find() and ids() from offset 0 to the end; and the totals seen."""
    found: list[str] = []
    ids: list[str] = []
    totals: set[int] = set()
    offset = 0
    while True:
        page = await repo.find(limit=limit, offset=offset, **kwargs)
        totals.add(page.total)
        found += [m.id for m in page.items]
        ids += await repo.ids(limit=limit, offset=offset, **kwargs)
        offset += limit
        if offset >= page.total:
            return found, ids, totals


def session(id: str, last: int, created: int, backend: Backend, status: SessionStatus) -> Session:
    return Session(
        id=id,
        backend=backend,
        status=status,
        last_active=T0 + OFFSETS[last],
        created_at=T0 + OFFSETS[created],
    )


records_strategy = st.lists(
    st.tuples(
        st.integers(0, len(OFFSETS) - 1),
        st.integers(0, 2),  # created_at: only three values, ties everywhere
        st.sampled_from([Backend.FLOWISE, Backend.LANGFLOW]),
        st.sampled_from([SessionStatus.ACTIVE, SessionStatus.IDLE]),
    ),
    min_size=0,
    max_size=45,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=records_strategy,
    limit=st.integers(1, 12),
    sort=st.sampled_from(["last_active", "-last_active", "created_at", "-created_at"]),
    filters=st.sampled_from(
        [
            {},
            {"backend": "flowise"},
            {"status": ["idle"]},
            {"backend": "langflow", "status": "active"},
        ]
    ),
)
async def test_pages_meet_every_record_once_in_order(
    store: Store, specs: list[Any], limit: int, sort: str, filters: dict[str, Any]
) -> None:
    repo = store.sessions
    # Ids in an order unrelated to the values, of different lengths (key order is byte order).
    records = [session(f"s{(i * 7) % 50}-{i}", *spec) for i, spec in enumerate(specs)]
    await repo.save_many(records)
    try:
        matching = [
            r
            for r in records
            if all(
                getattr(r, "backend" if k == "backend" else "status").value
                in ([v] if isinstance(v, str) else v)
                for k, v in filters.items()
            )
        ]
        want = expected_order(matching, sort.lstrip("-"), sort.startswith("-"))
        with no_full_sort(repo):
            found, ids, totals = await walk(repo, limit, sort=sort, **filters)
        assert found == want
        assert ids == want
        assert totals == {len(want)}
    finally:
        await repo.delete_many([r.id for r in records])


@pytest.mark.parametrize("sort", ["last_active", "-last_active"])
async def test_pages_inside_one_large_tie(store: Store, sort: str) -> None:
    # 30 records of one second, between records of other seconds: pages of 4 lie wholly inside
    # the tie (the records before it are counted), start in it, or end in it.
    repo = store.sessions
    records = [
        session(f"mid{i:02d}", 1, 0, Backend.FLOWISE, SessionStatus.ACTIVE) for i in range(30)
    ]
    records += [session(f"low{i}", 0, 0, Backend.FLOWISE, SessionStatus.ACTIVE) for i in range(5)]
    records += [session(f"high{i}", 3, 0, Backend.FLOWISE, SessionStatus.ACTIVE) for i in range(5)]
    await repo.save_many(records)
    want = expected_order(records, "last_active", sort.startswith("-"))
    with no_full_sort(repo):
        for limit in (1, 4, 7, 40):
            found, ids, totals = await walk(repo, limit, sort=sort)
            assert found == want and ids == want and totals == {40}
        # A single page from the middle of the tie.
        page = await repo.find(sort=sort, limit=3, offset=17)
        assert [m.id for m in page.items] == want[17:20]


async def test_null_ties_on_a_boundary_take_the_exact_path(store: Store) -> None:
    # Executions without a duration sort last in both directions, by id: still exact.
    repo = store.executions
    base = {"session_id": "s", "flow_id": "f", "backend": "flowise", "status": "completed"}
    records = [
        ExecutionResult(id=f"e{i:02d}", duration_ms=None if i % 2 else float(i % 3), **base)
        for i in range(20)
    ]
    await repo.save_many(records)
    for sort in ("duration_ms", "-duration_ms"):
        present = [r for r in records if r.duration_ms is not None]
        want = expected_order(present, "duration_ms", sort.startswith("-"))
        want += sorted(r.id for r in records if r.duration_ms is None)
        found, ids, totals = await walk(repo, 3, sort=sort)
        assert found == want and ids == want and totals == {20}


@pytest.mark.parametrize(
    "doc",
    [
        b'{"last_active":1.5,"b":2}',
        b'{"a":1,"last_active":1780353840.0}',
        b'{"last_active":1,"c":{"last_active":5}}',  # a nested key after the top-level one
        b'{"c":{"last_active":5}}',  # only a nested key
        b'{"h":[{"last_active":5}],"x":1}',
        b'{"last_active":1,"x\\"last_active":5}',  # a key ending in an escaped quote + name
        b'{"s":",\\"last_active\\":9}","last_active":2}',  # the text inside a string
        b'{"last_active":1,"last_active":3}',  # duplicates: the last one, as json.loads
        b'{"last_active": 4}',
        b'{"last_active":null}',
        b'{"last_active":true}',
        b'{"last_active":"7"}',
        b'{"last_active":123456789012345678901234567890}',
        b'[{"last_active":1}]',
        b'"last_active":1}',
        b"{}",
    ],
)
def test_document_sort_value_reads_what_json_loads_reads(doc: bytes) -> None:
    from flywheel_state.repositories._paging import _document_sort_value, _sort_value

    parsed = json.loads(doc) if doc != b'"last_active":1}' else None
    want = _sort_value(parsed.get("last_active")) if isinstance(parsed, dict) else None
    invalid = object()
    got = _document_sort_value("last_active", doc, invalid)
    if doc == b'"last_active":1}':
        assert got is invalid
    else:
        assert got == want and type(got) is type(want)
