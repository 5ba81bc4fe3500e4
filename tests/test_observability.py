"""OpenTelemetry spans and metrics, read back with the SDK's in-memory exporter and reader.

The SDK's providers are global and can be set once per process: this module sets them once,
with a sampler that records only while a test of this module runs (the rest of the suite sees
non-recording spans). Without opentelemetry installed nothing changes: checked in a
subprocess that blocks the import.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, StatusCode

from flywheel_state import (
    Backend,
    ConflictError,
    CorruptRecordError,
    ExecutionResult,
    HistoryEntry,
    NotFoundError,
    RedisSessionManager,
    Session,
    SessionStatus,
    Settings,
    Store,
)

SECRET_ID = "secret-id-4711"
SECRET_CONTENT = "SECRET-CONTENT-of-a-conversation"
SECRET_FILTER = "SECRET-FILTER-value"


class _Switch(Sampler):
    """Records while ``on`` (the tests of this module), drops otherwise."""

    on = False

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if not self.on:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "switch"


_SAMPLER = _Switch()
_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def _providers() -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=_SAMPLER)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    _READER.get_metrics_data()  # start from here (cumulative: tests compare differences)
    _SAMPLER.on = True
    yield _EXPORTER
    _SAMPLER.on = False
    _EXPORTER.clear()


def names(finished: Sequence[ReadableSpan]) -> list[str]:
    return [s.name for s in finished]


def by_name(finished: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    matches = [s for s in finished if s.name == name]
    assert len(matches) == 1, names(finished)
    return matches[0]


def all_values(finished: Sequence[ReadableSpan]) -> str:
    """Every attribute and event attribute of every span, as one text."""
    dump = []
    for span in finished:
        dump.append(span.name)
        dump.append(json.dumps(dict(span.attributes or {}), default=str))
        for event in span.events:
            dump.append(json.dumps(dict(event.attributes or {}), default=str))
    return "\n".join(dump)


def points(name: str) -> list[Any]:
    data = _READER.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    out.extend(metric.data.data_points)
    return out


def histogram_counts() -> dict[tuple[str, str | None], int]:
    return {
        (p.attributes["db.operation.name"], p.attributes.get("error.type")): p.count
        for p in points("db.client.operation.duration")
    }


def counter(name: str, **attrs: str) -> int:
    return sum(
        p.value
        for p in points(name)
        if all(p.attributes.get(k.replace("_", ".")) == v for k, v in attrs.items())
    )


def session(sid: str, **fields: Any) -> Session:
    base: dict[str, Any] = {
        "backend": Backend.FLOWISE,
        "status": SessionStatus.ACTIVE,
        "current_flow_id": "flow-a",
    }
    base.update(fields)
    return Session(id=sid, **base)


async def every_call(store: Store) -> None:
    """Each public repository and query call once (the order of the expected span names)."""
    s = await store.sessions.save(session(SECRET_ID, context={"note": SECRET_CONTENT}))
    await store.sessions.insert(session("other"))
    await store.sessions.save_many([session("m1"), session("m2")])
    await store.sessions.get(SECRET_ID)
    await store.sessions.get_or_none("nope")
    await store.sessions.get_many([SECRET_ID, "nope"])
    await store.sessions.exists(SECRET_ID)
    await store.sessions.ttl(SECRET_ID)
    await store.sessions.update(s.id, context={"note": SECRET_CONTENT})
    await store.sessions.touch(s.id)
    await store.sessions.append_history(s.id, HistoryEntry(role="user", content=SECRET_CONTENT))
    await store.sessions.find(flow_id=SECRET_FILTER, status=["active"], limit=5)
    await store.sessions.count(flow_id="flow-a")
    await store.sessions.ids(backend="flowise", limit=10)
    async for _ in store.sessions.iterate(flow_id="flow-a"):
        pass
    await store.sessions.stats()
    await store.sessions.delete("m1")
    await store.sessions.delete_many(["m2", "nope"])
    await store.executions.save(
        ExecutionResult(
            id="e1", session_id=s.id, flow_id="flow-a", backend="flowise", status="completed"
        )
    )
    await store.executions.get("e1")
    await store.executions.find(session_id=s.id)


EXPECTED = [
    "sessions.save",
    "sessions.insert",
    "sessions.save_many",
    "sessions.get",
    "sessions.get_or_none",
    "sessions.get_many",
    "sessions.exists",
    "sessions.ttl",
    "sessions.update",
    "sessions.touch",
    "sessions.append_history",
    "sessions.find",
    "sessions.count",
    "sessions.ids",
    "sessions.iterate",
    "sessions.stats",
    "sessions.delete",
    "sessions.delete_many",
    "executions.save",
    "executions.get",
    "executions.find",
]


# ----------------------------------------------------------------------------- spans


async def test_one_client_span_per_public_call_with_the_database_attributes(
    store: Store, spans: InMemorySpanExporter, redis_url: str
) -> None:
    await every_call(store)
    finished = spans.get_finished_spans()
    assert names(finished) == EXPECTED
    host, port = redis_url.split("//")[1].split("/")[0].rsplit(":", 1)
    for span in finished:
        attrs = span.attributes or {}
        assert span.kind is SpanKind.CLIENT
        assert attrs["db.system.name"] == "redis"
        assert attrs["db.operation.name"] == span.name
        assert attrs["server.address"] == host and attrs["server.port"] == int(port)
        assert attrs["flywheel_state.namespace"] == store.namespace
        assert attrs["flywheel_state.kind"] == span.name.split(".")[0][:-1]
        assert span.status.status_code is StatusCode.UNSET
    find = by_name(finished, "sessions.find").attributes or {}
    assert find["flywheel_state.query.filters"] == ("flow_id", "status")
    assert find["flywheel_state.query.match_count"] == 0
    count = by_name(finished, "sessions.count").attributes or {}
    assert (count["flywheel_state.query.filters"], count["flywheel_state.query.match_count"]) == (
        ("flow_id",),
        4,  # SECRET_ID, other, m1, m2
    )
    assert by_name(finished, "sessions.ids").attributes["flywheel_state.query.match_count"] == 4  # type: ignore[index]
    iterate = by_name(finished, "sessions.iterate").attributes or {}
    assert iterate["flywheel_state.query.match_count"] == 4
    assert by_name(finished, "sessions.stats").attributes["flywheel_state.query.match_count"] == 4  # type: ignore[index]
    assert by_name(finished, "sessions.get_or_none").attributes["flywheel_state.found"] is False  # type: ignore[index]


async def test_no_id_content_or_filter_value_in_any_span(
    store: Store, spans: InMemorySpanExporter
) -> None:
    await every_call(store)
    text = all_values(spans.get_finished_spans())
    assert SECRET_ID not in text and SECRET_CONTENT not in text and SECRET_FILTER not in text
    assert "flow-a" not in text and "flowise" not in text


async def test_trace_ids_opt_in_puts_the_record_id_in_spans(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    async with Store(settings.replace(trace_ids=True), auto_migrate=True) as store:
        spans.clear()
        await store.sessions.save(session(SECRET_ID, context={"note": SECRET_CONTENT}))
        await store.sessions.get(SECRET_ID)
    finished = spans.get_finished_spans()
    assert [s.attributes["flywheel_state.record.id"] for s in finished] == [SECRET_ID] * 2  # type: ignore[index]
    assert SECRET_CONTENT not in all_values(finished)


async def test_spans_nest_under_the_callers_span_and_not_under_each_other(
    store: Store, spans: InMemorySpanExporter
) -> None:
    await store.sessions.save(session("n1"))
    spans.clear()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("handle request") as parent:
        await store.sessions.get("n1")  # uses get_or_none inside: still one span
        await store.sessions.update("n1", status=SessionStatus.IDLE)
    finished = spans.get_finished_spans()
    assert names(finished) == ["sessions.get", "sessions.update", "handle request"]
    for span in finished[:2]:
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id


async def test_failures_are_recorded_and_not_found_on_get_is_an_outcome(
    store: Store, spans: InMemorySpanExporter
) -> None:
    s = await store.sessions.save(session("f1"))
    spans.clear()
    with pytest.raises(ConflictError):
        await store.sessions.save(s, expected_version=99)
    with pytest.raises(NotFoundError):
        await store.sessions.get("missing")
    with pytest.raises(NotFoundError):
        await store.sessions.update("missing", status=SessionStatus.IDLE)
    failed, got, updated = spans.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "VersionMismatchError"
    assert [(e.name, dict(e.attributes or {})) for e in failed.events] == [
        ("exception", {"exception.type": "VersionMismatchError"})
    ]
    assert got.status.status_code is StatusCode.UNSET
    assert "error.type" not in (got.attributes or {})
    assert (got.attributes or {})["flywheel_state.found"] is False
    assert updated.status.status_code is StatusCode.ERROR
    assert (updated.attributes or {})["error.type"] == "NotFoundError"
    assert "missing" not in all_values([failed, got, updated])


async def test_an_iteration_stopped_early_ends_its_span_without_error(
    store: Store, spans: InMemorySpanExporter
) -> None:
    await store.sessions.save_many([session(f"i{n}") for n in range(3)])
    spans.clear()
    walk = store.sessions.iterate(flow_id="flow-a", batch_size=1)
    async for _ in walk:
        break
    await walk.aclose()  # type: ignore[attr-defined]
    (span,) = spans.get_finished_spans()
    assert span.name == "sessions.iterate"
    assert span.status.status_code is StatusCode.UNSET
    assert (span.attributes or {})["flywheel_state.query.match_count"] == 1


async def test_migration_and_compat_calls_have_spans(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    store = Store(settings)
    try:
        report = await store.migrations.upgrade()
        await store.migrations.status()
    finally:
        await store.close()
    finished = spans.get_finished_spans()
    assert names(finished) == ["migrations.upgrade", "migrations.status"]
    up = finished[0].attributes or {}
    assert up["db.operation.name"] == "migrations.upgrade"
    assert up["flywheel_state.migration.steps"] == len(report.steps) == 3
    spans.clear()
    manager = RedisSessionManager(url=settings.url, namespace=settings.namespace)
    try:
        assert await manager.save_session(session("c1")) is True
        assert (await manager.load_session("c1")) is not None
    finally:
        await manager.close()
    finished = spans.get_finished_spans()
    outer = by_name(finished, "compat.sessions.save_session")
    inner = by_name(finished, "sessions.save")
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert "compat.sessions.load_session" in names(finished)


# ----------------------------------------------------------------------------- metrics


async def test_duration_histogram_has_points_per_operation_and_error(
    store: Store, spans: InMemorySpanExporter
) -> None:
    before = histogram_counts()
    await every_call(store)
    s = await store.sessions.get(SECRET_ID)
    with pytest.raises(ConflictError):
        await store.sessions.save(s, expected_version=0)
    after = histogram_counts()
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    expected = {(name, None): 1 for name in EXPECTED}
    expected[("sessions.get", None)] = 2
    expected[("sessions.save", "AlreadyExistsError")] = 1  # expected_version=0
    assert grown == expected
    for point in points("db.client.operation.duration"):
        assert set(point.attributes) <= {"db.system.name", "db.operation.name", "error.type"}
        assert point.sum >= 0


async def test_counters_for_refreshes_conflicts_corrupt_records_and_pools(
    settings: Settings, spans: InMemorySpanExporter, sync_client: Any
) -> None:
    async with Store(settings, auto_migrate=True, refresh_on_read=True) as store:
        refreshes = counter("flywheel_state.session.ttl_refreshes")
        conflicts = counter("flywheel_state.conflicts", db_operation_name="sessions.insert")
        corrupt = counter("flywheel_state.corrupt_records", db_operation_name="sessions.get")
        s = await store.sessions.save(session("k1"))  # 1 refresh
        await store.sessions.touch(s.id)  # 1
        await store.sessions.get(s.id)  # refresh_on_read: 1
        await store.sessions.save(session("k2"), ttl=None)  # no expiry: not a refresh
        with pytest.raises(ConflictError):
            await store.sessions.insert(session("k1"))
        sync_client.set(store.sessions.key("bad"), "not json at all")
        with pytest.raises(CorruptRecordError):
            await store.sessions.get("bad")
        assert counter("flywheel_state.session.ttl_refreshes") - refreshes == 3
        assert (
            counter("flywheel_state.conflicts", db_operation_name="sessions.insert") - conflicts
            == 1
        )
        assert (
            counter("flywheel_state.corrupt_records", db_operation_name="sessions.get") - corrupt
            == 1
        )
        pool = {
            p.attributes["db.client.connection.state"]: p.value
            for p in points("db.client.connection.count")
            if p.attributes["db.client.connection.pool.name"] == store.namespace
        }
        assert pool["used"] == 0 and pool["idle"] >= 1


async def test_migration_rewrites_are_counted(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    store = Store(settings)
    try:
        legacy = {
            "id": "old1",
            "backend": "flowise",
            "status": "active",
            "current_flow_id": "f",
            "context": {},
            "history": [],
            "metadata": {},
        }
        await store.client.set(f"{store.namespace}:session:old1", json.dumps(legacy))
        before = counter("flywheel_state.migration.documents_rewritten")
        report = await store.migrations.upgrade()
        assert report.documents_changed == 1
        assert counter("flywheel_state.migration.documents_rewritten") - before == 1
    finally:
        await store.close()


# ----------------------------------------------------------------------------- without otel


def test_without_opentelemetry_nothing_is_imported_and_calls_work(redis_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError("blocked for the test")
                return None

        sys.meta_path.insert(0, Block())

        from flywheel_state import Session, Store, observability
        from flywheel_state.repositories.base import Repository

        async def main():
            async with Store(url={redis_url!r}, namespace="nootel", auto_migrate=True) as s:
                await s.sessions.save(Session(id="x", backend="flowise", status="active"))
                got = await s.sessions.get("x")
                page = await s.sessions.find(backend="flowise")
                await s.sessions.delete("x")
                return got.id, page.total

        print(asyncio.run(main()))
        print(observability.AVAILABLE)
        print(hasattr(Repository.save, "__wrapped__"))
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["('x', 1)", "False", "False", "[]"]


# ----------------------------------------------------------------------------- README recipe


def test_the_readme_prometheus_recipe_serves_the_metrics(redis_url: str, namespace: str) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("<!-- prometheus-recipe -->", 1)[1].split("```python\n", 1)[1]
    recipe = block.split("```", 1)[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert "start_http_server(9464)" in recipe
    script = recipe.replace("start_http_server(9464)", f"start_http_server({port})")
    script += textwrap.dedent(
        f"""
        import urllib.request
        print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
        """
    )
    env = {**os.environ, "REDIS_URL": redis_url, "REDIS_NAMESPACE": namespace}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    scrape = out.stdout
    for op in ("sessions.save", "sessions.get"):
        count = re.search(
            rf'^db_client_operation_duration_seconds_count\{{db_operation_name="{op}",'
            rf'db_system_name="redis"[^}}]*\}} (\S+)$',
            scrape,
            re.MULTILINE,
        )
        assert count is not None and float(count.group(1)) == 1.0, scrape
    assert re.search(
        r"^flywheel_state_session_ttl_refreshes_total"
        r'\{db_operation_name="sessions.save"[^}]*\} 1.0$',
        scrape,
        re.MULTILINE,
    )
    assert f'db_client_connection_pool_name="{namespace}"' in scrape
    assert '"s1"' not in scrape and "=s1" not in scrape
