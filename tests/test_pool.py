"""The Store's connection pool: blocking, first come first served, within pool_timeout."""

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
        assert not pool._waiters


async def test_waiting_calls_are_served_in_order(settings: Settings) -> None:
    async with Store(settings.replace(max_connections=1), auto_migrate=True) as store:
        await store.sessions.save(Session(id="w", backend="custom"))
        pool = store.client.connection_pool
        held = await pool.get_connection()
        order: list[int] = []

        async def call(i: int) -> None:
            await store.sessions.get("w")
            order.append(i)

        waiting = [asyncio.ensure_future(call(i)) for i in range(6)]
        await asyncio.sleep(0.05)
        assert order == []  # all wait: the only connection is taken
        # A newcomer arriving while they wait queues behind them instead of overtaking.
        late = asyncio.ensure_future(call(99))
        await asyncio.sleep(0)
        await pool.release(held)
        await asyncio.wait_for(asyncio.gather(*waiting, late), 10)
        assert order == [0, 1, 2, 3, 4, 5, 99]
        assert not pool._waiters
        assert (await store.sessions.get("w")).id == "w"


async def test_a_cancelled_waiter_loses_no_connection(settings: Settings) -> None:
    async with Store(settings.replace(max_connections=1), auto_migrate=True) as store:
        await store.sessions.save(Session(id="c", backend="custom"))
        pool = store.client.connection_pool
        held = await pool.get_connection()
        cancelled = asyncio.ensure_future(store.sessions.get("c"))
        served = asyncio.ensure_future(store.sessions.get("c"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await pool.release(held)
        assert (await asyncio.wait_for(served, 10)).id == "c"
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # Cancelled just as it is handed a connection: the connection goes on, not lost.
        held = await pool.get_connection()
        racer = asyncio.ensure_future(store.sessions.get("c"))
        await asyncio.sleep(0.05)
        await pool.release(held)  # hands it to the racer...
        racer.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await racer
        assert len(pool._in_use_connections) == 0
        assert (await asyncio.wait_for(store.sessions.get("c"), 10)).id == "c"


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
        assert not pool._live_waiter()
