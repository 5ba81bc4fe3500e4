"""Migrations against a real Redis: runner, lock, checkpoints, legacy import, index swaps."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from _counting_script import COUNTING_SCRIPT, counting_script
from pydantic import ValidationError

from flywheel_state import Settings, Store
from flywheel_state.errors import MigrationError, MigrationLockedError, SchemaOutOfDateError
from flywheel_state.indexes import alias_target, index_info
from flywheel_state.migrations import (
    MigrationProgress,
    MigrationRunner,
    ScriptDirectory,
    default_scripts,
)
from flywheel_state.models import Backend, Document, SessionStatus, register_upgrade

HEAD = default_scripts().head
DAY = 86400


# ---------------------------------------------------------------------- helpers


@pytest.fixture
async def bare(settings: Settings) -> AsyncIterator[Store]:
    """A Store that is not connected: its namespace has no revision applied."""
    store = Store(settings)
    yield store
    await store.close()


async def dump(store: Store) -> dict[str, Any]:
    """Every key of the namespace with type, value and TTL (seconds), plus its indexes."""
    client = store.client
    out: dict[str, Any] = {}
    async for raw in client.scan_iter(match=f"{store.namespace}:*", count=1000):
        key = raw.decode()
        ktype = (await client.type(key)).decode()
        if ktype == "string":
            value: Any = await client.get(key)
        elif ktype == "ReJSON-RL":
            value = await client.execute_command("JSON.GET", key)
        elif ktype == "hash":
            value = await client.hgetall(key)
        elif ktype == "list":
            value = await client.lrange(key, 0, -1)
        else:
            value = ktype
        out[key] = (ktype, value, await client.pttl(key))
    names = await client.execute_command("FT._LIST")
    out["<indexes>"] = sorted(n.decode() for n in names if n.decode().startswith(store.namespace))
    return out


def same_dump(before: dict[str, Any], after: dict[str, Any], slack_ms: int = 5000) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key == "<indexes>":
            assert after[key] == value
            continue
        ktype, content, pttl = value
        assert after[key][0] == ktype, key
        assert after[key][1] == content, key
        if pttl < 0:
            assert after[key][2] == pttl, key
        else:
            assert 0 <= pttl - after[key][2] <= slack_ms, key


def session_a(sid: str, **extra: Any) -> dict[str, Any]:
    """A shape A session as the redis.asyncio version wrote it."""
    doc = {
        "id": sid,
        "backend": "flowise",
        "backend_session_id": f"flowise_{sid}",
        "status": "running",
        "current_flow_id": "csv2507",
        "context": {"topic": "structural tension", "turn": 3},
        "history": [
            {"role": "user", "content": "hello", "timestamp": "2025-11-18T10:00:01.250000"},
            {"q": "what is structural tension?", "a": "the gap between vision and reality"},
        ],
        "metadata": {"source": "mcp"},
        "created_at": "2025-11-18 10:00:00.123456",  # str(datetime): a space, no T
        "last_active": "2025-11-18T10:05:00.654321",  # utcnow().isoformat()
    }
    doc.update(extra)
    return doc


def session_b(sid: str, **extra: Any) -> dict[str, Any]:
    """A shape B session (the MCP-tool version): datetimes inside metadata."""
    doc = {
        "_schema_version": "1.0",
        "id": sid,
        "backend": "langflow",
        "backend_session_id": None,
        "status": "active",
        "current_flow_id": "rise_framework",
        "context": {},
        "history": [{"role": "assistant", "content": "hi", "timestamp": "2025-11-17T08:00:00"}],
        "metadata": {
            "created_at": "2025-11-17T07:59:00",
            "last_active": "2025-11-17 08:00:00.5",
            "client": "claude",
        },
    }
    doc.update(extra)
    return doc


def utc(text: str) -> datetime:
    """A naive ISO datetime (either separator, any fraction length) read as UTC."""
    layout = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(text.replace(" ", "T"), layout).replace(tzinfo=timezone.utc)


async def write_legacy(store: Store, values: dict[str, tuple[Any, int | None]]) -> None:
    """SET each key (under the namespace) to json.dumps(value) with a TTL in seconds."""
    async with store.client.pipeline(transaction=False) as pipe:
        for suffix, (value, ttl) in values.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            pipe.set(f"{store.namespace}:{suffix}", text, ex=ttl)
        await pipe.execute()


def script_dir(tmp_path: Path, *names: str, extra: dict[str, str] | None = None) -> ScriptDirectory:
    """A script directory holding copies of shipped scripts plus test-only ones."""
    src = default_scripts().path
    for name in names:
        shutil.copy(src / name, tmp_path / name)
    for name, text in (extra or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return ScriptDirectory(tmp_path)


# ---------------------------------------------------------------------- connect and status


async def test_upgrade_of_an_empty_namespace_creates_indexes_and_records(store: Store) -> None:
    status = await store.migrations.status()
    assert status.current == HEAD and status.up_to_date and status.pending == ()
    client = store.client
    for kind in ("session", "execution"):
        assert (
            await alias_target(client, store.namespace, kind) == f"{store.namespace}:{kind}:idx:v1"
        )
    records = await store.migrations.history()
    assert [(r.action, r.revision) for r in records] == [
        ("upgrade", "0001"),
        ("upgrade", "0002"),
        ("upgrade", "0003"),
    ]
    assert all(r.host == socket.gethostname() and r.pid == os.getpid() for r in records)
    assert [r.revision for r in status.applied] == ["0001", "0002", "0003"]
    assert records[1].from_revision == "0001" and records[1].to_revision == "0002"
    # Connecting again without auto_migrate is fine now, and upgrading again does nothing.
    async with Store(store.settings) as again:
        report = await again.migrations.upgrade()
        assert report.steps == [] and report.to_revision == HEAD


async def test_store_raises_when_behind(bare: Store) -> None:
    with pytest.raises(SchemaOutOfDateError, match="migrate up"):
        await bare.connect()
    await bare.migrations.upgrade("0001")
    with pytest.raises(SchemaOutOfDateError, match=r"0001.*2 pending: 0002, 0003"):
        await bare.connect()
    async with Store(bare.settings, auto_migrate=True) as store:
        assert (await store.migrations.status()).up_to_date


async def test_store_raises_when_ahead(bare: Store) -> None:
    await bare.migrations.upgrade()
    await bare.client.set(f"{bare.namespace}:_migrations:revision", "0099")
    for auto in (False, True):
        with pytest.raises(SchemaOutOfDateError, match=r"0099.*newer"):
            await Store(bare.settings, auto_migrate=auto).connect()
    status = await bare.migrations.status()
    assert not status.known and not status.up_to_date
    with pytest.raises(SchemaOutOfDateError):
        await bare.migrations.upgrade()


async def test_unknown_and_wrong_way_targets_are_rejected(bare: Store) -> None:
    with pytest.raises(MigrationError, match="unknown revision"):
        await bare.migrations.upgrade("0042")
    await bare.migrations.upgrade()
    with pytest.raises(MigrationError, match="use downgrade"):
        await bare.migrations.upgrade("0001")
    await bare.migrations.downgrade("0001_initial")  # a file stem works as well
    with pytest.raises(MigrationError, match="use upgrade"):
        await bare.migrations.downgrade("0002")
    assert await bare.migrations.current() == "0001"


# ---------------------------------------------------------------------- legacy import


async def test_legacy_import_keeps_every_field_and_ttl(bare: Store) -> None:
    await bare.migrations.upgrade("0001")
    ns = bare.namespace
    a = session_a("s_a", expires_at="2025-11-25T10:00:00", user_id="u1", total_queries=4)
    b = session_b("s_b", status="hibernating", weird=[1, 2])
    exec_a = {"result": "Structural tension is...", "metadata": {"duration_ms": 1234}}
    exec_b = {
        "execution_id": "exec_b",
        "result": {"answer": 42},
        "cached_at": "2025-11-18T10:00:00",
    }
    flow = {
        "session_id": "s_a",
        "flow_id": "csv2507",
        "executions": [{"execution_id": "exec_b", "ok": True}],
        "cached_at": "2025-11-18 11:00:00",
    }
    await write_legacy(
        bare,
        {
            "session:s_a": (a, 7 * DAY),
            "session:s_b": (b, 3 * DAY),
            "session:no_ttl": (session_a("no_ttl"), None),
            "session:garbage": ("not json {", DAY),
            "execution:exec_a": (exec_a, 3600),
            "execution:exec_b": (exec_b, DAY),
            "history:s_a:csv2507": (flow, 900),
        },
    )
    ttls_before = {k: await bare.client.pttl(f"{ns}:{k}") for k in ("session:s_a", "session:s_b")}

    report = await bare.migrations.upgrade()
    step = report.steps[0]
    # 6 strings rewritten, and the flow history's one execution written as an ExecutionResult
    assert step.revision == "0002" and step.documents_changed == 7
    messages = {(p.key.rsplit(":", 1)[1], p.field): p for p in step.problems}
    assert messages[("s_b", "status")].value == "hibernating"
    assert "stored as idle" in messages[("s_b", "status")].message
    assert ("garbage", None) in messages  # reported and left as it was
    assert await bare.client.get(f"{ns}:session:garbage") == b"not json {"

    async with Store(bare.settings) as store:
        sa = await store.sessions.get("s_a")
        assert sa.backend is Backend.FLOWISE and sa.status is SessionStatus.RUNNING
        assert sa.backend_session_id == "flowise_s_a" and sa.current_flow_id == "csv2507"
        assert sa.context == a["context"]
        assert sa.created_at == utc("2025-11-18 10:00:00.123456")
        assert sa.last_active == utc("2025-11-18T10:05:00.654321")
        assert sa.user_id == "u1" and sa.total_queries == 4
        assert sa.metadata["source"] == "mcp"
        assert sa.metadata["expires_at"] == "2025-11-25T10:00:00"  # unknown field kept
        first, second = sa.history
        assert (first.role, first.content) == ("user", "hello")
        assert first.timestamp == utc("2025-11-18T10:00:01.25")
        assert second.model_extra == {"q": a["history"][1]["q"], "a": a["history"][1]["a"]}
        assert sa.schema_version == 1 and sa.version == 1

        sb = await store.sessions.get("s_b")
        assert sb.backend is Backend.LANGFLOW
        assert sb.status is SessionStatus.IDLE  # unknown "hibernating": kept with a fallback
        assert sb.metadata["_legacy"]["raw"]["status"] == {"value": "hibernating", "stored": "idle"}
        assert sb.created_at == utc("2025-11-17T07:59:00")
        assert sb.last_active == utc("2025-11-17 08:00:00.5")
        assert sb.metadata["client"] == "claude" and sb.metadata["weird"] == [1, 2]
        assert "created_at" not in {k for k in sb.metadata if k != "_legacy"}

        for key, before in ttls_before.items():
            after = await store.client.pttl(f"{ns}:{key}")
            assert 0 <= before - after < 5000, key
        assert await store.client.pttl(f"{ns}:session:no_ttl") == -1

        ea = await store.executions.get("exec_a")
        assert ea.result == exec_a and ea.duration_ms == 1234
        eb = await store.executions.get("exec_b")
        assert eb.result == {"answer": 42} and eb.created_at == utc("2025-11-18T10:00:00")
        assert 3500_000 < await store.client.pttl(f"{ns}:execution:exec_a") <= 3600_000

        # The flow history: one ExecutionResult per execution, found by session and flow.
        assert await store.client.exists(f"{ns}:history:s_a:csv2507") == 0
        found = (await store.executions.find(session_id="s_a", flow_id="csv2507")).items
        assert [e.result for e in found] == flow["executions"]
        assert found[0].created_at == utc("2025-11-18 11:00:00")  # cached_at
        assert 0 < await store.client.pttl(store.executions.key(found[0].id)) <= 900_000

        # Converted documents are in the index (same key prefix) and queryable.
        assert {s.id for s in (await store.sessions.find(status="idle")).items} == {"s_b"}
        assert await store.sessions.count(backend="flowise") == 2


async def test_downgrade_then_upgrade_round_trips(bare: Store) -> None:
    await bare.migrations.upgrade("0001")
    ns = bare.namespace
    originals: dict[str, Any] = {
        "session:a1": session_a("a1"),
        "session:b1": session_b("b1", status="paused", extra_field={"x": 1}),
        "session:a2": session_a("a2", status="SessionStatus.COMPLETED", backend="LANGFLOW"),
        "execution:e_a": {"result": "text", "metadata": {"duration_ms": 12}},
        "execution:e_b": {
            "execution_id": "e_b",
            "result": [1, 2],
            "cached_at": "2025-11-18T09:00:00",
        },
        "history:a1:f": {"session_id": "a1", "flow_id": "f", "executions": [], "cached_at": "x?"},
        "history:a2:g": {
            "session_id": "a2",
            "flow_id": "g",
            "executions": [{"execution_id": "e1", "status": "done"}, {"q": 1}, "text"],
            "cached_at": "2025-11-18 11:00:00",
            "note": "kept",
        },
    }
    await write_legacy(bare, {k: (v, 5 * DAY) for k, v in originals.items()})
    await bare.migrations.upgrade()
    first = await dump(bare)

    report = await bare.migrations.downgrade("0001")
    assert [s.revision for s in report.steps] == ["0003", "0002"]
    assert report.steps[0].documents_changed == 1  # the flow history with executions
    assert report.steps[1].documents_changed == len(originals)
    for suffix, original in originals.items():
        key = f"{ns}:{suffix}"
        assert await bare.client.type(key) == b"string"
        assert json.loads(await bare.client.get(key)) == original, suffix
        assert 5 * DAY * 1000 - 10_000 < await bare.client.pttl(key) <= 5 * DAY * 1000
    assert await bare.migrations.current() == "0001"

    await bare.migrations.upgrade()
    second = await dump(bare)
    assert second.keys() == first.keys()
    for key, entry in first.items():
        if key.endswith(":execution:e_a"):  # shape A has no timestamp: import time is used
            continue
        if key.startswith(f"{ns}:_migrations:"):  # bookkeeping (history grows)
            continue
        if key == "<indexes>":
            assert second[key] == entry
            continue
        assert second[key][:2] == entry[:2], key
    # Down to base drops the indexes and their aliases, keeping the documents.
    await bare.migrations.downgrade("base")
    assert await index_info(bare.client, f"{ns}:session:idx") is None
    assert await bare.migrations.current() is None
    assert await bare.client.type(f"{ns}:session:a1") == b"string"


async def test_downgrade_restores_history_items_as_written(bare: Store) -> None:
    # The original wrote history with json.dumps(default=str): a datetime in an item became
    # str(datetime) (a space, no T); other writers used "Z", epoch numbers, or explicit nulls.
    await bare.migrations.upgrade("0001")
    history = [
        {"role": "user", "content": "hi", "timestamp": "2025-11-18 10:00:01.250000"},
        {"role": "assistant", "content": "yo", "timestamp": "2025-11-18T10:00:02Z"},
        {"role": "user", "content": "x", "timestamp": 1763460003},
        {"role": "user", "content": None, "timestamp": None},
        {"q": "what?", "a": "that", "role": None},
    ]
    original = session_a("h1", history=history)
    await write_legacy(bare, {"session:h1": (original, DAY)})
    await bare.migrations.upgrade()
    async with Store(bare.settings) as store:
        first, second, third, *_ = (await store.sessions.get("h1")).history
        assert first.timestamp == utc("2025-11-18 10:00:01.25")
        assert second.timestamp == utc("2025-11-18T10:00:02")
        assert third.timestamp == datetime.fromtimestamp(1763460003, timezone.utc)
    await bare.migrations.downgrade("0001")
    assert json.loads(await bare.client.get(f"{bare.namespace}:session:h1")) == original


async def test_datetimes_out_of_range_are_reported_not_fatal(bare: Store) -> None:
    # One record with an absurd date must not stop the import of every other one.
    await bare.migrations.upgrade("0001")
    originals = {
        "session:far": session_a("far", created_at=1e20, last_active="junk"),
        "session:early": session_a("early", created_at="0001-01-01T00:00:00+01:00"),
        "session:late": session_a("late", created_at="9999-12-31T23:59:59"),  # read back as ms
        "session:item": session_a("item", history=[{"role": "user", "timestamp": 1e20}]),
        "session:fine": session_a("fine"),
    }
    await write_legacy(bare, {k: (v, DAY) for k, v in originals.items()})
    report = await bare.migrations.upgrade()
    assert report.steps[0].documents_changed == 5
    fields = {(p.key.rsplit(":", 1)[1], p.field) for p in report.steps[0].problems}
    for name in ("far", "early", "late"):
        assert (name, "created_at") in fields
    assert ("item", "history.0.timestamp") in fields
    async with Store(bare.settings) as store:
        late = await store.sessions.get("late")
        assert late.created_at == utc(originals["session:late"]["last_active"])  # fallback
    await bare.migrations.downgrade("0001")
    for suffix, original in originals.items():
        raw = await bare.client.get(f"{bare.namespace}:{suffix}")
        assert json.loads(raw) == original, suffix


async def test_dry_run_writes_nothing(bare: Store) -> None:
    ns = bare.namespace
    await write_legacy(
        bare,
        {
            "session:a": (session_a("a"), DAY),
            "session:b": (session_b("b", status="zombie"), 2 * DAY),
            "execution:e": ({"x": 1}, 600),
        },
    )
    before = await dump(bare)
    report = await bare.migrations.upgrade(dry_run=True)
    assert report.dry_run and [s.revision for s in report.steps] == ["0001", "0002", "0003"]
    assert f"would create index {ns}:session:idx:v1" in report.steps[0].actions
    legacy = report.steps[1]
    assert legacy.documents_changed == 3 and legacy.documents_scanned == 3
    assert {s["key"] for s in legacy.samples} == {
        f"{ns}:session:a",
        f"{ns}:session:b",
        f"{ns}:execution:e",
    }
    assert any(p.value == "zombie" for p in legacy.problems)
    same_dump(before, await dump(bare))
    # Same at revision 0001 (indexes present, bookkeeping present), and for a downgrade.
    await bare.migrations.upgrade("0001")
    before = await dump(bare)
    await bare.migrations.upgrade(dry_run=True)
    await bare.migrations.downgrade("base", dry_run=True)
    same_dump(before, await dump(bare))
    await bare.migrations.upgrade()
    before = await dump(bare)
    report = await bare.migrations.downgrade("base", dry_run=True)
    assert [s.revision for s in report.steps] == ["0003", "0002", "0001"]
    assert report.steps[1].documents_changed == 3
    same_dump(before, await dump(bare))


# ---------------------------------------------------------------------- interruption and resume


async def test_interrupted_run_resumes_and_rewrites_each_document_once(bare: Store) -> None:
    runner = MigrationRunner(bare, batch_size=100)
    await runner.upgrade("0001")
    n = 1000
    await write_legacy(bare, {f"session:s{i}": (session_a(f"s{i}"), DAY) for i in range(n)})
    events: list[MigrationProgress] = []

    def stop_after_three(event: MigrationProgress) -> None:
        events.append(event)
        if len(events) == 3:
            raise RuntimeError("injected failure")

    with pytest.raises(MigrationError, match="injected failure"):
        await runner.upgrade(progress=stop_after_three)
    status = await runner.status()
    assert status.current == "0001" and status.interrupted is not None
    assert status.interrupted["revision"] == "0002"
    assert status.lock_holder is None  # released on the way out
    with pytest.raises(SchemaOutOfDateError, match="interrupted"):
        await Store(bare.settings).connect()
    converted_first = await _json_keys(bare)
    assert 300 <= len(converted_first) < n

    report = await runner.upgrade(progress=events.append)
    step = report.steps[0]
    assert step.resumed
    assert step.documents_changed == n  # exact, counted with the writes, across both runs
    assert await _json_keys(bare) == {f"{bare.namespace}:session:s{i}" for i in range(n)}
    async with Store(bare.settings) as store:
        docs = await store.sessions.get_many([f"s{i}" for i in range(n)])
        assert all(d is not None and d.version == 1 for d in docs)  # written exactly once
    record = [r for r in await runner.history() if r.revision == "0002"][-1]
    assert record.documents_changed == n
    assert (await runner.status()).up_to_date
    assert events[-1].done and events[-1].changed == n


async def test_failure_mid_batch_resumes_without_transforming_twice(
    bare: Store, tmp_path: Path
) -> None:
    scripts = script_dir(tmp_path, "0001_initial.py", extra={"0002_count.py": COUNTING_SCRIPT})
    runner = MigrationRunner(bare, scripts=scripts, batch_size=100)
    module = scripts.get("0002").module
    module.FAIL_AT = 250  # inside the third batch, while the second one's writes are in flight
    n = 1000
    await write_legacy(bare, {f"item:{i}": (f"v{i}", DAY) for i in range(n)})

    with pytest.raises(MigrationError, match="injected failure mid-batch"):
        await runner.upgrade()
    done_first = await _json_keys(bare)
    transformed_first = set(module.CALLS)
    assert done_first <= transformed_first and len(done_first) >= 100

    module.FAIL_AT = None
    module.CALLS.clear()
    report = await runner.upgrade()
    transformed_second = set(module.CALLS)
    # Nothing rewritten by the first run is transformed again, and all ends up rewritten.
    assert not transformed_second & done_first
    assert len(module.CALLS) == len(transformed_second)
    assert done_first | transformed_second == {f"{bare.namespace}:item:{i}" for i in range(n)}
    assert report.steps[0].documents_changed == n and report.steps[0].resumed
    values = await bare.client.execute_command(
        "JSON.MGET", *[f"{bare.namespace}:item:{i}" for i in range(n)], "$.value"
    )
    assert [json.loads(v)[0] for v in values] == [f"v{i}" for i in range(n)]
    assert (await runner.history())[-1].documents_changed == n
    with pytest.raises(MigrationError, match="irreversible: test script"):
        await runner.downgrade("0001")


async def test_a_key_changed_between_read_and_write_is_read_again(
    bare: Store, tmp_path: Path, redis_url: str
) -> None:
    """The rewrite writes only over the value it read: a writer's change in between (here one
    of the same length) is read and transformed again; a key that keeps changing is left as
    it is and reported."""
    scripts = script_dir(tmp_path, "0001_initial.py", extra={"0002_count.py": COUNTING_SCRIPT})
    runner = MigrationRunner(bare, scripts=scripts, batch_size=100)
    module = scripts.get("0002").module
    ns = bare.namespace
    n = 300
    # Multi-byte text among them: the script splits its arguments by byte lengths.
    values = {i: f"v{i:03d}" + ("é中😀" * (i % 4)) for i in range(n)}
    await write_legacy(bare, {f"item:{i}": (v, DAY) for i, v in values.items()})
    writer = redis.Redis.from_url(redis_url)
    changes = 0

    def change(key: str, raw: bytes) -> None:  # runs between the batch's read and its write
        nonlocal changes
        if key == f"{ns}:item:5" and raw == values[5].encode():
            writer.set(key, "w" + values[5][1:], keepttl=True)
        elif key == f"{ns}:item:6":
            changes += 1
            writer.set(key, f"x{changes:03d}", keepttl=True)

    module.BEFORE_TRANSFORM = change
    try:
        report = await runner.upgrade()
    finally:
        writer.close()
    step = report.steps[-1]
    assert step.revision == "0002" and step.documents_changed == n - 1
    assert module.CALLS.count(f"{ns}:item:5") == 2
    assert json.loads(await bare.client.execute_command("JSON.GET", f"{ns}:item:5")) == {
        "value": "w" + values[5][1:]
    }
    assert 0 < await bare.client.pttl(f"{ns}:item:5") <= DAY * 1000
    others = [i for i in range(n) if i not in (5, 6)]
    docs = await bare.client.execute_command(
        "JSON.MGET", *[f"{ns}:item:{i}" for i in others], "$.value"
    )
    assert [json.loads(d)[0] for d in docs] == [values[i] for i in others]
    # item 6 changed before every write: left as the writer left it, and reported.
    assert await bare.client.get(f"{ns}:item:6") == f"x{changes:03d}".encode()
    assert [p.message for p in step.problems if p.key == f"{ns}:item:6"] == [
        "kept changing during the migration; left as it was"
    ]


async def _json_keys(store: Store) -> set[str]:
    keys: set[str] = set()
    async for raw in store.client.scan_iter(
        match=f"{store.namespace}:*", count=1000, _type="ReJSON-RL"
    ):
        keys.add(raw.decode())
    return keys


# ---------------------------------------------------------------------- the lock


_GATED_SCRIPT = '''
    """Test-only: an upgrade that waits for the test to let it finish."""
    from __future__ import annotations

    import asyncio

    revision = "0002"
    down_revision = "0001"
    description = "gated"

    STARTED = asyncio.Event()
    GATE = asyncio.Event()


    async def upgrade(ctx):
        STARTED.set()
        await GATE.wait()


    async def downgrade(ctx):
        pass
'''


async def test_a_second_runner_is_locked_out_or_waits(bare: Store, tmp_path: Path) -> None:
    scripts = script_dir(tmp_path, "0001_initial.py", extra={"0002_gated.py": _GATED_SCRIPT})
    module = scripts.get("0002").module
    module.STARTED, module.GATE = asyncio.Event(), asyncio.Event()
    first = MigrationRunner(bare, scripts=scripts, lock_ttl=0.5)
    task = asyncio.create_task(first.upgrade())
    await asyncio.wait_for(module.STARTED.wait(), 10)
    other_store = Store(bare.settings)
    second = MigrationRunner(other_store, scripts=scripts)
    try:
        await asyncio.sleep(1.0)  # twice the lock's TTL: only renewal keeps it held
        with pytest.raises(MigrationLockedError) as info:
            await second.upgrade()
        message = str(info.value)
        assert socket.gethostname() in message and f"pid {os.getpid()}" in message
        assert "upgrade to head" in message and info.value.holder
        status = await second.status()
        assert status.lock_holder is not None and status.lock_holder["pid"] == os.getpid()
        assert status.interrupted is not None  # the step in progress is visible
        with pytest.raises(MigrationLockedError):
            await second.upgrade(wait=True, wait_timeout=0.3)
        waiting = asyncio.create_task(second.upgrade(wait=True, wait_timeout=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        module.GATE.set()
        first_report = await task
        assert [s.revision for s in first_report.steps] == ["0001", "0002"]
        report = await waiting
        assert report.steps == [] and report.to_revision == "0002"  # nothing left to do
    finally:
        module.GATE.set()
        await other_store.close()
    assert await bare.client.exists(f"{bare.namespace}:_migrations:lock") == 0


async def test_lock_is_renewed_while_held_and_released_only_if_ours(bare: Store) -> None:
    from flywheel_state.migrations._lock import MigrationLock

    key = f"{bare.namespace}:_migrations:lock"
    lock = MigrationLock(bare.client, key, purpose="test", ttl=0.3)
    await lock.acquire()
    await asyncio.sleep(0.8)  # well past the TTL: only renewal keeps it
    assert not lock.lost and await bare.client.exists(key)
    rival = MigrationLock(bare.client, key, purpose="rival", ttl=5)
    with pytest.raises(MigrationLockedError, match="pid"):
        await rival.acquire()
    # Someone else takes over (our lock expired while we were paused): we must not delete it.
    await bare.client.set(key, "someone else", px=5000)
    await asyncio.sleep(0.3)
    assert lock.lost
    with pytest.raises(MigrationError, match="lost"):
        lock.check()
    await lock.release()
    assert await bare.client.get(key) == b"someone else"


# ---------------------------------------------------------------------- index swap


_INDEX_V2 = '''
    """Test-only: session index v2 (adds backend_session_id)."""
    from __future__ import annotations

    from flywheel_state.indexes import IndexField, IndexSpec

    revision = "0003"
    down_revision = "0002"
    description = "session index v2"

    V1 = IndexSpec("session", 1, (
        IndexField("backend", "TAG"),
        IndexField("status", "TAG"),
        IndexField("current_flow_id", "TAG"),
        IndexField("user_id", "TAG"),
        IndexField("created_at", "NUMERIC", sortable=True),
        IndexField("last_active", "NUMERIC", sortable=True),
    ))
    V2 = IndexSpec("session", 2, V1.fields + (IndexField("backend_session_id", "TAG"),))


    async def upgrade(ctx):
        await ctx.ops.swap_index(V2)


    async def downgrade(ctx):
        await ctx.ops.swap_index(V1)
'''


async def test_index_swap_answers_complete_results_while_the_new_index_builds(
    bare: Store, tmp_path: Path
) -> None:
    scripts = script_dir(
        tmp_path,
        "0001_initial.py",
        "0002_import_legacy_strings.py",
        extra={"0003_session_index_v2.py": _INDEX_V2},
    )
    runner = MigrationRunner(bare, scripts=scripts)
    await runner.upgrade("0002")
    ns = bare.namespace
    n = 20_000
    doc = json.loads(json.dumps(_stored_session()))
    for start in range(0, n, 2000):
        async with bare.client.pipeline(transaction=False) as pipe:
            for i in range(start, start + 2000):
                doc["id"] = f"s{i}"
                pipe.execute_command("JSON.SET", f"{ns}:session:s{i}", "$", json.dumps(doc))
            await pipe.execute()
    alias = f"{ns}:session:idx"
    await _wait_indexed(bare, alias, n)

    totals: list[int] = []
    building: list[bool] = []
    stop = asyncio.Event()

    async def query() -> None:
        client = Store(bare.settings).client
        while not stop.is_set():
            reply = await client.execute_command("FT.SEARCH", alias, "*", "LIMIT", "0", "0")
            totals.append(int(reply[0]))
            info = await index_info(client, f"{ns}:session:idx:v2")
            building.append(info is not None and int(info["indexing"]) == 1)
            await asyncio.sleep(0.005)  # a steady query load that leaves the server room
        await client.aclose()

    task = asyncio.create_task(query())
    try:
        report = await runner.upgrade()
    finally:
        stop.set()
        await task
    assert totals and all(t == n for t in totals), sorted(set(totals))
    assert any(building), "no query ran while the new index was building"
    assert any(
        a.startswith(f"pointed alias {alias} at {ns}:session:idx:v2")
        for a in report.steps[0].actions
    )
    assert await alias_target(bare.client, ns, "session") == f"{ns}:session:idx:v2"
    assert await index_info(bare.client, f"{ns}:session:idx:v1") is None
    hits = await bare.client.execute_command(
        "FT.SEARCH", alias, "@backend_session_id:{fx}", "LIMIT", "0", "0"
    )
    assert int(hits[0]) == n

    await runner.downgrade("0002")
    assert await alias_target(bare.client, ns, "session") == f"{ns}:session:idx:v1"
    assert await index_info(bare.client, f"{ns}:session:idx:v2") is None
    reply = await bare.client.execute_command("FT.SEARCH", alias, "*", "LIMIT", "0", "0")
    assert int(reply[0]) == n


def _stored_session() -> dict[str, Any]:
    from flywheel_state.models import Session

    return json.loads(
        Session(
            id="x", backend="flowise", status="active", backend_session_id="fx"
        ).model_dump_json()
    )


async def _wait_indexed(store: Store, name: str, n: int) -> None:
    for _ in range(600):
        info = await index_info(store.client, name)
        if info is not None and int(info["num_docs"]) == n and not int(info["indexing"]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {n} documents")


# ---------------------------------------------------------------------- schema versions


_NOTES_V2 = '''
    """Test-only: note documents move from schema v1 (name) to v2 (title)."""
    from __future__ import annotations

    from typing import Any, ClassVar

    from aredis_om import Field

    from flywheel_state.models import Document
    from flywheel_state.models._types import Id
    from flywheel_state.models import register_upgrade

    revision = "0004"
    down_revision = "0003"
    description = "notes v2"


    class Note(Document):
        KIND: ClassVar[str] = "note_mig"
        SCHEMA_VERSION: ClassVar[int] = 2
        id: Id = Field(primary_key=True)
        title: str


    @register_upgrade("note_mig", 1)
    def _name_to_title(doc: dict[str, Any]) -> dict[str, Any]:
        doc["title"] = doc.pop("name")
        return doc


    async def upgrade(ctx):
        await ctx.ops.upgrade_documents(Note)


    async def downgrade(ctx):
        raise ctx.irreversible("titles stay")
'''


class _Doc(Document):
    KIND = "doc_versions_test"
    SCHEMA_VERSION = 3
    id: str
    title: str
    tags: list[str] = []


@register_upgrade("doc_versions_test", 1)
def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    doc["title"] = doc.pop("name")
    return doc


@register_upgrade("doc_versions_test", 2)
def _v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
    doc["tags"] = [t.strip() for t in doc.pop("tag_csv", "").split(",") if t.strip()]
    return doc


def test_models_read_older_schema_versions_by_upgrading_in_memory() -> None:
    v1 = '{"schema_version": 1, "version": 7, "id": "d", "name": "hello", "tag_csv": "a, b"}'
    doc = _Doc.model_validate_json(v1)
    assert (doc.title, doc.tags, doc.schema_version, doc.version) == ("hello", ["a", "b"], 3, 7)
    v2 = {"schema_version": 2, "id": "d", "title": "t"}
    assert _Doc.model_validate(v2).tags == []
    current = _Doc.model_validate_json('{"schema_version": 3, "id": "d", "title": "t"}')
    assert current.title == "t"
    assert _Doc(id="new", title="t").schema_version == 3  # new objects get the current version
    with pytest.raises(ValidationError, match="newer than this code"):
        _Doc.model_validate_json('{"schema_version": 4, "id": "d", "title": "t"}')
    with pytest.raises(ValidationError, match="no upgrade registered"):
        _Doc.model_validate_json('{"schema_version": 0, "id": "d", "title": "t"}')


async def test_upgrade_documents_rewrites_older_versions_keeping_ttl(
    store: Store, tmp_path: Path
) -> None:
    scripts = script_dir(
        tmp_path,
        "0001_initial.py",
        "0002_import_legacy_strings.py",
        "0003_flow_history_executions.py",
        extra={"0004_notes_v2.py": _NOTES_V2},
    )
    ns = store.namespace
    async with store.client.pipeline(transaction=False) as pipe:
        for i in range(120):
            doc = {"schema_version": 1, "version": 3, "id": f"n{i}", "name": f"note {i}"}
            pipe.execute_command("JSON.SET", f"{ns}:note_mig:n{i}", "$", json.dumps(doc))
            pipe.expire(f"{ns}:note_mig:n{i}", DAY)
        current = {"schema_version": 2, "version": 1, "id": "cur", "title": "already"}
        pipe.execute_command("JSON.SET", f"{ns}:note_mig:cur", "$", json.dumps(current))
        await pipe.execute()
    runner = MigrationRunner(store, scripts=scripts, batch_size=50)
    report = await runner.upgrade()
    assert report.steps[0].documents_changed == 120
    for i in (0, 77, 119):
        raw = json.loads(await store.client.execute_command("JSON.GET", f"{ns}:note_mig:n{i}"))
        assert raw == {"schema_version": 2, "version": 3, "id": f"n{i}", "title": f"note {i}"}
        assert DAY * 1000 - 10_000 < await store.client.pttl(f"{ns}:note_mig:n{i}") <= DAY * 1000
    raw = json.loads(await store.client.execute_command("JSON.GET", f"{ns}:note_mig:cur"))
    assert raw == current and await store.client.pttl(f"{ns}:note_mig:cur") == -1


# ---------------------------------------------------------------------- stamp and scripts


async def test_stamp_records_a_revision_without_running_it(bare: Store) -> None:
    record = await bare.migrations.stamp("head")
    assert record.action == "stamp" and record.to_revision == HEAD
    status = await bare.migrations.status()
    assert status.current == HEAD and status.up_to_date
    assert await index_info(bare.client, f"{bare.namespace}:session:idx") is None  # nothing ran
    await bare.migrations.stamp("0001")
    assert [r.revision for r in (await bare.migrations.status()).applied] == ["0001"]
    await bare.migrations.stamp("base")
    assert await bare.migrations.current() is None
    assert [r.action for r in await bare.migrations.history()] == ["stamp"] * 3
    with pytest.raises(MigrationError, match="unknown revision"):
        await bare.migrations.stamp("0042")


def test_new_script_from_template_follows_the_head(tmp_path: Path) -> None:
    scripts = script_dir(tmp_path, "0001_initial.py", "0002_import_legacy_strings.py")
    path = scripts.new("Add a field: user's locale!")
    assert path.name == "0003_add_a_field_user_s_locale.py"
    text = path.read_text()
    assert 'revision = "0003"' in text and 'down_revision = "0002"' in text
    assert 'description = "Add a field: user\'s locale!"' in text
    reloaded = ScriptDirectory(tmp_path)
    assert reloaded.head == "0003" and reloaded.get("0003").down_revision == "0002"
    with pytest.raises(MigrationError, match="one non-empty line"):
        scripts.new("two\nlines")


def test_a_branched_history_is_refused(tmp_path: Path) -> None:
    branch = counting_script("0003", "0001")  # a second child of 0001
    scripts = script_dir(
        tmp_path,
        "0001_initial.py",
        extra={"0002_a.py": COUNTING_SCRIPT, "0003_b.py": branch},
    )
    with pytest.raises(MigrationError, match="linear"):
        _ = scripts.scripts


def test_legacy_datetime_parser_reads_both_formats_as_utc() -> None:
    legacy = default_scripts().get("0002").module
    expected = utc("2025-11-18T10:00:00.5").timestamp()
    for text in (
        "2025-11-18 10:00:00.5",  # str(datetime) style, a short fraction
        "2025-11-18T10:00:00.500000",  # isoformat of a naive (UTC) datetime
        "2025-11-18T10:00:00.5Z",
        "2025-11-18T12:00:00.5+02:00",
        "2025-11-18T07:00:00.5-0300",
    ):
        assert legacy.parse_datetime(text) == expected, text
        assert legacy._parse_slow(text) == datetime(2025, 11, 18, 10, 0, 0, 500000), text
    assert legacy.parse_datetime(1763460000.5) == 1763460000.5
    for bad in ("yesterday", "2025-13-01T00:00:00", None, True, [2025]):
        assert legacy.parse_datetime(bad) is None


# ---------------------------------------------------------------- byte-exact downgrade (0002)


async def _legacy_round_trip(bare: Store, originals: dict[str, Any]) -> dict[str, bytes]:
    await write_legacy(bare, {k: (v, DAY) for k, v in originals.items()})
    await bare.migrations.upgrade()
    await bare.migrations.downgrade("0001")
    return {k: await bare.client.get(f"{bare.namespace}:{k}") for k in originals}


async def test_both_legacy_shapes_come_back_byte_for_byte(bare: Store) -> None:
    await bare.migrations.upgrade("0001")
    b_reordered = session_b("b2")
    b_reordered["metadata"] = {
        "last_active": "2025-11-17 08:00:00.5",
        "client": "claude",
        "created_at": "2025-11-17T07:59:00",
    }
    originals = {
        "session:a": session_a("a"),
        "session:b": session_b("b"),  # its metadata used to come back as client, created_at...
        "session:b2": b_reordered,
        "session:a2": {"zz_first": 1, **session_a("a2"), "aa_last": [1, 2]},
        "session:a3": {**session_a("a3"), "metadata": {"z": 1, "_legacy": {"x": 1}, "a": 2}},
    }
    back = await _legacy_round_trip(bare, originals)
    for key, original in originals.items():
        assert back[key] == json.dumps(original).encode(), key


async def test_import_time_fallbacks_come_back_whatever_the_clock_says(
    bare: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # created_at / last_active that are not datetimes are stored as the import time and kept
    # raw in metadata._legacy. An import time with digits below the microsecond (this one, as
    # RedisJSON parses it, is more than 0.5 us away from what the document stores) made the
    # downgrade write the import time instead of 1e+20 / "junk": data loss, now and then.
    await bare.migrations.upgrade("0001")
    monkeypatch.setattr("time.time", lambda: 1796194465.0000045)
    original = session_a("far", created_at=1e20, last_active="junk")
    back = await _legacy_round_trip(bare, {"session:far": original})
    assert back["session:far"] == json.dumps(original).encode()


async def test_runner_for_a_client_without_a_store(bare: Store) -> None:
    runner = MigrationRunner.for_client(bare.client, bare.namespace, bare.settings, batch_size=50)
    await write_legacy(bare, {"session:c1": (session_a("c1"), DAY)})
    report = await runner.upgrade()
    assert [s.revision for s in report.steps] == ["0001", "0002", "0003"]
    assert report.steps[1].documents_changed == 1
    assert (await bare.migrations.status()).up_to_date  # the Store's runner sees the same state
    async with Store(bare.settings) as store:
        assert (await store.sessions.get("c1")).backend_session_id == "flowise_c1"
