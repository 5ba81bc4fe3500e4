"""Redis Cluster (3 local shards of the embedded binaries, one per module) and search=False.

The embedded search module has no cluster coordinator, so these tests cover the key-value API
with ``search=False`` and the refusal of a search Store; the query tests run against a cluster
with a distributed query engine only when ``REDIS_CLUSTER_URL`` names one (opt-in).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from _counting_script import COUNTING_SCRIPT

from flywheel_state import Settings, Store
from flywheel_state.compat import RedisExecutionCache, RedisSessionManager
from flywheel_state.errors import (
    MigrationError,
    MigrationLockedError,
    ModuleMissingError,
    SchemaOutOfDateError,
    SearchUnavailableError,
    StoreUnavailableError,
)
from flywheel_state.migrations import MigrationRunner, ScriptDirectory, default_scripts
from flywheel_state.migrations._lock import MigrationLock
from flywheel_state.migrations.context import bookkeeping_prefix
from flywheel_state.models import ExecutionResult, Session
from flywheel_state.topology import LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(shards=3) as topology:
        yield topology


@pytest.fixture
def ns() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def kv(cluster: LocalCluster, ns: str) -> AsyncIterator[Store]:
    async with Store(url=cluster.url, namespace=ns, search=False) as store:
        yield store


def _keys_per_node(cluster: LocalCluster, pattern: str) -> list[int]:
    counts = []
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            counts.append(sum(1 for _ in client.scan_iter(match=pattern, count=1000)))
        finally:
            client.close()
    return counts


async def test_search_store_on_a_cluster_without_coordinator_is_refused(
    cluster: LocalCluster, ns: str
) -> None:
    store = Store(url=cluster.url, namespace=ns, auto_migrate=True)
    with pytest.raises(ModuleMissingError, match="no distributed query engine") as info:
        await asyncio.wait_for(store.connect(), timeout=30)
    assert "search=False" in str(info.value)
    assert await store.has_distributed_search() is False
    await store.close()
    assert sum(_keys_per_node(cluster, f"{ns}:*")) == 0  # nothing was written


async def test_key_value_api_across_every_shard(kv: Store, cluster: LocalCluster, ns: str) -> None:
    repo = kv.sessions
    sessions = [Session(id=f"s{i}", backend="flowise", user_id=f"u{i % 7}") for i in range(700)]
    await repo.save_many(sessions)
    assert all(s.version == 1 for s in sessions)
    per_node = _keys_per_node(cluster, f"{ns}:session:*")
    assert sum(per_node) == 700 and all(n > 150 for n in per_node)  # every shard holds keys
    got = await repo.get_many([f"s{i}" for i in range(700)] + ["absent"])
    assert [g.id if g else None for g in got] == [f"s{i}" for i in range(700)] + [None]
    await repo.insert(Session(id="new", backend="langflow"))
    assert (await repo.get("new")).backend.value == "langflow"
    assert await repo.get_or_none("nope") is None
    assert await repo.update("s1", user_id="changed") == 2
    assert await repo.append_history("s2", {"role": "user", "content": "hi"}) == 2
    assert (await repo.get("s2")).history[0].content == "hi"
    assert await repo.touch("s3", ttl=600) == 2
    ttl = await repo.ttl("s3")
    assert ttl is not None and timedelta(seconds=590) < ttl <= timedelta(seconds=600)
    assert await repo.exists("s4") and not await repo.exists("nope")
    assert await repo.delete("s5") and not await repo.exists("s5")
    assert await repo.delete_many([f"s{i}" for i in range(10, 700)]) == 690
    assert sum(_keys_per_node(cluster, f"{ns}:session:*")) == 700 + 1 - 1 - 690
    await kv.executions.save(ExecutionResult(id="e1", session_id="s1", flow_id="f"))
    assert (await kv.executions.get("e1")).flow_id == "f"


async def test_queries_and_migrations_refuse_with_search_false(
    kv: Store, cluster: LocalCluster, ns: str
) -> None:
    await kv.sessions.save(Session(id="a", backend="flowise"))
    for call in (
        lambda: kv.sessions.find(),
        lambda: kv.sessions.count(),
        lambda: kv.sessions.ids(),
        lambda: kv.sessions.stats(),
        lambda: kv.executions.count(),
    ):
        with pytest.raises(SearchUnavailableError, match="search=False"):
            await call()
    with pytest.raises(SearchUnavailableError):
        async for _ in kv.sessions.iterate():
            pass
    # Migrations are not refused there (see test_legacy_import_over_every_shard): a cluster
    # without a distributed query engine records index steps as not applicable.


async def test_connect_without_search_checks_the_migration_state(
    cluster: LocalCluster, ns: str
) -> None:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    prefix = bookkeeping_prefix(ns, cluster=True)  # the cluster's names carry a hash tag
    try:
        client.set(f"{prefix}:revision", "9999")  # data newer than this code
        with pytest.raises(SchemaOutOfDateError):
            await Store(url=cluster.url, namespace=ns, search=False).connect()
        client.delete(f"{prefix}:revision")
        client.set(f"{prefix}:running", '{"revision": "0001", "direction": "upgrade"}')
        with pytest.raises(SchemaOutOfDateError, match="interrupted"):
            await Store(url=cluster.url, namespace=ns, search=False).connect()
    finally:
        client.delete(f"{prefix}:running")
        client.close()


async def test_migration_lock_contention_on_a_cluster(kv: Store, ns: str) -> None:
    key = kv.migrations._key("lock")
    first = MigrationLock(kv.client, key, purpose="test one", ttl=5)
    second = MigrationLock(kv.client, key, purpose="test two", ttl=5)
    await first.acquire()
    try:
        with pytest.raises(MigrationLockedError, match="test one"):
            await second.acquire()
    finally:
        await first.release()
    await second.acquire()
    await second.release()


async def test_compat_managers_on_a_cluster(cluster: LocalCluster, ns: str) -> None:
    sessions = RedisSessionManager(url=cluster.url, namespace=ns, search=False)
    cache = RedisExecutionCache(url=cluster.url, namespace=ns, search=False)
    try:
        for i in range(20):
            assert await sessions.save_session(Session(id=f"c{i}", backend="flowise")) is True
        loaded = await sessions.load_session("c7")
        assert loaded is not None and loaded.id == "c7"
        assert await sessions.delete_session("c7") is True
        assert await sessions.load_session("c7") is None
        assert await cache.cache_result("e1", {"output": "x"}) is True
        assert await cache.get_result("e1") is not None
    finally:
        await sessions.close()
        await cache.close()


async def test_search_false_on_a_single_node_creates_no_index(
    redis_server: str, namespace: str, sync_client: redis.Redis
) -> None:
    async with Store(url=redis_server, namespace=namespace, search=False) as store:
        await store.sessions.save(Session(id="a", backend="flowise"))
        assert (await store.sessions.get("a")).id == "a"
        with pytest.raises(SearchUnavailableError, match="migrations"):
            await store.migrations.upgrade()  # one node could have search: refused, not skipped
    indexes = [i for i in sync_client.execute_command("FT._LIST") if i.startswith(namespace)]
    assert indexes == []
    assert not sync_client.exists(f"{namespace}:_migrations:revision")


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:1,127.0.0.1:2",  # nobody listens
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster",  # no sentinel answers
    ],
)
async def test_unreachable_topologies_fail_within_the_timeouts(url: str) -> None:
    settings = Settings(url=url, connect_timeout=0.5, command_timeout=0.5)
    with pytest.raises(StoreUnavailableError):
        await asyncio.wait_for(Store(settings).connect(), timeout=20)


# ---------------------------------------------------------------- opt-in: a real coordinator

CLUSTER_URL = os.environ.get("REDIS_CLUSTER_URL")


@pytest.mark.skipif(not CLUSTER_URL, reason="set REDIS_CLUSTER_URL to a Redis 8 cluster")
async def test_queries_on_a_cluster_with_distributed_search(ns: str) -> None:
    assert CLUSTER_URL is not None
    async with Store(url=CLUSTER_URL, namespace=ns, auto_migrate=True) as store:
        assert await store.has_distributed_search()
        await store.sessions.save_many(
            [Session(id=f"q{i}", backend="flowise", user_id=f"u{i % 3}") for i in range(300)]
        )
        assert await store.sessions.count() == 300
        assert await store.sessions.count(user_id="u1") == 100
        page = await store.sessions.find(user_id="u2", limit=10)
        assert len(page) == 10 and all(s.user_id == "u2" for s in page)
        assert len([i async for i in store.sessions.iterate(user_id="u0")]) == 100
        await store.sessions.delete_many([f"q{i}" for i in range(300)])


def test_doctor_reports_each_shard(cluster: LocalCluster, kv: Store) -> None:
    import json

    from click.testing import CliRunner

    from flywheel_state.cli import cli

    result = CliRunner().invoke(cli, ["doctor", "--url", cluster.url, "--json"])
    assert result.exit_code == 1  # no distributed search: a problem, said clearly
    report = json.loads(result.output)
    assert len(report["shards"]) == 3 and report["distributed_search"] is False
    assert {s["address"] for s in report["shards"]} == {
        f"127.0.0.1:{n.port}" for n in cluster.nodes
    }
    assert any("search=False" in p for p in report["problems"])


async def test_batches_survive_nodes_that_lost_their_scripts(
    kv: Store, cluster: LocalCluster
) -> None:
    await kv.sessions.save_many([Session(id=f"b{i}", backend="flowise") for i in range(30)])
    for node in cluster.nodes:  # as after a restart: the script cache is empty
        client = redis.Redis(port=node.port)
        client.script_flush()
        client.close()
    saved = await kv.sessions.save_many([Session(id=f"b{i}", backend="flowise") for i in range(30)])
    assert [s.version for s in saved] == [2] * 30
    await kv.sessions.save(Session(id="single", backend="flowise"))  # AsyncScript reloads too


# ---------------------------------------------------------------------- migrations on a cluster

DAY = 86_400


def _legacy_session(sid: str) -> dict[str, object]:
    """A legacy session string as the original code wrote it (shape A)."""
    return {
        "id": sid,
        "backend": "flowise",
        "backend_session_id": f"flowise_{sid}",
        "status": "running",
        "current_flow_id": "csv2507",
        "context": {"turn": 3},
        "history": [{"role": "user", "content": "hello", "timestamp": "2025-11-18T10:00:01"}],
        "metadata": {"source": "mcp"},
        "created_at": "2025-11-18 10:00:00.123456",
        "last_active": "2025-11-18T10:05:00.654321",
    }


def _write_legacy_strings(cluster: LocalCluster, ns: str, n: int) -> dict[str, bytes]:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    written: dict[str, bytes] = {}
    try:
        pipe = client.pipeline()
        for i in range(n):
            text = json.dumps(_legacy_session(f"s{i}"))
            pipe.set(f"{ns}:session:s{i}", text, ex=DAY)
            written[f"{ns}:session:s{i}"] = text.encode()
        pipe.execute()
    finally:
        client.close()
    return written


def _types_and_ttls(cluster: LocalCluster, keys: list[str]) -> dict[str, tuple[str, int]]:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        pipe = client.pipeline()
        for key in keys:
            pipe.type(key)
            pipe.ttl(key)
        replies = pipe.execute()
    finally:
        client.close()
    return {key: (replies[2 * i].decode(), int(replies[2 * i + 1])) for i, key in enumerate(keys)}


async def test_legacy_import_over_every_shard(kv: Store, cluster: LocalCluster, ns: str) -> None:
    n = 600
    written = _write_legacy_strings(cluster, ns, n)
    assert all(count > 100 for count in _keys_per_node(cluster, f"{ns}:session:*"))
    runner = MigrationRunner(kv, batch_size=100)
    report = await runner.upgrade()
    assert [s.revision for s in report.steps] == ["0001", "0002", "0003"]
    assert any("not applicable" in a for a in report.steps[0].actions)  # no index on a cluster
    assert report.steps[1].documents_changed == n
    state = _types_and_ttls(cluster, list(written))
    assert all(t == "ReJSON-RL" and DAY - 120 < ttl <= DAY for t, ttl in state.values())
    docs = await kv.sessions.get_many([f"s{i}" for i in range(n)])
    assert [d.id if d else None for d in docs] == [f"s{i}" for i in range(n)]
    assert all(d is not None and d.history[0].content == "hello" for d in docs)
    status = await runner.status()
    assert status.current == "0003" and status.up_to_date and status.interrupted is None
    # The bookkeeping shares one slot (one node); the data stays spread over every shard.
    bookkeeping = _keys_per_node(cluster, f"{ns}:_migrations:*")
    assert sorted(bookkeeping)[:2] == [0, 0] and sum(bookkeeping) >= 2
    async with Store(url=cluster.url, namespace=ns, search=False) as again:
        assert (await again.sessions.get("s1")).id == "s1"  # connect sees head: opens

    down = await runner.downgrade("base")
    assert [s.revision for s in down.steps] == ["0003", "0002", "0001"]
    state = _types_and_ttls(cluster, list(written))
    assert all(t == "string" and DAY - 120 < ttl <= DAY for t, ttl in state.values())
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        restored = {key: client.get(key) for key in written}
    finally:
        client.close()
    assert {k: json.loads(v) for k, v in restored.items()} == {
        k: json.loads(v) for k, v in written.items()
    }
    assert (await runner.status()).current is None


async def test_legacy_flow_histories_over_every_shard(
    kv: Store, cluster: LocalCluster, ns: str
) -> None:
    """0002/0003 turn flow-history strings on every shard into executions, and back."""
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    written: dict[str, str] = {}
    try:
        for i in range(60):
            record = {
                "session_id": f"s{i}",
                "flow_id": "f",
                "executions": [{"execution_id": f"e{i}-{j}", "result": j} for j in range(2)],
                "cached_at": "2025-11-18 11:00:00",
            }
            written[f"{ns}:history:s{i}:f"] = json.dumps(record)
            client.set(f"{ns}:history:s{i}:f", written[f"{ns}:history:s{i}:f"], ex=DAY)
    finally:
        client.close()
    assert sum(1 for c in _keys_per_node(cluster, f"{ns}:history:*") if c > 0) >= 2
    runner = MigrationRunner(kv, batch_size=25)
    await runner.upgrade()
    assert sum(_keys_per_node(cluster, f"{ns}:history:*")) == 0
    per_node = _keys_per_node(cluster, f"{ns}:execution:*")
    assert sum(per_node) == 120 and sum(1 for c in per_node if c > 0) >= 2
    await runner.downgrade("base")
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        restored = {key: client.get(key) for key in written}
        ttls = [client.ttl(key) for key in written]
    finally:
        client.close()
    assert {k: json.loads(v) for k, v in restored.items()} == {
        k: json.loads(v) for k, v in written.items()
    }
    assert all(DAY - 120 < t <= DAY for t in ttls)


def _scripts(tmp_path: Path) -> ScriptDirectory:
    shutil.copy(default_scripts().path / "0001_initial.py", tmp_path / "0001_initial.py")
    (tmp_path / "0002_count.py").write_text(COUNTING_SCRIPT)
    return ScriptDirectory(tmp_path)


async def test_failure_mid_batch_resumes_on_a_cluster(
    kv: Store, cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    scripts = _scripts(tmp_path)
    runner = MigrationRunner(kv, scripts=scripts, batch_size=100)
    module = scripts.get("0002").module
    module.FAIL_AT = 250  # inside the third batch, while the second one's writes are in flight
    module.PROBLEM_SUFFIX = "7"
    n = 1000
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        pipe = client.pipeline()
        for i in range(n):
            pipe.set(f"{ns}:item:{i}", f"v{i}", ex=DAY)
        pipe.execute()
    finally:
        client.close()

    with pytest.raises(MigrationError, match="injected failure mid-batch"):
        await runner.upgrade()
    status = await runner.status()
    assert status.interrupted is not None and status.interrupted["revision"] == "0002"
    keys = [f"{ns}:item:{i}" for i in range(n)]
    done_first = {k for k, (t, _) in _types_and_ttls(cluster, keys).items() if t == "ReJSON-RL"}
    transformed_first = set(module.CALLS)
    assert done_first <= transformed_first and len(done_first) >= 100

    module.FAIL_AT = None
    module.CALLS.clear()
    report = await runner.upgrade()
    transformed_second = set(module.CALLS)
    assert not transformed_second & done_first  # nothing rewritten twice
    assert done_first | transformed_second == set(keys)
    step = report.steps[0]
    assert step.resumed and step.documents_changed == n  # counted exactly across both runs
    state = _types_and_ttls(cluster, keys)
    assert all(t == "ReJSON-RL" and ttl > DAY - 120 for t, ttl in state.values())
    # Problems of rewritten keys are kept across the interruption: one per key ending in 7.
    assert step.problem_count == n // 10
    record = (await runner.history())[-1]
    assert record.revision == "0002" and record.documents_changed == n


async def test_runner_lock_contention_on_a_cluster(
    kv: Store, cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    gated = tmp_path / "gated"
    gated.mkdir()
    shutil.copy(default_scripts().path / "0001_initial.py", gated / "0001_initial.py")
    (gated / "0002_gated.py").write_text(
        textwrap.dedent(
            """
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
            """
        )
    )
    scripts = ScriptDirectory(gated)
    module = scripts.get("0002").module
    module.STARTED, module.GATE = asyncio.Event(), asyncio.Event()
    first = MigrationRunner(kv, scripts=scripts, lock_ttl=0.6)
    task = asyncio.create_task(first.upgrade())
    other = Store(url=cluster.url, namespace=ns, search=False)  # migrate commands don't connect
    second = MigrationRunner(other, scripts=scripts)
    try:
        await asyncio.wait_for(module.STARTED.wait(), 20)
        await asyncio.sleep(1.2)  # twice the lock's TTL: only renewal keeps it held
        with pytest.raises(MigrationLockedError, match="upgrade to head"):
            await second.upgrade()
        assert (await second.status()).lock_holder is not None
        module.GATE.set()
        assert [s.revision for s in (await task).steps] == ["0001", "0002"]
        assert (await second.upgrade()).steps == []
    finally:
        module.GATE.set()
        await other.close()
    assert sum(_keys_per_node(cluster, f"{ns}:_migrations:*lock")) == 0  # released


def test_migrate_status_on_a_cluster(cluster: LocalCluster, ns: str) -> None:
    from click.testing import CliRunner

    from flywheel_state.cli import cli

    result = CliRunner().invoke(
        cli, ["migrate", "status", "--json", "--url", cluster.url, "--namespace", ns]
    )
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["current"] is None and status["pending"] == ["0001", "0002", "0003"]
    result = CliRunner().invoke(cli, ["migrate", "up", "--url", cluster.url, "--namespace", ns])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["migrate", "status", "--json", "--url", cluster.url, "--namespace", ns]
    )
    assert json.loads(result.output)["current"] == "0003"
    assert json.loads(result.output)["up_to_date"]
