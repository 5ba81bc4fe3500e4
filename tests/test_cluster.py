"""Redis Cluster (3 local shards of the embedded binaries, one per module) and search=False.

The embedded search module has no cluster coordinator, so these tests cover the key-value API
with ``search=False`` and the refusal of a search Store; the query tests run against a cluster
with a distributed query engine only when ``REDIS_CLUSTER_URL`` names one (opt-in).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
import redis

from flywheel_state import Settings, Store
from flywheel_state.compat import RedisExecutionCache, RedisSessionManager
from flywheel_state.errors import (
    MigrationLockedError,
    ModuleMissingError,
    SchemaOutOfDateError,
    SearchUnavailableError,
    StoreUnavailableError,
)
from flywheel_state.migrations._lock import MigrationLock
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
    with pytest.raises(SearchUnavailableError, match="migrations"):
        await kv.migrations.upgrade()
    # Refused before writing anything: no lock, no marker, no record, no index.
    assert _keys_per_node(cluster, f"{ns}:_migrations:*") == [0, 0, 0]


async def test_connect_without_search_checks_the_migration_state(
    cluster: LocalCluster, ns: str
) -> None:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        client.set(f"{ns}:_migrations:revision", "9999")  # data newer than this code
        with pytest.raises(SchemaOutOfDateError):
            await Store(url=cluster.url, namespace=ns, search=False).connect()
        client.delete(f"{ns}:_migrations:revision")
        client.set(f"{ns}:_migrations:running", '{"revision": "0001", "direction": "upgrade"}')
        with pytest.raises(SchemaOutOfDateError, match="interrupted"):
            await Store(url=cluster.url, namespace=ns, search=False).connect()
    finally:
        client.delete(f"{ns}:_migrations:running")
        client.close()


async def test_migration_lock_contention_on_a_cluster(kv: Store, ns: str) -> None:
    first = MigrationLock(kv.client, f"{ns}:_migrations:lock", purpose="test one", ttl=5)
    second = MigrationLock(kv.client, f"{ns}:_migrations:lock", purpose="test two", ttl=5)
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
