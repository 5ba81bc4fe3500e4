"""The original API (RedisSessionManager, RedisExecutionCache, RedisConfig) on the new layer.

The callers' code of legacy-data.md ("What existing callers do") runs here unchanged but for the
import, against the real server; the tests then look at what landed in Redis.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

import flywheel_state.compat as compat
from flywheel_state import (
    Backend,
    ConfigError,
    RedisConfig,
    RedisExecutionCache,
    RedisSessionManager,
    Session,
    SessionStatus,
    Store,
)
from flywheel_state._compat_mapping import glob_regex
from flywheel_state.server import EmbeddedRedis

WEEK = 604800
HOUR = 3600
LOGGER = "flywheel_state.compat"


# The caller's own types, shaped like the original backends/base.py.
class BackendType(enum.Enum):
    FLOWISE = "flowise"
    LANGFLOW = "langflow"
    CUSTOM = "custom"


class FlowStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    WEIRD = "half-baked"


@dataclass
class UniversalSession:
    id: str
    backend: BackendType
    backend_session_id: str
    status: FlowStatus = FlowStatus.PENDING
    current_flow_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    user_id: str | None = None
    total_queries: int = 0
    successful_queries: int = 0
    total_response_time: float = 0.0

    def __post_init__(self) -> None:
        if self.created_at is None:
            self.created_at = datetime.now()
        if self.updated_at is None:
            self.updated_at = datetime.now()


def make_session(id: str = "session_123", **overrides: Any) -> UniversalSession:
    fields: dict[str, Any] = {
        "id": id,
        "backend": BackendType.FLOWISE,
        "backend_session_id": "flowise_session_xyz",
        "status": FlowStatus.RUNNING,
        "current_flow_id": "csv2507",
        "context": {"topic": "structural tension"},
        "history": [
            {"role": "user", "content": "what is structural tension?", "timestamp": "2025-11-18"},
            {"q": "legacy question", "a": "legacy answer"},
        ],
        "user_id": "user-1",
        "total_queries": 2,
        "successful_queries": 1,
        "total_response_time": 1.5,
    }
    fields.update(overrides)
    return UniversalSession(**fields)


@pytest.fixture
def address(redis_server: str) -> dict[str, Any]:
    parts = urlsplit(redis_server)
    assert parts.hostname is not None and parts.port is not None
    return {"host": parts.hostname, "port": parts.port}


def key_ttl(sync_client: redis.Redis, key: str) -> float:
    return float(sync_client.pttl(key)) / 1000


def compat_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


# ---------------------------------------------------------------- the callers' examples


async def test_callers_examples_land_as_indexed_json_documents_with_ttl(
    address: dict[str, Any],
    namespace: str,
    store: Store,
    sync_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host, port = address["host"], address["port"]
    session = make_session()

    # --- legacy-data.md "What existing callers do", with host/port/namespace of the test server
    manager = RedisSessionManager(
        enabled=True, ttl_seconds=604800, host=host, port=port, namespace=namespace
    )
    assert await manager.save_session(session) is True
    loaded = await manager.load_session("session_123")
    assert await manager.list_sessions() == ["session_123"]
    assert await manager.list_sessions("session_*") == ["session_123"]
    assert await manager.list_sessions("other_*") == []

    key = f"{namespace}:session:session_123"
    assert sync_client.type(key) == "ReJSON-RL"
    assert WEEK - 60 < key_ttl(sync_client, key) <= WEEK
    page = await store.sessions.find(backend="flowise", status="running", flow_id="csv2507")
    assert [s.id for s in page.items] == ["session_123"]

    assert await manager.delete_session("session_123") is True
    assert await manager.delete_session("session_123") is False
    await manager.close()

    cache = RedisExecutionCache(
        enabled=True, ttl_seconds=3600, host=host, port=port, namespace=namespace
    )
    cached = {"result": "Structural tension is...", "metadata": {"duration_ms": 1234}}
    assert await cache.cache_result("exec_abc", cached) is True
    assert await cache.get_result("exec_abc") == cached
    assert await cache.get_result("exec_missing") is None
    await cache.close()

    monkeypatch.setenv("REDIS_HOST", host)
    monkeypatch.setenv("REDIS_PORT", str(port))
    monkeypatch.setenv("REDIS_KEY_PREFIX", namespace)
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = RedisConfig.from_env()
    manager = RedisSessionManager(**config)
    assert await manager.save_session(make_session("session_456")) is True
    assert await manager.list_sessions() == ["session_456"]
    await manager.close()
    # --- end of the callers' code

    assert loaded is not None
    assert isinstance(loaded, Session)
    assert loaded.backend is Backend.FLOWISE
    assert loaded.status is SessionStatus.RUNNING
    assert loaded.backend_session_id == "flowise_session_xyz"
    assert loaded.context == {"topic": "structural tension"}
    assert loaded.history[0].role == "user"
    assert loaded.history[0].timestamp == datetime(2025, 11, 18, tzinfo=timezone.utc)
    assert loaded.history[1].model_extra == {"q": "legacy question", "a": "legacy answer"}
    assert loaded.user_id == "user-1"
    assert (loaded.total_queries, loaded.successful_queries) == (2, 1)
    assert loaded.total_response_time == 1.5

    exec_key = f"{namespace}:execution:exec_abc"
    assert sync_client.type(exec_key) == "ReJSON-RL"
    assert HOUR - 60 < key_ttl(sync_client, exec_key) <= HOUR
    found = await store.executions.find(min_duration_ms=1000)
    assert [(e.id, e.duration_ms, e.result) for e in found.items] == [("exec_abc", 1234.0, cached)]
    assert config == {"enabled": True, "ttl_seconds": WEEK, "host": host, "port": port,
                      "namespace": namespace}  # fmt: skip


async def test_session_saved_by_manager_reads_through_store_and_back(
    address: dict[str, Any], namespace: str, store: Store
) -> None:
    manager = RedisSessionManager(namespace=namespace, **address)
    original = make_session("s-manager", created_at=datetime(2025, 11, 18, 10, 0, 0))
    assert await manager.save_session(original)

    stored = await store.sessions.get("s-manager")
    assert stored.backend is Backend.FLOWISE
    assert stored.status is SessionStatus.RUNNING
    assert stored.current_flow_id == "csv2507"
    assert stored.created_at == datetime(2025, 11, 18, 10, 0, 0, tzinfo=timezone.utc)
    assert stored.version == 1

    # The other way round: the store writes, the manager reads and lists.
    await store.sessions.update("s-manager", status=SessionStatus.COMPLETED)
    native = Session(id="s-store", backend=Backend.LANGFLOW, status=SessionStatus.IDLE)
    await store.sessions.save(native)
    back = await manager.load_session("s-store")
    assert back is not None
    assert back.model_dump() == (await store.sessions.get("s-store")).model_dump()
    reread = await manager.load_session("s-manager")
    assert reread is not None and reread.status is SessionStatus.COMPLETED
    assert sorted(await manager.list_sessions()) == ["s-manager", "s-store"]

    # A native Session goes through save_session unchanged.
    native.context = {"k": "v"}
    assert await manager.save_session(native)
    assert (await store.sessions.get("s-store")).context == {"k": "v"}
    await manager.close()


# ---------------------------------------------------------------- mapping the inputs


def original(session: Session, field: str) -> Any:
    """The original value of ``field`` the legacy codec kept in ``metadata._legacy.raw``."""
    return session.metadata["_legacy"]["raw"][field]["value"]


async def test_unknown_status_is_saved_with_the_original_kept_and_logged_once(
    address: dict[str, Any],
    namespace: str,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    manager = RedisSessionManager(namespace=namespace, **address)
    assert await manager.save_session(make_session("s-weird", status=FlowStatus.WEIRD))
    assert await manager.save_session(make_session("s-weird-2", status=FlowStatus.WEIRD))
    assert await manager.save_session(make_session("s-paused", status=FlowStatus.PAUSED))
    assert await manager.save_session({"id": "s-odd-backend", "backend": "n8n", "status": "DONE"})

    # The legacy codec's rules (the same as migration 0002's): an unknown status is "idle",
    # aliases map, the original is kept in metadata._legacy.raw.
    weird = await store.sessions.get("s-weird")
    assert weird.status is SessionStatus.IDLE
    assert original(weird, "status") == "half-baked"
    paused = await store.sessions.get("s-paused")
    assert paused.status is SessionStatus.IDLE
    assert original(paused, "status") == "paused"
    odd = await store.sessions.get("s-odd-backend")
    assert (odd.backend, odd.status) == (Backend.CUSTOM, SessionStatus.COMPLETED)
    assert (original(odd, "backend"), original(odd, "status")) == ("n8n", "DONE")
    # Indexed under the mapped value.
    assert sorted(await store.sessions.ids(status="idle")) == ["s-paused", "s-weird", "s-weird-2"]

    warnings = [r.getMessage() for r in compat_records(caplog, logging.WARNING)]
    assert sum("'half-baked'" in m for m in warnings) == 1  # once per distinct value
    assert sum("'n8n'" in m for m in warnings) == 1
    await manager.close()


async def test_dict_sessions_in_both_legacy_shapes(
    address: dict[str, Any], namespace: str, store: Store
) -> None:
    manager = RedisSessionManager(namespace=namespace, **address)
    shape_a = {
        "id": "session_a",
        "backend": "flowise",
        "backend_session_id": "flowise_session_xyz",
        "status": "running",
        "current_flow_id": "csv2507",
        "context": {"topic": "structural tension"},
        "history": [{"role": "user", "content": "hi", "timestamp": "not a date"}, "plain text"],
        "metadata": {"origin": "mcp"},
        "created_at": "2025-11-18 10:00:00.123456",
        "last_active": "2025-11-18T10:05:00.654321",
        "expires_at": datetime(2025, 11, 25, tzinfo=timezone.utc),
        "extra_field": [1, 2],
    }
    shape_b = {
        "_schema_version": "1.0",
        "id": "session_b",
        "backend": "langflow",
        "backend_session_id": None,
        "status": None,
        "current_flow_id": None,
        "context": {},
        "history": [],
        "metadata": {"created_at": "2025-11-18T09:00:00", "last_active": "2025-11-18T09:30:00"},
    }
    assert await manager.save_session(shape_a)
    assert await manager.save_session(shape_b)

    a = await store.sessions.get("session_a")
    assert a.created_at == datetime(2025, 11, 18, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert a.last_active == datetime(2025, 11, 18, 10, 5, 0, 654321, tzinfo=timezone.utc)
    assert a.history[0].timestamp is None
    assert a.history[0].model_extra == {"_legacy_timestamp": "not a date"}
    assert a.history[1].content == "plain text"
    assert {k: v for k, v in a.metadata.items() if k != "_legacy"} == {
        "origin": "mcp",
        "expires_at": "2025-11-25T00:00:00+00:00",
        "extra_field": [1, 2],
    }
    b = await store.sessions.get("session_b")
    assert (b.backend, b.status) == (Backend.LANGFLOW, SessionStatus.PENDING)
    assert b.created_at == datetime(2025, 11, 18, 9, 0, tzinfo=timezone.utc)
    assert b.last_active == datetime(2025, 11, 18, 9, 30, tzinfo=timezone.utc)
    assert set(b.metadata) == {"_legacy"}  # what a downgrade to the strings needs

    # Values JSON can't hold are stored as text, as the original's json.dumps(default=str).
    odd = make_session("session_odd", context={"when": datetime(2025, 1, 1), "obj": object()})
    assert await manager.save_session(odd)
    stored = await store.sessions.get("session_odd")
    assert stored.context["when"] == "2025-01-01 00:00:00"
    assert stored.context["obj"].startswith("<object object")

    # Unmappable input: False and a warning, never an exception.
    assert await manager.save_session({"id": "bad id", "backend": "flowise"}) is False
    assert await manager.save_session(42) is False
    await manager.close()


async def test_list_sessions_glob_filters_and_paging(
    address: dict[str, Any], namespace: str
) -> None:
    manager = RedisSessionManager(namespace=namespace, **address)
    specs = [
        ("sa_1", BackendType.FLOWISE, FlowStatus.RUNNING),
        ("sa_2", BackendType.LANGFLOW, FlowStatus.RUNNING),
        ("sb_1", BackendType.FLOWISE, FlowStatus.COMPLETED),
        ("sc_1", BackendType.CUSTOM, FlowStatus.RUNNING),
        ("other", BackendType.FLOWISE, FlowStatus.RUNNING),
    ]
    for sid, backend, status in specs:
        assert await manager.save_session(make_session(sid, backend=backend, status=status))

    assert sorted(await manager.list_sessions()) == sorted(s[0] for s in specs)
    assert sorted(await manager.list_sessions("s?_1")) == ["sa_1", "sb_1", "sc_1"]
    assert sorted(await manager.list_sessions("s[ab]_*")) == ["sa_1", "sa_2", "sb_1"]
    assert sorted(await manager.list_sessions("s[^a]_*")) == ["sb_1", "sc_1"]
    assert sorted(await manager.list_sessions("s[a-b]_2")) == ["sa_2"]
    assert await manager.list_sessions("sa_1") == ["sa_1"]
    assert sorted(await manager.list_sessions(backend="flowise")) == ["other", "sa_1", "sb_1"]
    assert sorted(await manager.list_sessions("s*", backend="flowise", status="running")) == [
        "sa_1"
    ]
    assert sorted(await manager.list_sessions(status=["completed", "running"], flow_id="x")) == []

    everything = await manager.list_sessions("s*", sort="created_at")
    assert len(everything) == 4
    assert (
        await manager.list_sessions("s*", sort="created_at", limit=2, offset=1) == (everything[1:3])
    )
    by_index = await manager.list_sessions(sort="created_at")
    assert await manager.list_sessions(sort="created_at", limit=2, offset=3) == by_index[3:5]

    # A bad filter or paging value is the caller's bug: [] and a warning, never an exception.
    assert await manager.list_sessions(colour="blue") == []
    assert await manager.list_sessions(limit=0) == []
    await manager.close()


def test_glob_patterns_match_exactly_what_redis_matches(
    namespace: str, sync_client: redis.Redis
) -> None:
    ids = ["".join(t) for n in (1, 2, 3) for t in itertools.product("ab-^]\\", repeat=n)]
    prefix = f"{namespace}:glob:"
    sync_client.mset({prefix + i: 1 for i in ids})
    rng = random.Random(20251118)
    for _ in range(1500):
        pattern = "".join(rng.choice("ab*?[]^-\\") for _ in range(rng.randint(1, 7)))
        by_redis = {k[len(prefix) :] for k in sync_client.keys(prefix + pattern)}
        regex = glob_regex(pattern)
        assert {i for i in ids if regex.fullmatch(i)} == by_redis, pattern


async def test_legacy_string_values_written_later_are_still_read(
    address: dict[str, Any], namespace: str, sync_client: redis.Redis
) -> None:
    manager = RedisSessionManager(namespace=namespace, **address)
    cache = RedisExecutionCache(namespace=namespace, **address)
    assert await manager.list_sessions() == []  # connected (and migrated) first
    assert await cache.get_result("nothing") is None

    # An old process still running writes the original's strings (shape A session, shape B
    # execution, shape A execution).
    legacy = {"id": "old", "backend": "flowise", "status": "cancelled", "context": {"a": 1},
              "history": [], "metadata": {}, "created_at": "2025-11-18 10:00:00"}  # fmt: skip
    sync_client.set(f"{namespace}:session:old", json.dumps(legacy), ex=600)
    wrapped = {"execution_id": "exec_b", "result": {"output": "x"}, "cached_at": "2025-11-18"}
    sync_client.set(f"{namespace}:execution:exec_b", json.dumps(wrapped), ex=600)
    sync_client.set(f"{namespace}:execution:exec_a", json.dumps({"result": "y"}), ex=600)

    old = await manager.load_session("old")
    assert old is not None
    assert (old.status, old.context) == (SessionStatus.CANCELLED, {"a": 1})
    assert await cache.get_result("exec_b") == {"output": "x"}
    assert await cache.get_result("exec_a") == {"result": "y"}
    assert sync_client.type(f"{namespace}:session:old") == "string"  # read, not rewritten

    # A document another writer stored with a status outside the enum stays readable.
    odd_doc = {"id": "odd", "backend": "flowise", "status": "hibernating", "context": {},
               "history": [], "metadata": {}, "created_at": 1763460000.0,
               "last_active": 1763460000.0, "updated_at": 1763460000.0,
               "schema_version": 1, "version": 3}  # fmt: skip
    sync_client.execute_command("JSON.SET", f"{namespace}:session:odd", "$", json.dumps(odd_doc))
    odd = await manager.load_session("odd")
    assert odd is not None
    assert (odd.status, original(odd, "status")) == (SessionStatus.IDLE, "hibernating")
    assert odd.created_at == datetime.fromtimestamp(1763460000.0, timezone.utc)
    bad_exec = {"id": "exec_c", "status": "hibernating", "result": {"r": 1}}
    sync_client.execute_command(
        "JSON.SET", f"{namespace}:execution:exec_c", "$", json.dumps(bad_exec)
    )
    assert await cache.get_result("exec_c") == {"r": 1}

    # Garbage is None (and a warning), never an exception.
    sync_client.set(f"{namespace}:session:garbage", "not json", ex=600)
    assert await manager.load_session("garbage") is None
    await manager.close()
    await cache.close()


# ---------------------------------------------------------------- execution cache


async def test_cache_result_fills_indexed_fields_and_returns_exactly_what_was_cached(
    address: dict[str, Any], namespace: str, store: Store
) -> None:
    cache = RedisExecutionCache(namespace=namespace, **address)
    rich = {
        "session_id": "session_123",
        "flow_id": "csv2507",
        "backend": "langflow",
        "status": "failed",
        "error": "boom",
        "metadata": {"duration_ms": 250},
        "nested": {"list": [1, "two", None], "float": 1.5},
    }
    assert await cache.cache_result("exec_rich", rich)
    assert await cache.cache_result("exec_list", [1, 2, 3])
    assert await cache.cache_result("exec_odd", {"status": "weird", "backend": "n8n"})

    assert await cache.get_result("exec_rich") == rich
    assert await cache.get_result("exec_list") == [1, 2, 3]
    doc = await store.executions.get("exec_rich")
    assert (doc.session_id, doc.flow_id, doc.backend, doc.status, doc.duration_ms, doc.error) == (
        "session_123",
        "csv2507",
        Backend.LANGFLOW,
        "failed",
        250.0,
        "boom",
    )
    odd = await store.executions.get("exec_odd")
    assert (odd.backend, odd.status) == (None, "completed")
    page = await store.executions.find(session_id="session_123", status="failed")
    assert [e.id for e in page.items] == ["exec_rich"]
    assert await cache.cache_result("bad id", {}) is False
    await cache.close()


async def test_flow_history_is_stored_per_execution_and_replaced(
    address: dict[str, Any], namespace: str, store: Store, sync_client: redis.Redis
) -> None:
    cache = RedisExecutionCache(namespace=namespace, ttl_seconds=600, **address)
    executions = [
        {"timestamp": "2025-11-18T10:00:00", "output": "Result 1", "metadata": {"duration_ms": 5}},
        {"timestamp": "2025-11-18T10:05:00", "output": "Result 2"},
        {"timestamp": "2025-11-18T10:10:00", "output": "Result 3", "status": "failed"},
    ]
    assert await cache.cache_flow_history("session_123", "flow_456", executions)
    assert await cache.cache_flow_history("session_123", "flow_789", executions[:1])

    assert await cache.get_flow_history("session_123", "flow_456") == executions
    page = await store.executions.find(session_id="session_123", flow_id="flow_456")
    assert page.total == 3
    assert {e.metadata["source"] for e in page.items} == {"flow_history"}
    first = min(page.items, key=lambda e: e.metadata["position"])
    assert first.created_at == datetime(2025, 11, 18, 10, 0, tzinfo=timezone.utc)
    assert first.duration_ms == 5.0
    for e in page.items:
        key = f"{namespace}:execution:{e.id}"
        assert sync_client.type(key) == "ReJSON-RL"
        assert 540 < key_ttl(sync_client, key) <= 600

    # Caching again replaces the history (stale executions are removed).
    assert await cache.cache_flow_history("session_123", "flow_456", executions[1:])
    assert await cache.get_flow_history("session_123", "flow_456") == executions[1:]
    assert (await store.executions.count(session_id="session_123", flow_id="flow_456")) == 2
    assert await cache.get_flow_history("session_123", "flow_789") == executions[:1]
    assert await cache.get_flow_history("session_123", "nope") is None
    await cache.close()


# ---------------------------------------------------------------- fail-safe


@pytest.fixture
def silent_port() -> Iterator[socket.socket]:
    """A listening socket that never accepts: any connection attempt stays in its backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_disabled_manager_does_no_io(
    silent_port: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    port = silent_port.getsockname()[1]
    manager = RedisSessionManager(enabled=False, host="127.0.0.1", port=port)
    cache = RedisExecutionCache(enabled=False, host="127.0.0.1", port=port)

    assert await manager.save_session(make_session()) is False
    assert await manager.load_session("session_123") is None
    assert await manager.delete_session("session_123") is False
    assert await manager.list_sessions() == []
    assert await cache.cache_result("exec_abc", {"result": 1}) is False
    assert await cache.get_result("exec_abc") is None
    assert await cache.cache_flow_history("s", "f", [{}]) is False
    await manager.close()
    await cache.close()

    with pytest.raises(BlockingIOError):
        silent_port.accept()  # nobody ever connected
    assert compat_records(caplog, logging.WARNING) == []


def test_missing_driver_disables_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    monkeypatch.setattr(compat._failsafe, "_warned_missing_driver", False)
    monkeypatch.setitem(sys.modules, "flywheel_state.store", None)  # import raises ImportError

    first = RedisSessionManager()
    second = RedisExecutionCache()
    assert (first.enabled, second.enabled) == (False, False)
    assert asyncio.run(first.save_session(make_session())) is False
    assert asyncio.run(second.get_result("x")) is None
    warnings = compat_records(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert "redis package" in warnings[0].getMessage()


def test_manager_works_across_event_loops(address: dict[str, Any], namespace: str) -> None:
    manager = RedisSessionManager(namespace=namespace, **address)
    cache = RedisExecutionCache(namespace=namespace, **address)

    async def first() -> bool:
        ok = await manager.save_session(make_session("loop-1"))
        return ok and await cache.cache_result("exec-loop", {"n": 1})

    async def second() -> tuple[Any, ...]:
        loaded = await manager.load_session("loop-1")
        saved = await manager.save_session(make_session("loop-2"))
        result = await cache.get_result("exec-loop")
        ids = sorted(await manager.list_sessions())
        await manager.close()
        await cache.close()
        return loaded, saved, result, ids

    assert asyncio.run(first()) is True
    loaded, saved, result, ids = asyncio.run(second())
    assert loaded is not None and loaded.id == "loop-1"
    assert saved is True
    assert result == {"n": 1}
    assert ids == ["loop-1", "loop-2"]
    # And again after close(), in a third loop.
    assert asyncio.run(manager.load_session("loop-2")) is not None
    asyncio.run(manager.close())


async def within(coro: Any, deadline: float) -> Any:
    """The call's value; asyncio.TimeoutError (a failure) if it hangs past ``deadline``.

    A liveness check, not a speed check: the deadline is the command timeout plus a margin of
    seconds, as the issue asks ("returns its fail-safe value in under the timeout plus a margin").
    """
    return await asyncio.wait_for(coro, timeout=deadline)


@pytest.mark.integration  # starts a server of its own
async def test_outage_returns_fail_safe_values_logs_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    data_dir = tmp_path / "redis"
    server = EmbeddedRedis(data_dir=data_dir, persistent=True).start()
    port = server.port
    manager = RedisSessionManager(host="127.0.0.1", port=port, command_timeout=1.0)
    cache = RedisExecutionCache(host="127.0.0.1", port=port, command_timeout=1.0)
    bound = manager.call_timeout + 3  # a generous "does not hang" bound
    try:
        assert await manager.save_session(make_session("before")) is True
        assert await cache.cache_result("exec-before", {"ok": True}) is True
        server.stop()

        calls = [
            (manager.save_session(make_session("during")), False),
            (manager.load_session("before"), None),
            (manager.list_sessions(), []),
            (manager.list_sessions("b*", backend="flowise"), []),
            (manager.delete_session("before"), False),
            (manager.save_session(make_session("during-2")), False),
            (cache.cache_result("exec-during", {"ok": False}), False),
            (cache.get_result("exec-before"), None),
            (cache.cache_flow_history("before", "flow", [{"a": 1}]), False),
        ]
        for call, expected in calls:
            assert await within(call, bound) == expected

        warnings = compat_records(caplog, logging.WARNING)
        assert len(warnings) == 2  # one per manager for the whole outage
        assert "session persistence" in warnings[0].getMessage()
        assert "execution cache" in warnings[1].getMessage()
        assert compat_records(caplog, logging.INFO) == []

        server = EmbeddedRedis(port=port, data_dir=data_dir, persistent=True).start()
        # Same managers, no new objects: the data from before the outage is back, and new
        # writes work again.
        loaded = await manager.load_session("before")
        assert loaded is not None and loaded.id == "before"
        assert await manager.save_session(make_session("after")) is True
        assert sorted(await manager.list_sessions()) == ["after", "before"]
        assert await cache.get_result("exec-before") == {"ok": True}
        infos = [r.getMessage() for r in compat_records(caplog, logging.INFO)]
        assert len(infos) == 2 and all("reconnected" in m for m in infos)
        assert len(compat_records(caplog, logging.WARNING)) == 2
    finally:
        await manager.close()
        await cache.close()
        server.stop()


@pytest.mark.integration  # starts a server of its own
async def test_server_replaced_between_calls_next_calls_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No call fails in between: the pooled connection is stale and the new server is empty
    # (no index, no migration record). The very next calls still work.
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = EmbeddedRedis().start()
    port = server.port
    manager = RedisSessionManager(host="127.0.0.1", port=port, command_timeout=1.0)
    try:
        assert await manager.save_session(make_session("old")) is True
        assert await manager.list_sessions() == ["old"]
        server.stop()
        server = EmbeddedRedis(port=port).start()
        assert await manager.list_sessions() == []
        assert await manager.save_session(make_session("new")) is True
        assert await manager.list_sessions(backend="flowise") == ["new"]
        assert compat_records(caplog, logging.WARNING) == []
    finally:
        await manager.close()
        server.stop()


@pytest.mark.integration  # starts a server of its own
async def test_hung_server_calls_return_within_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with EmbeddedRedis() as server:
        manager = RedisSessionManager(host="127.0.0.1", port=server.port, command_timeout=1.0)
        assert await manager.save_session(make_session("s1")) is True
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # accepts connections, never answers
        try:
            for call, expected in (
                (manager.load_session("s1"), None),
                (manager.save_session(make_session("s2")), False),
            ):
                assert await within(call, manager.call_timeout + 3) == expected
        finally:
            os.kill(server.pid, signal.SIGCONT)
        loaded = await manager.load_session("s1")
        assert loaded is not None and loaded.id == "s1"
        assert await manager.save_session(make_session("s2")) is True
        assert len(compat_records(caplog, logging.WARNING)) == 1
        assert len(compat_records(caplog, logging.INFO)) == 1
        await manager.close()


# ---------------------------------------------------------------- RedisConfig


def test_config_from_env_reads_both_generations() -> None:
    first = {"REDIS_ENABLED": "true", "REDIS_TTL_SECONDS": "3600", "REDIS_HOST": "redis.local",
             "REDIS_PORT": "6380"}  # fmt: skip
    assert RedisConfig.from_env(first) == {
        "enabled": True,
        "ttl_seconds": 3600,
        "host": "redis.local",
        "port": 6380,
    }
    second = {
        "REDIS_STATE_ENABLED": "false",
        "REDIS_SESSION_TTL_SECONDS": "86400",
        "REDIS_EXECUTION_TTL_SECONDS": "7200",
        "REDIS_KEY_PREFIX": "flywheel:",
        "REDIS_DB": "2",
        "REDIS_PASSWORD": "s3cret",
        "REDIS_COMMAND_TIMEOUT": "0.5",
    }
    assert RedisConfig.from_env(second) == {
        "enabled": False,
        "ttl_seconds": 86400,
        "host": "localhost",
        "port": 6379,
        "db": 2,
        "password": "s3cret",
        "namespace": "flywheel",
        "command_timeout": 0.5,
    }
    execution = RedisConfig.execution_from_env(second)
    assert execution["ttl_seconds"] == 7200
    assert RedisConfig.execution_ttl_seconds(second) == 7200
    assert RedisConfig.execution_from_env({})["ttl_seconds"] == HOUR
    assert RedisConfig.from_env({}) == {
        "enabled": True,
        "ttl_seconds": WEEK,
        "host": "localhost",
        "port": 6379,
    }
    url_env = {"REDIS_URL": "redis://:pw@example:6390/1", "REDIS_NAMESPACE": "ns1"}
    config = RedisConfig.from_env(url_env)
    assert (config["url"], config["namespace"]) == ("redis://:pw@example:6390/1", "ns1")

    # Every dict is accepted by the managers as keyword arguments.
    for env in (first, second, url_env, {}):
        manager = RedisSessionManager(**RedisConfig.from_env(env))
        cache = RedisExecutionCache(**RedisConfig.execution_from_env(env))
        assert manager.enabled == cache.enabled == RedisConfig.enabled_from_env(env)
    assert RedisSessionManager(**RedisConfig.from_env(second)).namespace == "flywheel"
    assert "pw" not in repr(RedisSessionManager(**config))


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_PORT": "abc"}, "REDIS_PORT"),
        ({"REDIS_PORT": "70000"}, "REDIS_PORT"),
        ({"REDIS_ENABLED": "maybe"}, "REDIS_ENABLED"),
        ({"REDIS_STATE_ENABLED": "2"}, "REDIS_STATE_ENABLED"),
        ({"REDIS_TTL_SECONDS": "0"}, "REDIS_TTL_SECONDS"),
        ({"REDIS_SESSION_TTL_SECONDS": "1.5d"}, "REDIS_SESSION_TTL_SECONDS"),
        ({"REDIS_EXECUTION_TTL_SECONDS": "-1"}, "REDIS_EXECUTION_TTL_SECONDS"),
        ({"REDIS_KEY_PREFIX": "bad prefix"}, "REDIS_KEY_PREFIX"),
        ({"REDIS_DB": "x"}, "REDIS_DB"),
    ],
)
def test_config_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        RedisConfig.from_env(env)


def test_config_enabled_false_wins_and_legacy_key_prefix_argument() -> None:
    both = {"REDIS_ENABLED": "true", "REDIS_STATE_ENABLED": "off"}
    assert RedisConfig.enabled_from_env(both) is False
    assert RedisConfig.enabled_from_env({"REDIS_ENABLED": "YES"}) is True
    manager = RedisSessionManager(enabled=True, ttl_seconds=60, key_prefix="legacy_prefix:")
    assert manager.namespace == "legacy_prefix"
    with pytest.raises(ConfigError):
        RedisSessionManager(port=0)
    with pytest.raises(ConfigError):
        RedisExecutionCache(ttl_seconds=0)
