"""One legacy codec: the original code's data reads the same through compat and migrations.

Also migrated flow history (0002 for fresh runs, 0003 for namespaces an earlier 0002 converted):
readable by ``get_flow_history`` and ``store.executions.find``; 0003 upgrades, downgrades and
resumes after an injected failure.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import pytest

from flywheel_state import RedisExecutionCache, RedisSessionManager, Settings, Store
from flywheel_state._compat_mapping import session_from
from flywheel_state.errors import MigrationError
from flywheel_state.migrations import legacy_codec, legacy_history
from flywheel_state.migrations.legacy_codec import history_prefix
from flywheel_state.models import Session

DAY = 86400


@pytest.fixture
async def bare(settings: Settings) -> AsyncIterator[Store]:
    """A Store that is not connected: its namespace has no revision applied."""
    store = Store(settings)
    yield store
    await store.close()


Case = Callable[[str], dict[str, Any]]


def _a(sid: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": sid,
        "backend": "flowise",
        "backend_session_id": "flowise_xyz",
        "status": "running",
        "current_flow_id": "csv2507",
        "context": {"topic": "structural tension"},
        "history": [
            {"role": "user", "content": "hi", "timestamp": "2025-11-18T10:00:01.250000"},
            {"q": "what?", "a": "that"},
        ],
        "metadata": {"source": "mcp"},
        "created_at": "2025-11-18 10:00:00.123456",
        "last_active": "2025-11-18T10:05:00.654321",
    }
    doc.update(extra)
    return doc


def _b(sid: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_schema_version": "1.0",
        "id": sid,
        "backend": "langflow",
        "backend_session_id": None,
        "status": "active",
        "current_flow_id": None,
        "context": {},
        "history": [],
        "metadata": {"created_at": "2025-11-17T07:59:00", "last_active": "2025-11-17 08:00:00.5"},
    }
    doc.update(extra)
    return doc


# The shared table: every rule where the two paths used to disagree, and the plain shapes.
TABLE: dict[str, Case] = {
    "shape_a": _a,
    "shape_b": _b,
    "unknown_status": lambda sid: _a(sid, status="hibernating"),
    "alias_done": lambda sid: _a(sid, status="done"),
    "alias_canceled_any_case": lambda sid: _b(sid, status="Canceled"),
    "alias_paused": lambda sid: _a(sid, status="paused"),
    "enum_repr": lambda sid: _a(sid, status="SessionStatus.COMPLETED", backend="LANGFLOW"),
    "null_status": lambda sid: _b(sid, status=None),
    "missing_status": lambda sid: {k: v for k, v in _a(sid).items() if k != "status"},
    "unknown_backend": lambda sid: _a(sid, backend="n8n"),
    "missing_backend": lambda sid: {k: v for k, v in _a(sid).items() if k != "backend"},
    "context_not_an_object": lambda sid: _a(sid, context="just text"),
    "history_not_a_list": lambda sid: _a(sid, history={"role": "user"}),
    "odd_history_items": lambda sid: _a(
        sid, history=["plain text", {"role": "user", "timestamp": "not a date"}]
    ),
    "bad_created_at": lambda sid: _a(sid, created_at="junk"),
    "metadata_not_an_object": lambda sid: _a(sid, metadata=[1, 2]),
    "extra_fields_colliding": lambda sid: _a(
        sid, source="top", weird=[1], metadata={"source": "mcp", "weird": "meta"}
    ),
    "optional_fields": lambda sid: _a(
        sid, user_id="u1", total_queries=4, updated_at="2025-11-18T10:06:00"
    ),
    "shape_b_metadata_datetimes_only": lambda sid: _b(sid, created_at="2025-11-16T00:00:00"),
}


def _comparable(session: Session, *, stored: bool) -> dict[str, Any]:
    out = session.model_dump(mode="json", exclude={"id", "version", "pk"})
    if stored:  # a save through the repository stamps updated_at
        out.pop("updated_at")
    return out


def _address(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return {"host": parts.hostname, "port": parts.port}


async def test_a_shared_table_of_legacy_sessions_gives_the_same_document_on_every_path(
    bare: Store, redis_url: str
) -> None:
    ns = bare.namespace
    # Path 1: strings the original wrote, then `migrate up` (migration 0002).
    for name, case in TABLE.items():
        await bare.client.set(f"{ns}:session:m-{name}", json.dumps(case(f"m-{name}")), ex=DAY)
    report = await bare.migrations.upgrade()
    assert report.to_revision == "0003"

    manager = RedisSessionManager(namespace=ns, **_address(redis_url))
    # Path 2: a string written after the migration, read by the original API's load_session.
    for name, case in TABLE.items():
        await bare.client.set(f"{ns}:session:l-{name}", json.dumps(case(f"l-{name}")), ex=DAY)
    # Path 3: the dict given to the original API's save_session.
    for name, case in TABLE.items():
        assert await manager.save_session(case(f"s-{name}")), name

    async with Store(bare.settings) as store:
        for name, case in TABLE.items():
            migrated = await store.sessions.get(f"m-{name}")
            loaded = await manager.load_session(f"l-{name}")
            saved = await store.sessions.get(f"s-{name}")
            assert loaded is not None, name
            expected = _comparable(migrated, stored=False)
            assert _comparable(loaded, stored=False) == expected, name
            assert _comparable(saved, stored=True) == {
                k: v for k, v in expected.items() if k != "updated_at"
            }, name
            # The pure mapping (no server) is the same codec.
            mapped = session_from(case(f"x-{name}"), [])
            assert _comparable(mapped, stored=False) == expected, name
    await manager.close()

    # The decided rules, spelled out.
    async with Store(bare.settings) as store:
        status = {n: (await store.sessions.get(f"m-{n}")).status.value for n in TABLE}
        assert status["unknown_status"] == "idle"
        assert status["alias_done"] == "completed"
        assert status["alias_canceled_any_case"] == "cancelled"
        assert status["alias_paused"] == "idle"
        assert status["enum_repr"] == "completed"
        assert status["null_status"] == status["missing_status"] == "pending"
        weird = await store.sessions.get("m-unknown_status")
        assert weird.metadata["_legacy"]["raw"]["status"] == {
            "value": "hibernating",
            "stored": "idle",
        }
        colliding = await store.sessions.get("m-extra_fields_colliding")
        assert colliding.metadata["source"] == "mcp"  # never overwritten
        assert colliding.metadata["legacy_source"] == "top"

    # And the original strings still come back byte for byte (0002's downgrade).
    await bare.migrations.downgrade("0001")
    for name, case in TABLE.items():
        raw = await bare.client.get(f"{ns}:session:m-{name}")
        assert raw == json.dumps(case(f"m-{name}")).encode(), name


EXECUTIONS: dict[str, Any] = {
    "plain": {"result": "Structural tension is...", "metadata": {"duration_ms": 1234}},
    "error": {"error": "boom"},
    "named": {
        "status": "done",
        "session_id": "s1",
        "flow_id": "f1",
        "backend": "Flowise",
        "timestamp": "2025-11-18T10:00:00",
    },
    "status_in_metadata": {"metadata": {"status": "canceled", "duration_ms": 5}},
    "text": "a plain string",
    "list": [1, 2],
}


async def test_a_shared_table_of_legacy_results_gives_the_same_fields_on_both_paths(
    bare: Store, redis_url: str
) -> None:
    ns = bare.namespace
    for name, value in EXECUTIONS.items():
        await bare.client.set(f"{ns}:execution:m-{name}", json.dumps(value), ex=DAY)
    await bare.migrations.upgrade()
    cache = RedisExecutionCache(namespace=ns, **_address(redis_url))
    for name, value in EXECUTIONS.items():
        assert await cache.cache_result(f"c-{name}", value), name
    fields = ("status", "session_id", "flow_id", "backend", "error", "duration_ms", "result")
    async with Store(bare.settings) as store:
        for name, value in EXECUTIONS.items():
            migrated = await store.executions.get(f"m-{name}")
            cached = await store.executions.get(f"c-{name}")
            assert [getattr(migrated, f) for f in fields] == [getattr(cached, f) for f in fields], (
                name
            )
            assert await cache.get_result(f"m-{name}") == value
        named = await store.executions.get("m-named")
        assert (named.status.value, named.backend.value) == ("completed", "flowise")
        assert named.created_at == (await store.executions.get("c-named")).created_at
        assert (await store.executions.get("m-error")).status.value == "failed"
        assert (await store.executions.get("m-status_in_metadata")).status.value == "cancelled"
    await cache.close()


# ---------------------------------------------------------------------- flow history

FLOW = {
    "session_id": "s1",
    "flow_id": "csv2507",
    "executions": [
        {"execution_id": "e1", "status": "done", "result": "first", "timestamp": "2025-11-18"},
        {"execution_id": "e2", "error": "boom"},
        "a plain value",
    ],
    "cached_at": "2025-11-18 11:00:00",
}


async def test_migrated_flow_history_is_read_by_get_flow_history_and_find(
    bare: Store, redis_url: str
) -> None:
    ns = bare.namespace
    await bare.client.set(f"{ns}:history:s1:csv2507", json.dumps(FLOW), ex=900)
    empty = {"session_id": "s2", "flow_id": "f", "executions": [], "cached_at": "2025-11-18"}
    await bare.client.set(f"{ns}:history:s2:f", json.dumps(empty), ex=900)
    await bare.migrations.upgrade()

    cache = RedisExecutionCache(namespace=ns, **_address(redis_url))
    assert await cache.get_flow_history("s1", "csv2507") == FLOW["executions"]
    async with Store(bare.settings) as store:
        found = (await store.executions.find(session_id="s1", flow_id="csv2507")).items
        by_position = sorted(found, key=lambda e: e.metadata["position"])
        assert [e.result for e in by_position] == FLOW["executions"]
        assert [e.status.value for e in by_position] == ["completed", "failed", "completed"]
        assert by_position[1].error == "boom"
        assert all(e.id.startswith(history_prefix("s1", "csv2507")) for e in found)
        for e in found:
            assert 0 < await store.client.pttl(store.executions.key(e.id)) <= 900_000
        assert await store.client.exists(f"{ns}:history:s1:csv2507") == 0
        # An empty history has nothing to read: it stays a JSON record at its key.
        assert await store.client.type(f"{ns}:history:s2:f") == b"ReJSON-RL"

        # The compat API writes the same documents for the same history.
        assert await cache.cache_flow_history("s9", "csv2507", FLOW["executions"])
        mine = (await store.executions.find(session_id="s9", flow_id="csv2507")).items
        assert sorted(
            (e.metadata["position"], e.status, e.error, e.result, e.metadata["count"]) for e in mine
        ) == sorted(
            (e.metadata["position"], e.status, e.error, e.result, e.metadata["count"])
            for e in found
        )
    await cache.close()

    # Down to the strings: the original history string comes back.
    await bare.migrations.downgrade("0001")
    assert json.loads(await bare.client.get(f"{ns}:history:s1:csv2507")) == FLOW
    assert json.loads(await bare.client.get(f"{ns}:history:s2:f")) == empty


def _old_0002_record(sid: str, n: int) -> dict[str, Any]:
    """A flow history as 0002 wrote it before 0003 existed (a JSON document of its fields)."""
    return {
        "schema_version": 1,
        "session_id": sid,
        "flow_id": "f",
        "executions": [{"execution_id": f"{sid}-{i}", "n": i} for i in range(n)],
        "cached_at": 1763463600.0,
        "_legacy": {"dates": {"cached_at": "2025-11-18 11:00:00"}},
    }


async def _old_namespace(bare: Store, count: int) -> dict[str, dict[str, Any]]:
    await bare.migrations.upgrade("0002")
    records = {
        f"{bare.namespace}:history:s{i}:f": _old_0002_record(f"s{i}", 3) for i in range(count)
    }
    for key, record in records.items():
        await bare.client.execute_command("JSON.SET", key, "$", json.dumps(record))
        await bare.client.expire(key, DAY)
    return records


async def _state(bare: Store) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async for raw in bare.client.scan_iter(match=f"{bare.namespace}:*", count=1000):
        key = raw.decode()
        if ":_migrations:" in key:
            continue
        if (await bare.client.type(key)) == b"ReJSON-RL":
            out[key] = json.loads(await bare.client.execute_command("JSON.GET", key))
    return out


async def test_0003_converts_what_an_earlier_0002_wrote_and_back(
    bare: Store, redis_url: str
) -> None:
    records = await _old_namespace(bare, 3)
    report = await bare.migrations.upgrade()
    assert [s.revision for s in report.steps] == ["0003"]
    assert report.steps[0].documents_changed == 9
    cache = RedisExecutionCache(namespace=bare.namespace, **_address(redis_url))
    for i in range(3):
        assert (
            await cache.get_flow_history(f"s{i}", "f")
            == records[f"{bare.namespace}:history:s{i}:f"]["executions"]
        )
    await cache.close()
    async with Store(bare.settings) as store:
        assert await store.executions.count(flow_id="f") == 9
        assert len((await store.executions.find(session_id="s1", flow_id="f")).items) == 3

    report = await bare.migrations.downgrade("0002")
    assert report.steps[0].documents_changed == 3
    assert await _state(bare) == records  # 0002's shape again, exactly
    for key in records:
        assert DAY * 1000 - 10_000 < await bare.client.pttl(key) <= DAY * 1000


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
async def test_0003_resumes_after_an_injected_failure(
    bare: Store, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    records = await _old_namespace(bare, 6)
    if direction == "downgrade":
        await bare.migrations.upgrade()
    converted = await _state(bare)
    real = legacy_history._delete_if_same
    calls = 0

    async def failing(ctx: Any, key: str, raw: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("injected failure")
        await real(ctx, key, raw)

    monkeypatch.setattr(legacy_history, "_delete_if_same", failing)
    run = bare.migrations.upgrade if direction == "upgrade" else bare.migrations.downgrade
    target = "head" if direction == "upgrade" else "0002"
    with pytest.raises(MigrationError, match="injected failure"):
        await run(target)
    assert (await bare.migrations.status()).interrupted is not None
    monkeypatch.setattr(legacy_history, "_delete_if_same", real)
    await run(target)
    assert (await bare.migrations.status()).interrupted is None
    if direction == "downgrade":
        assert await _state(bare) == records
        return
    after = await _state(bare)
    # As an uninterrupted run: no record left, every execution once, each written once.
    assert not [k for k in after if ":history:" in k]
    docs = {k: v for k, v in after.items() if ":execution:" in k}
    assert len(docs) == 18
    assert all(v["version"] == 1 for v in docs.values())
    assert sorted(v["result"]["execution_id"] for v in docs.values()) == sorted(
        f"s{i}-{n}" for i in range(6) for n in range(3)
    )
    del converted


# ---------------------------------------------------------------------- the fast path

_WHEN = (
    "2025-11-18T10:00:01.250000",
    "2025-11-18 10:00:00.123456",
    "2025-11-18T10:00:00",
    "2025-11-18 10:00",
    "2025-11-18",
    "2025-11-18T10:00:00Z",
    "2025-11-18T10:00:00.5+02:00",
    "2025-11-18T10:00:00.1234567-0130",
    "1969-07-20T20:17:40.000001",
    "1700-01-01T00:00:00.999999",
    "2025-11-18T10:00:00.000000",
    "2025-11-18T10:00:00.123",
    "2025-W47-2T10:00:00.123456",
    "20251118T100000",
    "2300-01-01T00:00:00.123456",  # beyond +-2**33 s: stored to the millisecond
    "2255-06-01T00:00:00.000001",
    "2250-01-01T00:00:00.000001",  # beyond 2**33 s: a double can't hold every microsecond
    "1690-01-01T00:00:00.000001",
    "9999-12-31T23:59:59.999999",
    "0001-01-01 00:00:00",
    "junk",
    "",
    1763460000,
    1763460000.5,
    1763460000.1234567,
    -1.000001,
    1.5e10,
    3e10,
    float("nan"),
    True,
    None,
    ["2025-11-18"],
)
_ANY = (
    "text",
    "é\u2028\x00\U0001f600",
    0,
    -(2**63),
    2**64,
    10**40,
    1.5,
    1e16,
    1e-7,
    -0.0,
    float("nan"),
    float("inf"),
    True,
    None,
    [],
    {},
    {"nested": [1, {"deep": None}]},
)


def _pick(rng: random.Random, values: Sequence[Any]) -> Any:
    return copy.deepcopy(values[rng.randrange(len(values))])


def _random_legacy(rng: random.Random, sid: str) -> dict[str, Any]:
    """A legacy session, mostly plausible, often odd (every branch of import_session)."""
    doc: dict[str, Any] = _a(sid) if rng.random() < 0.6 else _b(sid)
    odd = rng.random() < 0.5
    for field in ("created_at", "last_active", "updated_at"):
        if rng.random() < (0.5 if odd else 0.2):
            target = doc["metadata"] if "_schema_version" in doc and rng.random() < 0.5 else doc
            target[field] = _pick(rng, _WHEN) if odd else rng.choice(_WHEN[:9])
    if odd:
        for field, values in (
            ("status", ("running", "DONE", "SessionStatus.IDLE", "weird", None, 3)),
            ("backend", ("flowise", "Custom", "n8n", None, ["x"])),
            ("backend_session_id", ("b1", None, 17, {"x": 1})),
            ("current_flow_id", ("csv2507", "tab\there", "\u2028line", None, 5)),
            ("user_id", ("u1", "bell\x07", None, 3.5)),
            ("total_queries", (0, 4, -1, 2**63, 4.0, True, "3")),
            ("successful_queries", (1, 2**63 - 1, -(2**63) - 1)),
            ("total_response_time", (0.0, 1.25, 3, float("inf"), float("nan"), "x", 10**400)),
            ("context", ("text", [1], {"k": "v"})),
            ("metadata", ([1], "m", {"_legacy": {"own": 1}, "x": 2})),
            ("history", ({"role": "user"}, "h")),
            ("id", (sid, "other", 5, None)),
            ("extra", (1, {"a": "b"})),
            ("source", ("top",)),
        ):
            if rng.random() < 0.15:
                doc[field] = _pick(rng, values)
            elif rng.random() < 0.05:
                doc.pop(field, None)
        if rng.random() < 0.3:
            doc["context"] = {f"k{i}": _pick(rng, _ANY) for i in range(rng.randint(0, 4))}
        if rng.random() < 0.3 and isinstance(doc.get("metadata"), dict):
            doc["metadata"].update({f"m{i}": _pick(rng, _ANY) for i in range(rng.randint(0, 3))})
    items: list[Any] = []
    for _ in range(rng.randint(0, 5)):
        roll = rng.random()
        if odd and roll < 0.15:
            items.append(_pick(rng, _ANY))
            continue
        item: dict[str, Any] = {}
        if roll < 0.6:
            item["role"] = _pick(rng, ("user", "assistant", None, 5)) if odd else "user"
            item["content"] = _pick(rng, _ANY) if odd else "hello"
        else:
            item.update(q="question", a="answer")
        if rng.random() < 0.7:
            item["timestamp"] = _pick(rng, _WHEN) if odd else rng.choice(_WHEN[:9])
        if odd and rng.random() < 0.2:
            item["_private"] = _pick(rng, _ANY)
        if odd and rng.random() < 0.2:
            item = dict(reversed(list(item.items())))
        items.append(item)
    if "history" not in doc or isinstance(doc["history"], list):
        doc["history"] = items
    if odd and rng.random() < 0.2:
        doc = dict(reversed(list(doc.items())))
    return doc


def _both_paths(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Any], key_id: str
) -> tuple[Any, Any, bool]:
    """import_session as it runs, and with the fast path off (the model encodes every time)."""
    now = legacy_codec.stored_now()
    fast_taken = []
    real = legacy_codec._session_json

    def watched(doc: dict[str, Any]) -> str | None:
        out = real(doc)
        fast_taken.append(out is not None)
        return out

    def run() -> Any:
        try:
            return legacy_codec.import_session(
                f"ns:session:{key_id}", key_id, copy.deepcopy(data), now
            )
        except Exception as exc:  # the same error on both paths
            return (type(exc), str(exc))

    with monkeypatch.context() as patch:
        patch.setattr(legacy_codec, "_session_json", watched)
        fast = run()
    with monkeypatch.context() as patch:
        patch.setattr(legacy_codec, "_session_json", lambda doc: None)
        slow = run()
    return fast, slow, any(fast_taken)


def _same_outcome(fast: Any, slow: Any) -> bool:
    """The same Rewrite (or error), NaN values in problems included: compared by repr, since
    NaN != NaN (Python 3.13's dataclass __eq__ compares fields one by one, without the tuple
    comparison's identity shortcut that made a shared NaN object equal to itself)."""
    return type(fast) is type(slow) and repr(fast) == repr(slow)


def test_the_fast_path_writes_what_the_model_writes_for_the_shared_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken = 0
    for name, case in TABLE.items():
        fast, slow, used = _both_paths(monkeypatch, case(name), name)
        assert _same_outcome(fast, slow), name
        taken += used
    assert taken >= len(TABLE) // 2  # the plain cases are not left to the model


def test_the_fast_path_writes_what_the_model_writes_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(13)
    taken = 0
    n = 3000
    for i in range(n):
        key_id = f"s{i}" if rng.random() < 0.97 else rng.choice(("a b", "x*", "", "é" * 300))
        data = _random_legacy(rng, key_id)
        fast, slow, used = _both_paths(monkeypatch, data, key_id)
        assert _same_outcome(fast, slow), (i, data)
        taken += used
    assert n // 3 < taken < n  # both paths were exercised


# ---------------------------------------------------------------------- the parser


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types: -0.0 is not 0.0, NaN is NaN, key order counts.

    Iterative: the texts nest deeper than the interpreter's recursion limit allows a
    recursive walk (Python 3.13 counts its frames differently)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if repr(x) != repr(y):
                return False
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


def _outcome(parse: Callable[[bytes], Any], text: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(text)
    except ValueError:
        return "refused", None
    except RecursionError:
        return "too deep", None


_TEXTS = (
    b'{"a":[1,2.5,-0.0,1e5,1E-5,"x\\u00e9",null,true,false],"b":{"c":"d"}}',
    b"[1.7976931348623157e308,5e-324,0.1,1e400,-1e400,2.2250738585072011e-308]",
    b"[123456789012345678901234567890,-0,-9223372036854775809,18446744073709551616]",
    b"[NaN,Infinity,-Infinity]",
    b'{"a":1,"b":2,"a":3}',
    b'{"a":{"x":1,"x":[2]}}',
    '{"k":"\u00e9\u4e2d\U0001f600\u2028"}'.encode(),
    b'["\\ud83d\\ude00","\\ud800","\\udc00x","\\u0000"]',
    b'"\xed\xa0\x80"',  # an encoded surrogate: json.loads takes it (surrogatepass)
    b"\xef\xbb\xbf[1]",
    '{"a":1}'.encode("utf-16"),
    '{"a":1}'.encode("utf-16-le"),
    b"[" * 300 + b"]" * 300,
    b"[" * 5000 + b"]" * 5000,
    b"1" * 4300,
    b"1" * 4301,
    b" \t\r\n[1] \n",
    b"\x0c[1]",
    b"[1,]",
    b"01",
    b'"a\x01"',
    b"nan",
    b"-NaN",
    b"",
)


def test_loads_gives_what_json_loads_gives() -> None:
    rng = random.Random(5)
    texts = list(_TEXTS)
    alphabet = b'{}[],:"\\ 0123456789.eE+-ntrufalsNIy\x00\x7f\xc0\x80\xed\xa0\xe9\xff\x1f'
    for _ in range(40_000):
        text = bytearray(rng.choice(_TEXTS[:8]))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(text) + 1)
            roll = rng.random()
            if roll < 0.4:
                text[pos:pos] = bytes([rng.choice(alphabet)])
            elif pos < len(text):
                if roll < 0.7:
                    del text[pos]
                else:
                    text[pos] = rng.choice(alphabet)
        texts.append(bytes(text))
    for _ in range(20_000):
        digits = [str(rng.randint(0, 10 ** rng.randint(1, 25))) for _ in range(3)]
        number = rng.choice(("{0}.{1}e{2}", "{0}.{1}", "{0}e-{2}", "-{0}.{1}E+{2}")).format(*digits)
        texts.append(number.encode())
    accepted = 0
    for text in texts:
        mine, theirs = _outcome(legacy_codec.loads, text), _outcome(json.loads, text)
        assert mine[0] == theirs[0], text
        assert _same(mine[1], theirs[1]), text
        accepted += mine[0] == "ok"
    assert accepted > 25_000


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-11-18T10:00:00.000001",
        "2242-03-16T12:56:31.000001",  # just below 2**33 s
        "2250-01-01T00:00:00.000001",  # beyond 2**33 s: a double's step is ~1.9 us there
        "2255-03-01T00:00:00.000003",
        "1690-01-01T00:00:00.000001",
    ],
)
def test_a_history_timestamp_in_iso_text_exports_as_it_was(stamp: str) -> None:
    data = {
        "id": "s1",
        "backend": "flowise",
        "history": [{"role": "user", "content": "hi", "timestamp": stamp}],
    }
    rewrite = legacy_codec.import_session("ns:session:s1", "s1", data, 1763460000.0)
    assert rewrite.value is not None
    # What the store holds goes through RedisJSON's number parser: JSON text either way.
    exported = json.loads(legacy_codec.export_session(json.loads(rewrite.value)))
    assert exported["history"][0]["timestamp"] == stamp
