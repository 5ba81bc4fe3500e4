"""Store: connecting, module checks, unreachable servers, isolation, event loops."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis

from flywheel_state import (
    Backend,
    ModuleMissingError,
    SchemaOutOfDateError,
    Session,
    Settings,
    Store,
    StoreUnavailableError,
)
from flywheel_state.server import EmbeddedRedis


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_reports_unreachable_server_within_timeout() -> None:
    port = _closed_port()
    store = Store(Settings(port=port, host="127.0.0.1", connect_timeout=0.5, command_timeout=0.5))
    # Liveness, not speed: a refused connection must fail well inside the connect budget.
    with pytest.raises(StoreUnavailableError) as info:
        await asyncio.wait_for(store.connect(), timeout=0.5 + 0.5 + 5)
    assert f":{port}" in str(info.value)
    assert isinstance(info.value.__cause__, Exception)  # the driver error is chained
    await store.close()


async def test_silent_server_times_out_instead_of_hanging() -> None:
    # A socket that accepts connections (kernel backlog) but never answers: the command
    # timeout must end the attempt with StoreUnavailableError.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        store = Store(
            Settings(host="127.0.0.1", port=port, connect_timeout=0.3, command_timeout=0.3)
        )
        with pytest.raises(StoreUnavailableError):
            await asyncio.wait_for(store.connect(), timeout=10)
        await store.close()


@pytest.mark.integration  # starts a server of its own
async def test_server_without_modules_raises_module_missing() -> None:
    with EmbeddedRedis(with_modules=False) as plain:
        store = Store(url=plain.url, namespace="plain")
        with pytest.raises(ModuleMissingError) as info:
            await store.connect()
        message = str(info.value)
        assert "JSON.SET" in message and "FT.SEARCH" in message
        assert "Redis 8" in message
        await store.close()


async def test_a_refused_async_with_leaves_no_connection_open(
    settings: Settings, sync_client: redis.Redis
) -> None:
    # The body (and __aexit__) never runs when connect() raises: __aenter__ must close the
    # client itself, or its connection stays open until garbage collection.
    before = {c["id"] for c in sync_client.client_list()}
    with pytest.raises(SchemaOutOfDateError):
        async with Store(settings, auto_migrate=False):
            pass  # pragma: no cover
    assert {c["id"] for c in sync_client.client_list()} - before == set()


async def test_connect_checks_modules_on_real_server(store: Store) -> None:
    assert await store.missing_commands() == []
    info = await store.server_info()
    assert info["redis_version"]


async def test_two_namespaces_keep_separate_data(redis_server: str) -> None:
    import uuid

    ns_a, ns_b = f"iso{uuid.uuid4().hex[:6]}", f"iso{uuid.uuid4().hex[:6]}"
    async with (
        Store(url=redis_server, namespace=ns_a, auto_migrate=True) as a,
        Store(url=redis_server, namespace=ns_b, auto_migrate=True) as b,
    ):
        try:
            await a.sessions.save(Session(id="same", backend=Backend.FLOWISE, user_id="alice"))
            await b.sessions.save(Session(id="same", backend=Backend.LANGFLOW, user_id="bob"))
            assert (await a.sessions.get("same")).user_id == "alice"
            assert (await b.sessions.get("same")).user_id == "bob"
            await a.sessions.delete("same")
            assert await a.sessions.get_or_none("same") is None
            assert (await b.sessions.get("same")).backend is Backend.LANGFLOW
        finally:
            for s in (a, b):
                keys = [k async for k in s.client.scan_iter(match=f"{s.namespace}:*")]
                for name in await s.client.execute_command("FT._LIST"):
                    text = name.decode() if isinstance(name, bytes) else name
                    if text.startswith(f"{s.namespace}:"):
                        await s.client.execute_command("FT.DROPINDEX", text)
                if keys:
                    await s.client.delete(*keys)


def test_store_works_across_event_loops(settings: Settings) -> None:
    store = Store(settings, auto_migrate=True)

    async def first() -> None:
        await store.connect()
        await store.sessions.save(Session(id="loop", backend="custom"))

    async def second() -> str:
        got = await store.sessions.get("loop")
        await store.close()
        return got.id

    asyncio.run(first())
    assert asyncio.run(second()) == "loop"


def test_store_repr_hides_password(redis_server: str) -> None:
    store = Store(Settings(url="redis://user:pw-very-secret@localhost:1/0"))
    assert "pw-very-secret" not in repr(store)


async def test_bursts_beyond_the_pool_size_wait_for_a_connection(settings: Settings) -> None:
    async with Store(settings.replace(max_connections=4), auto_migrate=True) as small:
        await small.sessions.save_many(Session(id=f"b{i}", backend="custom") for i in range(50))
        got = await asyncio.gather(*(small.sessions.get(f"b{i % 50}") for i in range(300)))
        assert [g.id for g in got] == [f"b{i % 50}" for i in range(300)]
