"""Edge cases of the compat API: values JSON can't hold, paging of list_sessions.

The callers' main paths are in test_compat.py; these pin down cases found in review.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from flywheel_state import RedisExecutionCache, RedisSessionManager, Store

LOGGER = "flywheel_state.compat"


class Opaque:
    def __str__(self) -> str:
        return "opaque"


def _deeply_nested(depth: int = 5000) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def _unstorable() -> list[tuple[str, Any]]:
    cycle: dict[str, Any] = {"a": 1}
    cycle["self"] = cycle
    return [
        ("cycle", cycle),
        ("deep", _deeply_nested()),
        ("object-key", {object(): 1}),
        ("surrogate", {"text": "\ud800"}),
    ]


async def test_values_json_cannot_hold_fail_the_call_instead_of_raising(
    redis_url: str,
    namespace: str,
    store: Store,
    sync_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    manager = RedisSessionManager(url=redis_url, namespace=namespace)
    cache = RedisExecutionCache(url=redis_url, namespace=namespace)
    try:
        for name, value in _unstorable():
            session = {"id": f"s-{name}", "backend": "flowise", "context": {"v": value}}
            assert await manager.save_session(session) is False, name
            assert await cache.cache_result(f"e-{name}", value) is False, name
            assert await cache.cache_flow_history(f"s-{name}", "flow", [value]) is False, name
        assert await manager.save_session({"id": "s-bad-user", "user_id": "a\ud800"}) is False

        assert sync_client.keys(f"{namespace}:session:*") == []
        assert sync_client.keys(f"{namespace}:execution:*") == []
        warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(warnings) == 13
        assert all("failed" in m for m in warnings)
        assert not any("unavailable" in m for m in warnings)  # not taken for an outage

        # Values the original stored as text still are, and the managers work on.
        assert await manager.save_session({"id": "s-ok", "context": {"v": Opaque()}}) is True
        assert (await store.sessions.get("s-ok")).context == {"v": "opaque"}
        assert await cache.cache_result("e-ok", {"v": Opaque()}) is True
        assert await cache.get_result("e-ok") == {"v": "opaque"}
    finally:
        await manager.close()
        await cache.close()
