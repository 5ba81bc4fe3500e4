"""The write script's fast paths keep the repository's semantics.

Partial writes fold member writes, the version and integer increments into one JSON.MERGE, and
full writes carry their expected version in the document. These tests pin the cases where that
could differ from plain per-path JSON.SET / JSON.NUMINCRBY: objects (replaced, never merged),
nulls (stored, never deleted), arrays, a stale model version, odd stored numbers, documents
whose root or fields have the wrong JSON type (nothing written at all).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from flywheel_state import (
    Backend,
    CorruptRecordError,
    ExecutionResult,
    HistoryEntry,
    InvalidIdError,
    Session,
    SessionStatus,
    Store,
)


def stored(sync_client: redis.Redis, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sync_client.execute_command("JSON.GET", key))
    return doc


async def saved_session(store: Store, **fields: Any) -> Session:
    session = Session(
        id="s1",
        backend=Backend.FLOWISE,
        status=SessionStatus.ACTIVE,
        context={"a": 1, "nested": {"keep": True}},
        metadata={"old": 1},
        **fields,
    )
    return await store.sessions.save(session)


async def test_update_replaces_objects_stores_nulls_and_arrays(
    store: Store, sync_client: redis.Redis
) -> None:
    await saved_session(store, user_id="u1", current_flow_id="f1")
    key = store.sessions.key("s1")
    before = stored(sync_client, key)
    version = await store.sessions.update(
        "s1",
        context={"b": 2},  # an object replaces the old one: no key of it survives
        metadata={},
        user_id=None,  # null is stored, the member is not deleted
        status="idle",
        history=[{"role": None, "content": [None, {"x": None}]}],
        total_response_time=2.5,
    )
    after = stored(sync_client, key)
    assert version == before["version"] + 1 == after["version"]
    assert after["context"] == {"b": 2}
    assert after["metadata"] == {}
    assert "user_id" in after and after["user_id"] is None
    assert after["status"] == "idle"
    assert after["history"] == [{"role": None, "content": [None, {"x": None}], "timestamp": None}]
    assert after["total_response_time"] == 2.5
    assert after["updated_at"] > before["updated_at"]
    untouched = set(before) - {
        "context", "metadata", "user_id", "status", "history", "total_response_time",
        "updated_at", "version",
    }  # fmt: skip
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    got = await store.sessions.get("s1")
    assert got.user_id is None and got.context == {"b": 2} and got.version == version
    await store.sessions.update("s1", history=[])
    assert stored(sync_client, key)["history"] == []


async def test_save_of_a_stale_model_still_gets_the_next_version(
    store: Store, sync_client: redis.Redis
) -> None:
    first = await saved_session(store)
    assert first.version == 1
    await store.sessions.update("s1", status="idle")
    await store.sessions.update("s1", status="running")
    stale = first.model_copy()
    assert stale.version == 1  # the store is at 3
    saved = await store.sessions.save(stale)
    assert saved.version == 4 == stored(sync_client, store.sessions.key("s1"))["version"]
    # A failed save leaves the model as it was.
    sync_client.set(store.sessions.key("s2"), "legacy")
    other = Session(id="s2", backend=Backend.CUSTOM, version=7)
    with pytest.raises(CorruptRecordError):
        await store.sessions.save(other)
    assert other.version == 7


async def test_append_history_counts_and_trims_in_one_step(
    store: Store, sync_client: redis.Redis
) -> None:
    await saved_session(store, total_queries=41)
    key = store.sessions.key("s1")
    entries = [HistoryEntry(role="user", content=f"m{i}") for i in range(5)]
    version = await store.sessions.append_history("s1", *entries, max_len=3)
    doc = stored(sync_client, key)
    assert [e["content"] for e in doc["history"]] == ["m2", "m3", "m4"]
    assert doc["total_queries"] == 42 and isinstance(doc["total_queries"], int)
    assert doc["version"] == version == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5.0", 6.0),  # a float stays a float (JSON.NUMINCRBY)
        ("123456789012345678", 123456789012345679),  # beyond Lua's exact integers
        ("-3", -2),
    ],
)
async def test_append_history_increments_any_stored_number_exactly(
    store: Store, sync_client: redis.Redis, raw: str, expected: float
) -> None:
    await saved_session(store)
    key = store.sessions.key("s1")
    sync_client.execute_command("JSON.SET", key, "$.total_queries", raw)
    await store.sessions.append_history("s1", {"content": "x"})
    text = sync_client.execute_command("JSON.GET", key, "$.total_queries")
    value = json.loads(text)[0]
    assert value == expected and type(value) is type(expected)


async def test_wrong_json_types_write_nothing(store: Store, sync_client: redis.Redis) -> None:
    await saved_session(store)
    key = store.sessions.key("s1")
    sync_client.execute_command("JSON.SET", key, "$.total_queries", '"many"')
    before = stored(sync_client, key)
    with pytest.raises(CorruptRecordError, match="total_queries"):
        await store.sessions.append_history("s1", {"content": "x"})
    assert stored(sync_client, key) == before

    # A history that is not an array (or is missing): the append, even a keyed one, writes
    # nothing, neither the entry nor the counters, the version or the idempotency key.
    sync_client.execute_command("JSON.SET", key, "$.total_queries", "1")
    for history in ('{"a": 1}', '"text"', None):
        if history is None:
            sync_client.execute_command("JSON.DEL", key, "$.history")
        else:
            sync_client.execute_command("JSON.SET", key, "$.history", history)
        before = stored(sync_client, key)
        for keyed in (None, "k1"):
            with pytest.raises(CorruptRecordError, match="history"):
                await store.sessions.append_history("s1", {"content": "x"}, idempotency_key=keyed)
            assert stored(sync_client, key) == before

    # A JSON value that is not an object is never merged into (that would replace it).
    sync_client.execute_command("JSON.SET", key, "$", "[1, 2]")
    with pytest.raises(CorruptRecordError):
        await store.sessions.update("s1", status="idle")
    with pytest.raises(CorruptRecordError):
        await store.sessions.touch("s1")
    assert json.loads(sync_client.execute_command("JSON.GET", key)) == [1, 2]


async def test_patch_of_a_document_without_version(store: Store, sync_client: redis.Redis) -> None:
    key = store.sessions.key("s1")
    doc = json.loads(Session(id="s1", backend=Backend.FLOWISE).model_dump_json())
    del doc["version"]
    sync_client.execute_command("JSON.SET", key, "$", json.dumps(doc))
    assert await store.sessions.update("s1", status="idle") == 1
    after = stored(sync_client, key)
    assert after["version"] == 1 and after["status"] == "idle"


async def test_execution_update_replaces_result_objects(
    store: Store, sync_client: redis.Redis
) -> None:
    await store.executions.save(ExecutionResult(id="e1", result={"rows": [1], "extra": 1}))
    await store.executions.update("e1", result={"rows": []})
    assert stored(sync_client, store.executions.key("e1"))["result"] == {"rows": []}
    await store.executions.update("e1", result=None, error="boom", duration_ms=12.5)
    doc = stored(sync_client, store.executions.key("e1"))
    assert doc["result"] is None and doc["error"] == "boom" and doc["duration_ms"] == 12.5
    assert doc["version"] == 3


async def test_save_many_batches_go_in_order_and_stop_at_the_first_error(
    store: Store, sync_client: redis.Redis
) -> None:
    # 1,200 records are three batches; the second holds a legacy key, the third a bad id.
    sessions = [Session(id=f"m{i}", backend=Backend.CUSTOM) for i in range(1200)]
    sync_client.set(store.sessions.key("m700"), "legacy")
    with pytest.raises(CorruptRecordError, match="m700"):
        await store.sessions.save_many(sessions)
    assert all(s.version == 1 for s in sessions[:700])
    assert sync_client.get(store.sessions.key("m700")) == "legacy"
    assert sync_client.exists(*(store.sessions.key(f"m{i}") for i in range(701, 1000))) == 299
    assert sync_client.exists(*(store.sessions.key(f"m{i}") for i in range(1000, 1200))) == 0

    sync_client.delete(store.sessions.key("m700"))
    # Assignment validates ids now; write around it to get an unsaveable model into the batch.
    sessions[1100].__dict__["id"] = "bad id"
    with pytest.raises(InvalidIdError):
        await store.sessions.save_many(sessions)
    assert all(s.version == 2 for s in sessions[:700])
    assert sessions[700].version == 1 and sessions[999].version == 2
    assert sync_client.exists(*(store.sessions.key(f"m{i}") for i in range(1000, 1200))) == 0
    sessions[1100].__dict__["id"] = "m1100"
    saved = await store.sessions.save_many(sessions)
    assert [s.version for s in saved[998:1002]] == [3, 3, 1, 1]
    got = await store.sessions.get_many([s.id for s in sessions])
    assert [g.version if g else None for g in got] == [s.version for s in sessions]


@pytest.mark.parametrize("version", ["7", "7.5", '"seven"'])
async def test_saves_keep_the_idempotency_window_whatever_the_stored_version(
    store: Store, sync_client: redis.Redis, version: str
) -> None:
    # The script reads the version and the window in one command when both look as it wrote
    # them, else one by one: either way a save keeps the window.
    await saved_session(store)
    key = store.sessions.key("s1")
    await store.sessions.append_history("s1", {"content": "a"}, idempotency_key="k1")
    sync_client.execute_command("JSON.SET", key, "$.version", version)
    session = await store.sessions.get("s1") if version == "7" else None
    if session is None:
        doc = stored(sync_client, key)
        doc["version"] = 7
        session = Session.model_validate(doc)
    await store.sessions.save(session)
    assert (
        await store.sessions.append_history("s1", {"content": "b"}, idempotency_key="k1")
        == (stored(sync_client, key)["version"])
    )
    assert [e["content"] for e in stored(sync_client, key)["history"]] == ["a"]
    await store.sessions.append_history("s1", {"content": "c"}, idempotency_key="k2")
    assert [e["content"] for e in stored(sync_client, key)["history"]] == ["a", "c"]
