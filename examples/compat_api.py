"""The original RedisSessionManager / RedisExecutionCache API on flywheel-state.

Both managers read REDIS_URL (and the original variables) through RedisConfig; they never
raise, and return False / None while Redis is unreachable::

    python examples/compat_api.py
"""

from __future__ import annotations

import asyncio
import sys

from flywheel_state import RedisConfig, RedisExecutionCache, RedisSessionManager
from flywheel_state.models import Backend, Session, SessionStatus


async def main() -> int:
    manager = RedisSessionManager(**RedisConfig.from_env())
    cache = RedisExecutionCache(**RedisConfig.execution_from_env())
    try:
        session = Session(id="compat_session", backend=Backend.FLOWISE, status=SessionStatus.ACTIVE)
        saved = await manager.save_session(session)
        loaded = await manager.load_session("compat_session")
        print(f"saved: {saved}, loaded: {loaded.id if loaded else None}")
        cached = await cache.cache_result(
            "compat_exec", {"result": "...", "metadata": {"duration_ms": 1234}}
        )
        print(f"cached: {cached}, result: {await cache.get_result('compat_exec')}")
        print(f"deleted: {await manager.delete_session('compat_session')}")
        return 0 if saved and cached and loaded is not None else 1
    finally:
        await manager.close()
        await cache.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
