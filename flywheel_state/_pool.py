"""A blocking connection pool whose uncontended path costs what redis-py's default pool costs."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool
from redis.asyncio.connection import AbstractConnection

__all__ = ["FastBlockingConnectionPool"]


class FastBlockingConnectionPool(BlockingConnectionPool):  # type: ignore[type-arg]
    """``BlockingConnectionPool`` that skips its condition and timer when nobody waits.

    The blocking pool takes an ``asyncio.Condition`` and starts a timeout timer on every
    checkout, and takes the condition again to notify on every release: a sizeable part of a
    single ``get`` on a fast server. When an idle connection is there and no task is waiting,
    a checkout can't block, so it goes through the default pool's code instead (the same
    connection checks and redis-py metrics). As soon as one task waits, every checkout and
    release takes the blocking path, so waiters are served in order and woken on release,
    within ``timeout`` as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._blocking_calls = 0

    def _maintenance(self) -> bool:
        # redis-py 8 serialises pool changes during server maintenance: leave those to it.
        return bool(getattr(self, "_in_maintenance", False))

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """A connection: without waiting when one is idle and nobody waits, else blocking."""
        idle = self._available_connections  # type: ignore[attr-defined]
        if idle and not self._blocking_calls and not self._maintenance():
            return await ConnectionPool.get_connection(self)  # type: ignore[call-arg]
        self._blocking_calls += 1
        try:
            return await super().get_connection()  # type: ignore[call-arg]
        finally:
            self._blocking_calls -= 1

    async def release(self, connection: AbstractConnection) -> None:
        """Return ``connection``; wake a waiting task if there is one."""
        if not self._blocking_calls and not self._maintenance():
            await ConnectionPool.release(self, connection)
        else:
            await super().release(connection)
