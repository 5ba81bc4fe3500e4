"""Repositories against the real server: every method, TTLs, concurrency, corrupt records."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
import redis

from flywheel_state import (
    AlreadyExistsError,
    Backend,
    ConflictError,
    CorruptRecordError,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    InvalidIdError,
    InvalidQueryError,
    NotFoundError,
    Session,
    SessionStatus,
    Store,
    VersionMismatchError,
)

WEEK = 7 * 24 * 3600


def make_session(id: str = "session_123", **overrides: object) -> Session:
    fields: dict[str, object] = {
        "id": id,
        "backend": Backend.FLOWISE,
        "status": SessionStatus.ACTIVE,
        "current_flow_id": "csv2507",
        "context": {"topic": "structural tension"},
    }
    fields.update(overrides)
    return Session(**fields)  # type: ignore[arg-type]


def ttl_seconds(sync_client: redis.Redis, key: str) -> float:
    return float(sync_client.pttl(key)) / 1000


# ---------------------------------------------------------------- save / get


async def test_save_then_get_round_trips_every_field(
    store: Store, sync_client: redis.Redis
) -> None:
    created = datetime(2025, 11, 18, 10, 0, 0, 123456, tzinfo=timezone.utc)
    s = make_session(
        backend_session_id="flowise_session_xyz",
        user_id="u-1",
        metadata={"source": "test", "nested": {"a": [1, 2]}},
        history=[HistoryEntry(role="user", content="hi"), {"q": "legacy", "a": "kept"}],
        created_at=created,
        total_queries=3,
        successful_queries=2,
        total_response_time=1.5,
    )
    saved = await store.sessions.save(s)
    assert saved.version == 1
    got = await store.sessions.get("session_123")
    assert got.model_dump(exclude={"updated_at"}) == s.model_dump(exclude={"updated_at"})
    assert got.created_at == created and got.created_at.tzinfo is not None
    assert got.history[1].model_extra == {"q": "legacy", "a": "kept"}
    # Stored as a RedisJSON document with epoch-second datetimes (indexable NUMERIC).
    key = f"{store.namespace}:session:session_123"
    assert sync_client.type(key) == "ReJSON-RL"
    raw = json.loads(sync_client.execute_command("JSON.GET", key))
    assert raw["created_at"] == pytest.approx(created.timestamp())
    assert raw["backend"] == "flowise" and raw["version"] == 1
    assert "pk" not in raw


async def test_save_sets_default_ttl_and_bumps_version(
    store: Store, sync_client: redis.Redis
) -> None:
    s = make_session()
    await store.sessions.save(s)
    await store.sessions.save(s)
    assert s.version == 2
    key = f"{store.namespace}:session:session_123"
    assert WEEK - 5 < ttl_seconds(sync_client, key) <= WEEK
    ttl = await store.sessions.ttl("session_123")
    assert ttl is not None and timedelta(days=6, hours=23) < ttl <= timedelta(days=7)


async def test_per_call_ttl_and_no_expiry(store: Store, sync_client: redis.Redis) -> None:
    await store.sessions.save(make_session("a"), ttl=60)
    await store.sessions.save(make_session("b"), ttl=timedelta(minutes=5))
    await store.sessions.save(make_session("c"), ttl=None)
    assert 55 < ttl_seconds(sync_client, f"{store.namespace}:session:a") <= 60
    assert 295 < ttl_seconds(sync_client, f"{store.namespace}:session:b") <= 300
    assert sync_client.ttl(f"{store.namespace}:session:c") == -1
    assert await store.sessions.ttl("c") is None
    with pytest.raises(InvalidQueryError):
        await store.sessions.save(make_session("d"), ttl=0)
    with pytest.raises(InvalidQueryError):
        await store.sessions.save(make_session("d"), ttl="1h")  # type: ignore[arg-type]
    assert not await store.sessions.exists("d")


@pytest.mark.parametrize(
    "ttl", [10**16, 1e300, float("inf"), float("nan"), timedelta.max.total_seconds() * 2]
)
async def test_out_of_range_ttls_are_rejected_before_anything_is_written(
    store: Store, sync_client: redis.Redis, ttl: object
) -> None:
    # Redis refuses such an expiry only after the data was written, which would leave a key
    # without its TTL (or a changed document whose write reported an error).
    with pytest.raises(InvalidQueryError, match="ttl"):
        await store.sessions.save(make_session("d"), ttl=ttl)  # type: ignore[arg-type]
    assert not await store.sessions.exists("d")
    await store.sessions.save(make_session("e"))
    key = f"{store.namespace}:session:e"
    before = sync_client.execute_command("JSON.GET", key)
    with pytest.raises(InvalidQueryError, match="ttl"):
        await store.sessions.update("e", status="idle", ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="ttl"):
        await store.sessions.append_history("e", {"content": "x"}, ttl=ttl)  # type: ignore[arg-type]
    assert sync_client.execute_command("JSON.GET", key) == before
    # The longest timedelta is still a valid TTL.
    await store.sessions.save(make_session("f"), ttl=timedelta.max)
    assert ttl_seconds(sync_client, f"{store.namespace}:session:f") > 10**13


async def test_get_missing(store: Store) -> None:
    with pytest.raises(NotFoundError) as info:
        await store.sessions.get("nope")
    assert info.value.key == f"{store.namespace}:session:nope"
    assert await store.sessions.get_or_none("nope") is None
    assert not await store.sessions.exists("nope")
    with pytest.raises(NotFoundError):
        await store.sessions.ttl("nope")


async def test_insert_refuses_existing(store: Store) -> None:
    await store.sessions.insert(make_session(user_id="first"))
    with pytest.raises(AlreadyExistsError) as info:  # a ConflictError, told apart by its type
        await store.sessions.insert(make_session(user_id="second"))
    assert isinstance(info.value, ConflictError) and not isinstance(
        info.value, VersionMismatchError
    )
    assert (await store.sessions.get("session_123")).user_id == "first"


async def test_save_rejects_other_models(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.sessions.save(ExecutionResult(id="e"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- optimistic concurrency


async def test_expected_version_conflicts(store: Store) -> None:
    s = await store.sessions.save(make_session())
    assert s.version == 1
    stale = await store.sessions.get("session_123")
    await store.sessions.update("session_123", status=SessionStatus.IDLE)  # version 2
    stale.user_id = "late writer"
    with pytest.raises(VersionMismatchError) as info:
        await store.sessions.save(stale, expected_version=1)
    assert info.value.actual_version == 2 and info.value.expected_version == 1
    assert isinstance(info.value, ConflictError) and not isinstance(info.value, AlreadyExistsError)
    got = await store.sessions.get("session_123")
    assert got.user_id is None and got.status is SessionStatus.IDLE
    # The right version goes through.
    await store.sessions.save(stale, expected_version=2)
    assert (await store.sessions.get("session_123")).user_id == "late writer"
    with pytest.raises(VersionMismatchError):
        await store.sessions.update("session_123", expected_version=1, user_id="x")
    assert await store.sessions.update("session_123", expected_version=3, user_id="y") == 4
    # expected_version=0 means "must not exist yet".
    await store.sessions.save(make_session("fresh"), expected_version=0)
    with pytest.raises(AlreadyExistsError):
        await store.sessions.save(make_session("fresh"), expected_version=0)


async def test_batches_load_the_write_script_when_the_server_lost_it(
    store: Store, sync_client: redis.Redis
) -> None:
    await store.sessions.save_many([make_session(f"b{i}") for i in range(3)])
    sync_client.script_flush()  # e.g. a restarted server: every EVALSHA replies NOSCRIPT
    saved = await store.sessions.save_many([await store.sessions.get(f"b{i}") for i in range(3)])
    assert [s.version for s in saved] == [2, 2, 2]
    got = await store.sessions.get_many(["b0", "b1", "b2", "nope"])
    assert [s.version if s else None for s in got] == [2, 2, 2, None]


async def test_a_refused_save_leaves_the_model_version_as_it_was(store: Store) -> None:
    s = await store.sessions.save(make_session())
    assert s.version == 1
    # A value that can't be stored: refused while encoding, the version is put back.
    s.context = {"when": datetime.now(timezone.utc)}
    with pytest.raises(InvalidQueryError):
        await store.sessions.save(s)
    assert s.version == 1
    s.context = {}
    stamped = s.updated_at
    assert (await store.sessions.save(s)).version == 2
    # The save stamps updated_at (UTC) and sets the version as assignments would.
    assert s.updated_at > stamped and s.updated_at.tzinfo is timezone.utc
    assert {"version", "updated_at"} <= s.model_fields_set
    assert await store.sessions.get(s.id) == s


@pytest.mark.parametrize("bad", ["abc", "1", 1.5, True, -1])
async def test_expected_version_must_be_a_non_negative_int(store: Store, bad: object) -> None:
    await store.sessions.save(make_session())
    with pytest.raises(InvalidQueryError, match="expected_version"):
        await store.sessions.save(make_session(), expected_version=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="expected_version"):
        await store.sessions.update("session_123", status="idle", expected_version=bad)  # type: ignore[arg-type]
    assert (await store.sessions.get("session_123")).version == 1


async def test_concurrent_writers_lose_nothing(store: Store) -> None:
    await store.sessions.save(make_session(context={"k": 0}))
    n = 40

    async def writer(i: int) -> None:
        if i % 2 == 0:
            await store.sessions.append_history(
                "session_123", HistoryEntry(role="user", content=f"m{i}")
            )
        else:
            await store.sessions.update("session_123", metadata={"last_writer": i})
            await store.sessions.update("session_123", backend_session_id=f"b{i}")

    await asyncio.gather(*(writer(i) for i in range(n)))
    got = await store.sessions.get("session_123")
    contents = sorted(e.content for e in got.history)
    assert contents == sorted(f"m{i}" for i in range(0, n, 2))
    assert got.total_queries == n // 2
    assert got.context == {"k": 0}
    assert got.metadata["last_writer"] % 2 == 1
    # 1 save + n/2 appends + 2 * n/2 updates, every one bumped the version exactly once.
    assert got.version == 1 + n // 2 + n


async def test_concurrent_saves_with_expected_version_serialise(store: Store) -> None:
    await store.sessions.save(make_session(total_queries=0))

    async def increment() -> None:
        while True:
            s = await store.sessions.get("session_123")
            s.total_queries += 1
            try:
                await store.sessions.save(s, expected_version=s.version)
                return
            except ConflictError:
                continue

    await asyncio.gather(*(increment() for _ in range(20)))
    assert (await store.sessions.get("session_123")).total_queries == 20


# ---------------------------------------------------------------- partial writes


async def test_update_writes_only_its_paths_and_validates(
    store: Store, sync_client: redis.Redis
) -> None:
    await store.sessions.save(make_session(context={"big": "x" * 1000}))
    key = f"{store.namespace}:session:session_123"
    # Another writer changes the context directly: update must not overwrite it.
    sync_client.execute_command("JSON.SET", key, "$.context.other", '"kept"')
    version = await store.sessions.update("session_123", status="completed", user_id="u9")
    assert version == 2
    got = await store.sessions.get("session_123")
    assert got.status is SessionStatus.COMPLETED and got.user_id == "u9"
    assert got.context == {"big": "x" * 1000, "other": "kept"}
    assert got.updated_at > got.created_at
    with pytest.raises(InvalidQueryError, match="status"):
        await store.sessions.update("session_123", status="exploded")
    with pytest.raises(InvalidQueryError, match="nonexistent"):
        await store.sessions.update("session_123", nonexistent=1)
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("session_123", version=99)
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("session_123", id="other")
    with pytest.raises(InvalidQueryError):
        await store.sessions.update("session_123")
    assert (await store.sessions.get("session_123")).version == 2


async def test_update_datetime_and_enum_values(store: Store, sync_client: redis.Redis) -> None:
    await store.sessions.save(make_session())
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    await store.sessions.update("session_123", last_active=when, backend=Backend.CUSTOM)
    raw = json.loads(
        sync_client.execute_command("JSON.GET", f"{store.namespace}:session:session_123")
    )
    assert raw["last_active"] == when.timestamp()
    assert raw["backend"] == "custom"
    got = await store.sessions.get("session_123")
    assert got.last_active == when and got.backend is Backend.CUSTOM


async def test_every_session_write_restarts_ttl(store: Store, sync_client: redis.Redis) -> None:
    key = f"{store.namespace}:session:session_123"
    await store.sessions.save(make_session(), ttl=100)
    assert 95 < ttl_seconds(sync_client, key) <= 100
    for write in (
        lambda: store.sessions.update("session_123", user_id="x"),
        lambda: store.sessions.append_history("session_123", {"role": "user", "content": "c"}),
        lambda: store.sessions.touch("session_123"),
    ):
        sync_client.pexpire(key, 50_000)
        await write()
        assert WEEK - 5 < ttl_seconds(sync_client, key) <= WEEK
    await store.sessions.touch("session_123", ttl=30)
    assert 25 < ttl_seconds(sync_client, key) <= 30
    await store.sessions.update("session_123", user_id="y", ttl=None)
    assert sync_client.ttl(key) == -1


async def test_execution_partial_writes_keep_ttl(store: Store, sync_client: redis.Redis) -> None:
    key = f"{store.namespace}:execution:exec_abc"
    await store.executions.save(ExecutionResult(id="exec_abc", flow_id="f", result={"a": 1}))
    assert 3595 < ttl_seconds(sync_client, key) <= 3600
    sync_client.pexpire(key, 100_000)
    await store.executions.update("exec_abc", status=ExecutionStatus.FAILED, error="boom")
    assert 95 < ttl_seconds(sync_client, key) <= 100  # kept, not slid
    got = await store.executions.get("exec_abc")
    assert got.status is ExecutionStatus.FAILED and got.error == "boom" and got.version == 2
    await store.executions.touch("exec_abc")
    assert 3595 < ttl_seconds(sync_client, key) <= 3600
    await store.executions.update("exec_abc", duration_ms=12.5, ttl=20)
    assert 15 < ttl_seconds(sync_client, key) <= 20


async def test_touch_sets_last_active(store: Store) -> None:
    old = datetime(2024, 1, 1, tzinfo=timezone.utc)
    await store.sessions.save(make_session(last_active=old))
    await store.sessions.touch("session_123")
    got = await store.sessions.get("session_123")
    assert got.last_active > old
    assert (datetime.now(timezone.utc) - got.last_active) < timedelta(minutes=1)


async def test_append_history(store: Store, sync_client: redis.Redis) -> None:
    await store.sessions.save(make_session(last_active=datetime(2024, 1, 1, tzinfo=timezone.utc)))
    await store.sessions.append_history(
        "session_123",
        HistoryEntry(role="user", content="hi"),
        {"role": "assistant", "content": "hello", "tokens": 12},
    )
    await store.sessions.append_history("session_123", {"q": "old-style", "a": "answer"})
    got = await store.sessions.get("session_123")
    assert [e.content for e in got.history] == ["hi", "hello", None]
    assert got.history[1].model_extra == {"tokens": 12}
    assert got.history[2].model_extra == {"q": "old-style", "a": "answer"}
    assert all(e.timestamp is not None for e in got.history)
    assert got.total_queries == 2
    assert got.last_active.year >= 2026
    # max_len keeps the newest entries only.
    for i in range(5):
        await store.sessions.append_history("session_123", {"role": "user", "content": f"n{i}"})
    await store.sessions.append_history(
        "session_123", {"role": "user", "content": "last"}, max_len=3
    )
    got = await store.sessions.get("session_123")
    assert [e.content for e in got.history] == ["n3", "n4", "last"]
    await store.sessions.append_history("session_123", {"content": "z"}, max_len=0)
    assert (await store.sessions.get("session_123")).history == []
    with pytest.raises(InvalidQueryError):
        await store.sessions.append_history("session_123")
    with pytest.raises(InvalidQueryError):
        await store.sessions.append_history("session_123", {"content": "x"}, max_len=-1)
    with pytest.raises(InvalidQueryError):
        await store.sessions.append_history("session_123", "not an entry")  # type: ignore[arg-type]


# ---------------------------------------------------------------- no resurrection


@pytest.mark.parametrize("write", ["update", "touch", "append_history"])
async def test_partial_writes_never_resurrect_expired_keys(store: Store, write: str) -> None:
    await store.sessions.save(make_session(), ttl=1)
    await asyncio.sleep(1.3)
    with pytest.raises(NotFoundError):
        if write == "update":
            await store.sessions.update("session_123", status="idle")
        elif write == "touch":
            await store.sessions.touch("session_123")
        else:
            await store.sessions.append_history("session_123", {"content": "late"})
    assert not await store.sessions.exists("session_123")
    assert await store.sessions.get_or_none("session_123") is None


async def test_partial_writes_never_resurrect_deleted_keys(store: Store) -> None:
    await store.sessions.save(make_session())
    assert await store.sessions.delete("session_123") is True
    assert await store.sessions.delete("session_123") is False
    with pytest.raises(NotFoundError):
        await store.sessions.update("session_123", status="idle")
    with pytest.raises(NotFoundError):
        await store.sessions.append_history("session_123", {"content": "x"})
    with pytest.raises(NotFoundError):
        await store.sessions.touch("session_123")
    assert not await store.sessions.exists("session_123")


# ---------------------------------------------------------------- batches


async def test_save_many_get_many_delete_many(store: Store, sync_client: redis.Redis) -> None:
    sessions = [make_session(f"s{i}", user_id=f"u{i}") for i in range(1203)]
    saved = await store.sessions.save_many(sessions, ttl=120)
    assert all(s.version == 1 for s in saved)
    ids = [f"s{i}" for i in range(1203)]
    for i in (0, 600, 1202):
        assert 115 < ttl_seconds(sync_client, f"{store.namespace}:session:s{i}") <= 120
    got = await store.sessions.get_many(["s5", "missing", "s1202", "s0"])
    assert [g.user_id if g else None for g in got] == ["u5", None, "u1202", "u0"]
    everything = await store.sessions.get_many(ids)
    assert [g.id for g in everything if g] == ids
    assert await store.sessions.delete_many([*ids[:1000], "missing"]) == 1000
    assert await store.sessions.get_many(["s0", "s1000"]) == [
        None,
        (await store.sessions.get("s1000")),
    ]
    assert await store.sessions.delete_many([]) == 0


# ---------------------------------------------------------------- corrupt records


async def test_legacy_string_key_is_corrupt_and_untouched(
    store: Store, sync_client: redis.Redis
) -> None:
    key = f"{store.namespace}:session:legacy_1"
    legacy = json.dumps({"id": "legacy_1", "backend": "flowise", "status": "running"})
    sync_client.set(key, legacy, ex=500)
    with pytest.raises(CorruptRecordError) as info:
        await store.sessions.get("legacy_1")
    assert info.value.key == key and "migrate" in str(info.value)
    with pytest.raises(CorruptRecordError):
        await store.sessions.get_many(["legacy_1"])
    with pytest.raises(CorruptRecordError, match="migrate up"):
        await store.sessions.save(make_session("legacy_1"))
    with pytest.raises(CorruptRecordError):
        await store.sessions.update("legacy_1", status="idle")
    with pytest.raises(CorruptRecordError):
        await store.sessions.append_history("legacy_1", {"content": "x"})
    with pytest.raises(CorruptRecordError):
        await store.sessions.insert(make_session("legacy_1"))
    assert sync_client.get(key) == legacy
    assert 490 < sync_client.ttl(key) <= 500


async def test_invalid_document_is_corrupt_and_untouched(
    store: Store, sync_client: redis.Redis
) -> None:
    key = f"{store.namespace}:session:bad_doc"
    doc = {"id": "bad_doc", "backend": "not-a-backend", "version": 1, "history": "oops"}
    sync_client.execute_command("JSON.SET", key, "$", json.dumps(doc))
    with pytest.raises(CorruptRecordError) as info:
        await store.sessions.get("bad_doc")
    assert "backend" in str(info.value) and key in str(info.value)
    with pytest.raises(CorruptRecordError):
        await store.sessions.get_many(["bad_doc"])
    # A partial write needing a path of the wrong type changes nothing at all.
    with pytest.raises(CorruptRecordError):
        await store.sessions.append_history("bad_doc", {"content": "x"})
    assert json.loads(sync_client.execute_command("JSON.GET", key)) == doc


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("bad_id", "reason"),
    [
        ("", "empty"),
        ("has space", "whitespace"),
        ("tab\there", "whitespace"),
        ("ctl\x01", "control"),
        ("glob*", "glob"),
        ("what?", "glob"),
        ("[abc]", "glob"),
        ("x" * 257, "257"),
    ],
)
async def test_invalid_ids(store: Store, bad_id: str, reason: str) -> None:
    with pytest.raises(InvalidIdError, match=reason):
        await store.sessions.get(bad_id)
    with pytest.raises(InvalidIdError, match=reason):
        await store.sessions.delete(bad_id)
    with pytest.raises(InvalidIdError, match=reason):
        Session(id=bad_id, backend="flowise")
    with pytest.raises(InvalidIdError):
        await store.sessions.get_many(["ok", bad_id])


async def test_invalid_id_type(store: Store) -> None:
    with pytest.raises(InvalidIdError, match="string"):
        await store.sessions.get(123)  # type: ignore[arg-type]


async def test_unicode_and_punctuation_ids_work(store: Store) -> None:
    for id in ("séance-ü", "a:b:c", "x@y.z", "semi;colon", "quote'\"", "{brace}"):
        await store.sessions.save(make_session(id))
        assert (await store.sessions.get(id)).id == id


# ---------------------------------------------------------------- isolation and models


async def test_enums_accept_string_values() -> None:
    s = Session(id="e", backend="langflow", status="idle")
    assert s.backend is Backend.LANGFLOW and s.status is SessionStatus.IDLE
    e = ExecutionResult(id="x", status="failed", backend="custom")
    assert e.status is ExecutionStatus.FAILED


async def test_model_io_methods_are_disabled() -> None:
    with pytest.raises(RuntimeError, match="repositories"):
        await Session.get("anything")


async def test_executions_repository(store: Store) -> None:
    e = ExecutionResult(
        id="exec_abc",
        session_id="session_123",
        flow_id="csv2507",
        backend="flowise",
        status=ExecutionStatus.COMPLETED,
        result={"text": "Structural tension is...", "items": [1, 2, 3]},
        duration_ms=1234,
    )
    await store.executions.save(e)
    got = await store.executions.get("exec_abc")
    assert got.result == e.result and got.duration_ms == 1234
    assert await store.executions.exists("exec_abc")
    assert await store.executions.delete("exec_abc")
    assert await store.executions.get_or_none("exec_abc") is None


@pytest.mark.parametrize(
    "bad_value",
    ["self-referencing", "lone surrogate"],
)
async def test_values_json_cannot_hold_are_a_typed_error(store: Store, bad_value: str) -> None:
    await store.sessions.save(make_session(context={"ok": 1}))
    if bad_value == "self-referencing":
        loop: dict[str, object] = {}
        loop["self"] = loop
        context: dict[str, object] = {"loop": loop}
    else:
        context = {"text": "a\ud800b"}
    with pytest.raises(InvalidQueryError, match="can't be stored as JSON"):
        await store.sessions.save(make_session(context=context))
    with pytest.raises(InvalidQueryError, match="can't be stored as JSON"):
        await store.sessions.update("session_123", context=context)
    with pytest.raises(InvalidQueryError, match="can't be stored as JSON"):
        await store.sessions.append_history("session_123", {"content": context})
    got = await store.sessions.get("session_123")
    assert got.context == {"ok": 1} and got.version == 1


def nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def test_values_nested_too_deep_for_the_server_write_nothing(
    store: Store, sync_client: redis.Redis
) -> None:
    # RedisJSON parses at most 127 levels of nesting per command. A partial write sends each
    # value with its own command, so a value the server refuses must be caught before the
    # first one: otherwise the fields before it would be written without a version bump.
    await store.sessions.save(make_session(context={"ok": 1}))
    key = f"{store.namespace}:session:session_123"
    before = sync_client.execute_command("JSON.GET", key)
    with pytest.raises(InvalidQueryError, match="nest"):
        await store.sessions.update("session_123", metadata={"x": 1}, context=nested(128))
    # One level less passes the server, but the document could not be saved back whole.
    with pytest.raises(InvalidQueryError, match="nest"):
        await store.sessions.update("session_123", metadata={"x": 1}, context=nested(127))
    entries = [{"content": str(i)} for i in range(1500)] + [{"content": nested(127)}]
    with pytest.raises(InvalidQueryError, match="nest"):
        await store.sessions.append_history("session_123", *entries)
    assert sync_client.execute_command("JSON.GET", key) == before
    # The deepest values that keep the whole document within the limit are stored, and the
    # document can still be saved back whole.
    await store.sessions.update("session_123", context=nested(126))
    await store.sessions.append_history("session_123", {"content": nested(124)})
    await store.sessions.save(await store.sessions.get("session_123"))


async def test_far_dates_round_trip(store: Store) -> None:
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    early = datetime(1000, 1, 1, tzinfo=timezone.utc)
    await store.sessions.save(make_session(created_at=early, last_active=far))
    got = await store.sessions.get("session_123")
    assert got.last_active == far and got.created_at == early


def test_invalid_assignment_fails_where_it_is_made() -> None:
    from pydantic import ValidationError

    s = make_session()
    s.status = "completed"  # type: ignore[assignment]  # a member's value is accepted
    assert s.status is SessionStatus.COMPLETED
    with pytest.raises(ValidationError):
        s.status = "bogus"  # type: ignore[assignment]
    with pytest.raises(ValidationError):
        s.current_flow_id = "x\x1fy"
    assert s.current_flow_id == "csv2507"
