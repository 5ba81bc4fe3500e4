"""wait_aof: writes fsynced to the append-only file (WAITAOF) before they return."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flywheel_state import Settings, Store
from flywheel_state.errors import ConfigError, OutcomeUnknownError
from flywheel_state.models import Session
from flywheel_state.server import EmbeddedRedis


@pytest.fixture(scope="module")
def aof_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    data: Path = tmp_path_factory.mktemp("aof")
    with EmbeddedRedis(data_dir=data, persistent=True) as server:  # appendonly yes
        yield server


async def test_wait_aof_writes_return_once_fsynced(aof_server: EmbeddedRedis) -> None:
    settings = Settings(url=aof_server.url, namespace="aof", wait_aof=True)
    async with Store(settings, search=False) as store:
        await store.sessions.save(Session(id="a", backend="flowise"))
        await store.sessions.save_many([Session(id=f"m{i}", backend="flowise") for i in range(5)])
        assert await store.sessions.update("a", user_id="u") == 2
        assert await store.sessions.delete("m0")
        assert (await store.sessions.get("a")).user_id == "u"
    # One WAITAOF per write (save, the save_many pipeline, update, delete), none per read; and
    # the append-only file holds the writes.
    client = redis.Redis(port=aof_server.port, decode_responses=True)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    assert stats["cmdstat_waitaof"]["calls"] == 4
    aof = b"".join(p.read_bytes() for p in (aof_server.data_dir).rglob("*.aof*") if p.is_file())
    assert b"aof:session:m0" in aof


async def test_wait_aof_without_appendonly_is_outcome_unknown(redis_url: str) -> None:
    settings = Settings(url=redis_url, namespace="noaof", wait_aof=True)
    async with Store(settings, search=False) as store:
        with pytest.raises(OutcomeUnknownError, match="may or may not have been applied"):
            await store.sessions.save(Session(id="a", backend="flowise"))
        assert await store.sessions.exists("a")  # applied, as the error says
    async with Store(url=redis_url, namespace="noaof", search=False) as plain:
        await plain.sessions.delete("a")


def test_wait_aof_settings() -> None:
    assert Settings.from_env({"REDIS_WAIT_AOF": "true"}).wait_aof is True
    assert Settings.from_env({"REDIS_WAIT_AOF": "0"}).wait_aof is False
    with pytest.raises(ConfigError, match="REDIS_WAIT_AOF"):
        Settings.from_env({"REDIS_WAIT_AOF": "maybe"})
    with pytest.raises(ConfigError, match="Cluster"):
        Settings(url="redis+cluster://h:7000", wait_aof=True)
