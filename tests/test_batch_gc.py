"""Batch decodes pause the garbage collector only while they decode, and always restore it."""

from __future__ import annotations

import gc
import json

import pytest
import redis

from flywheel_state import CorruptRecordError, Store
from flywheel_state.models import Session
from flywheel_state.repositories._gc import collector_paused


def test_collector_paused_restores_the_state() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("boom")
    assert gc.isenabled()
    with collector_paused(enabled=False):
        assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the application's choice is kept
    finally:
        gc.enable()


async def test_get_many_and_find_leave_the_collector_on(
    store: Store, sync_client: redis.Redis
) -> None:
    await store.sessions.save_many(Session(id=f"g{i}", backend="custom") for i in range(30))
    got = await store.sessions.get_many([f"g{i}" for i in range(30)] + ["missing"])
    assert [g.id if g else None for g in got] == [f"g{i}" for i in range(30)] + [None]
    assert gc.isenabled()
    assert len((await store.sessions.find(limit=30)).items) == 30
    assert gc.isenabled()
    # A corrupt document in the middle of a batch: a typed error, and the collector back on.
    corrupt = {"id": "g5", "backend": "custom", "version": "x"}
    sync_client.execute_command("JSON.SET", store.sessions.key("g5"), "$", json.dumps(corrupt))
    with pytest.raises(CorruptRecordError):
        await store.sessions.get_many([f"g{i}" for i in range(30)])
    assert gc.isenabled()
    with pytest.raises(CorruptRecordError):
        await store.sessions.find(limit=30)
    assert gc.isenabled()
