"""SessionRepository.history: last-N reads of a session's history, through a JSONPath slice."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis

from flywheel_state import (
    CorruptRecordError,
    InvalidIdError,
    InvalidQueryError,
    NotFoundError,
    Settings,
    Store,
)
from flywheel_state.models import Backend, HistoryEntry, Session
from flywheel_state.repositories import HistoryPage


def _session(sid: str, entries: int) -> Session:
    return Session(
        id=sid,
        backend=Backend.FLOWISE,
        history=[HistoryEntry(role="user", content=f"m{i}") for i in range(entries)],
    )


def _contents(page: HistoryPage) -> list[str]:
    return [e.content for e in page.entries]


async def test_last_n_of_a_long_history(store: Store) -> None:
    await store.sessions.save(_session("long", 1000))
    page = await store.sessions.history("long", last=20)
    assert _contents(page) == [f"m{i}" for i in range(980, 1000)]
    assert (page.start, page.total, page.has_earlier) == (980, 1000, True)
    assert all(isinstance(e, HistoryEntry) for e in page.entries)


async def test_bounds(store: Store) -> None:
    await store.sessions.save(_session("s", 10))
    # N larger than the history: all of it.
    page = await store.sessions.history("s", last=50)
    assert _contents(page) == [f"m{i}" for i in range(10)]
    assert (page.start, page.total, page.has_earlier) == (0, 10, False)
    # Exactly the history's length, and one entry.
    assert _contents(await store.sessions.history("s", last=10)) == [f"m{i}" for i in range(10)]
    assert _contents(await store.sessions.history("s", last=1)) == ["m9"]
    # N = 0: no entries, positioned at the end.
    page = await store.sessions.history("s", last=0)
    assert (page.entries, page.start, page.total) == ([], 10, 10)


async def test_before_pages_backwards_over_every_entry_once(store: Store) -> None:
    await store.sessions.save(_session("s", 23))
    seen: list[str] = []
    page = await store.sessions.history("s", last=5)
    seen = _contents(page) + seen
    while page.has_earlier:
        page = await store.sessions.history("s", last=5, before=page.start)
        seen = _contents(page) + seen
    assert seen == [f"m{i}" for i in range(23)]
    assert page.start == 0
    # before is a position: entries [before - last, before).
    assert _contents(await store.sessions.history("s", last=3, before=7)) == ["m4", "m5", "m6"]
    assert _contents(await store.sessions.history("s", last=10, before=2)) == ["m0", "m1"]
    page = await store.sessions.history("s", last=3, before=0)
    assert (page.entries, page.start, page.total) == ([], 0, 23)
    # Beyond the end means the end.
    page = await store.sessions.history("s", last=2, before=999)
    assert (_contents(page), page.start) == (["m21", "m22"], 21)


async def test_empty_history(store: Store) -> None:
    await store.sessions.save(_session("empty", 0))
    page = await store.sessions.history("empty", last=20)
    assert (page.entries, page.start, page.total, page.has_earlier) == ([], 0, 0, False)
    page = await store.sessions.history("empty", last=20, before=5)
    assert (page.entries, page.start, page.total) == ([], 0, 0)


async def test_sees_appends_and_trims(store: Store) -> None:
    await store.sessions.save(_session("s", 3))
    await store.sessions.append_history("s", {"role": "assistant", "content": "new", "k": 1})
    page = await store.sessions.history("s", last=2)
    assert _contents(page) == ["m2", "new"]
    assert page.entries[1].model_extra == {"k": 1}
    assert page.entries[1].timestamp is not None
    await store.sessions.append_history("s", {"content": "last"}, max_len=2)
    page = await store.sessions.history("s", last=5)
    assert (_contents(page), page.total) == (["new", "last"], 2)


@pytest.mark.parametrize("bad", [-1, True, False, 1.5, "3", None, [2]])
async def test_bad_last(store: Store, bad: object) -> None:
    await store.sessions.save(_session("s", 3))
    with pytest.raises(InvalidQueryError, match="last"):
        await store.sessions.history("s", last=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, True, 2.0, "1"])
async def test_bad_before(store: Store, bad: object) -> None:
    await store.sessions.save(_session("s", 3))
    with pytest.raises(InvalidQueryError, match="before"):
        await store.sessions.history("s", last=1, before=bad)  # type: ignore[arg-type]


async def test_missing_session_and_bad_id(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.sessions.history("nope", last=5)
    with pytest.raises(InvalidIdError):
        await store.sessions.history("", last=5)


async def test_corrupt_values_are_typed_errors(store: Store, sync_client: redis.Redis) -> None:
    legacy = store.sessions.key("legacy")
    sync_client.set(legacy, json.dumps({"session_id": "legacy"}))
    with pytest.raises(CorruptRecordError, match="string"):
        await store.sessions.history("legacy", last=5)
    assert sync_client.type(legacy) == "string"  # left untouched
    no_history = store.sessions.key("nohist")
    sync_client.execute_command("JSON.SET", no_history, "$", json.dumps({"history": {"a": 1}}))
    with pytest.raises(CorruptRecordError, match="history"):
        await store.sessions.history("nohist", last=5)
    bad_entry = store.sessions.key("badentry")
    doc = {"history": [{"content": "ok"}, {"timestamp": "not a date"}]}
    sync_client.execute_command("JSON.SET", bad_entry, "$", json.dumps(doc))
    with pytest.raises(CorruptRecordError, match=r"history\.1"):
        await store.sessions.history("badentry", last=5)


async def test_refresh_on_read_restarts_the_ttl(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True, refresh_on_read=True) as store:
        await store.sessions.save(_session("s", 2), ttl=60)
        await store.sessions.history("s", last=1)
        remaining = sync_client.pttl(store.sessions.key("s"))
        assert remaining > timedelta(days=6).total_seconds() * 1000
