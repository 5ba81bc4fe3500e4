"""The Store's connection pool: blocking semantics kept when its uncontended path is taken."""

from __future__ import annotations

import asyncio

import pytest

from flywheel_state import Settings, Store, StoreUnavailableError
from flywheel_state._pool import FastBlockingConnectionPool
from flywheel_state.models import Session


async def test_bursts_never_open_more_than_max_connections(settings: Settings) -> None:
    async with Store(settings.replace(max_connections=2), auto_migrate=True) as store:
        pool = store.client.connection_pool
        assert isinstance(pool, FastBlockingConnectionPool)
        await store.sessions.save_many(Session(id=f"p{i}", backend="custom") for i in range(20))
        peak = 0

        async def one(i: int) -> str:
            nonlocal peak
            got = await store.sessions.get(f"p{i % 20}")
            peak = max(peak, len(pool._in_use_connections) + len(pool._available_connections))
            return got.id

        got = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 30)
        assert got == [f"p{i % 20}" for i in range(200)]
        assert peak <= 2
        assert len(pool._in_use_connections) == 0
        assert pool._blocking_calls == 0


async def test_a_waiting_call_gets_the_released_connection(settings: Settings) -> None:
    async with Store(settings.replace(max_connections=1), auto_migrate=True) as store:
        await store.sessions.save(Session(id="w", backend="custom"))
        pool = store.client.connection_pool
        held = await pool.get_connection()
        waiter = asyncio.ensure_future(store.sessions.get("w"))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # it waits: the only connection is taken
        await pool.release(held)
        assert (await asyncio.wait_for(waiter, 10)).id == "w"
        # Back to the uncontended path.
        assert pool._blocking_calls == 0
        assert (await store.sessions.get("w")).id == "w"


async def test_pool_timeout_still_bounds_the_wait(settings: Settings) -> None:
    small = settings.replace(max_connections=1, pool_timeout=0.2)
    async with Store(small, auto_migrate=True) as store:
        pool = store.client.connection_pool
        held = await pool.get_connection()
        try:
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(store.sessions.get_or_none("x"), 10)
        finally:
            await pool.release(held)
        assert await store.sessions.get_or_none("x") is None
