"""Edge cases of the compat API: values JSON can't hold, paging of list_sessions.

The callers' main paths are in test_compat.py; these pin down cases found in review.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
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


async def test_list_sessions_pages_the_same_with_or_without_a_pattern(
    redis_url: str, namespace: str
) -> None:
    manager = RedisSessionManager(url=redis_url, namespace=namespace)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    try:
        for i in range(6):  # saved least recently active first
            session = {"id": f"s{i}", "backend": "flowise", "last_active": start + timedelta(i)}
            assert await manager.save_session(session)
        newest_first = ["s5", "s4", "s3", "s2", "s1", "s0"]

        # A page is in the default order (most recently active first), pattern or not.
        assert await manager.list_sessions(limit=3) == newest_first[:3]
        assert await manager.list_sessions("s*", limit=3) == newest_first[:3]
        assert await manager.list_sessions("s?", limit=2, offset=2) == newest_first[2:4]
        assert await manager.list_sessions("s*", limit=2, sort="last_active") == ["s0", "s1"]
        # A limit above the index's page size is a big page, not a failed call.
        assert await manager.list_sessions(limit=20_000) == newest_first
        assert await manager.list_sessions("s*", limit=20_000) == newest_first
        assert await manager.list_sessions(limit=20_000, offset=4) == newest_first[4:]
        assert len(await manager.list_sessions(offset=1)) == 5
    finally:
        await manager.close()


async def test_list_sessions_with_a_pattern_that_is_not_text_returns_empty(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    manager = RedisSessionManager(url=redis_url, namespace=namespace)
    try:
        assert await manager.save_session({"id": "s1", "backend": "flowise"})
        for pattern in (None, 5, b"s*"):
            assert await manager.list_sessions(pattern) == [], pattern  # type: ignore[arg-type]
        warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(warnings) == 3 and all("pattern" in m for m in warnings)
        assert not any("unavailable" in m for m in warnings)  # not taken for an outage
        assert await manager.list_sessions("s*") == ["s1"]
    finally:
        await manager.close()
