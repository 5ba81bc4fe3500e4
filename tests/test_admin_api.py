"""The library methods the CLI is built on: exists_many, ttls, delete_where, drop_namespace."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from flywheel_state import InvalidQueryError, Settings, Store
from flywheel_state.models import Backend, Session, SessionStatus


async def test_exists_many_and_ttls_answer_per_id(store: Store) -> None:
    await store.sessions.save(Session(id="a", backend=Backend.FLOWISE))
    await store.sessions.save(Session(id="b", backend=Backend.FLOWISE), ttl=None)
    assert await store.sessions.exists_many(["a", "missing", "b"]) == [True, False, True]
    ttls = await store.sessions.ttls(["a", "b", "missing"])
    assert ttls[0] is not None and timedelta(days=6) < ttls[0] <= timedelta(days=7)
    assert ttls[1] is None  # no expiry
    assert ttls[2] == timedelta(0)  # gone
    assert await store.sessions.exists_many([]) == [] and await store.sessions.ttls([]) == []


async def test_delete_where_deletes_exactly_the_matches(store: Store) -> None:
    for i, status in enumerate([SessionStatus.FAILED, SessionStatus.ACTIVE, SessionStatus.FAILED]):
        await store.sessions.save(Session(id=f"s{i}", backend=Backend.CUSTOM, status=status))
    assert sorted(await store.sessions.delete_where(status="failed", dry_run=True)) == ["s0", "s2"]
    assert await store.sessions.count() == 3
    assert sorted(await store.sessions.delete_where(status="failed")) == ["s0", "s2"]
    assert [s.id for s in (await store.sessions.find()).items] == ["s1"]
    with pytest.raises(InvalidQueryError):
        await store.sessions.delete_where()


async def test_drop_namespace_removes_indexes_and_keys_of_that_namespace_only(
    redis_url: str, store: Store, sync_client: redis.Redis
) -> None:
    await store.sessions.save(Session(id="x", backend=Backend.FLOWISE))
    other = Store(Settings(url=redis_url, namespace=f"{store.namespace}other"), auto_migrate=True)
    await other.connect()
    try:
        await other.sessions.save(Session(id="y", backend=Backend.FLOWISE))
        dropped, unlinked = await store.drop_namespace()
        assert dropped >= 2 and unlinked >= 1
        assert list(sync_client.scan_iter(match=f"{store.namespace}:*")) == []
        assert await other.sessions.get("y")  # a namespace sharing the prefix text survives
    finally:
        await other.drop_namespace()
        await other.close()
