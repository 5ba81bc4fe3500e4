"""A record someone else corrupted never takes a query down (on_corrupt="skip"), and by default
the error names the key at fault."""

from __future__ import annotations

import json
import logging

import pytest
import redis

from flywheel_state import Store
from flywheel_state.errors import CorruptRecordError, InvalidQueryError
from flywheel_state.models import Backend, Session


async def _setup(store: Store, sync_client: redis.Redis) -> str:
    for i in range(5):
        await store.sessions.save(Session(id=f"s{i}", backend=Backend.FLOWISE))
    bad = store.sessions.key("bad")
    # Indexed like a session (right backend and status), but not a valid one.
    doc = {"id": "bad", "backend": "flowise", "status": "active", "total_queries": "many"}
    sync_client.execute_command("JSON.SET", bad, "$", json.dumps(doc))
    return bad


async def test_by_default_queries_raise_naming_the_key(
    store: Store, sync_client: redis.Redis
) -> None:
    bad = await _setup(store, sync_client)
    with pytest.raises(CorruptRecordError, match=bad) as info:
        await store.sessions.find(limit=100)
    assert info.value.key == bad
    with pytest.raises(CorruptRecordError, match=bad):
        _ = [s async for s in store.sessions.iterate()]
    with pytest.raises(CorruptRecordError, match=bad):
        await store.sessions.get_many(["s1", "bad"])


async def test_skip_leaves_corrupt_records_out_and_reports_them(
    store: Store, sync_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await _setup(store, sync_client)
    before = store.sessions.corrupt_skipped
    with caplog.at_level(logging.WARNING, logger="flywheel_state"):
        page = await store.sessions.find(limit=100, on_corrupt="skip")
    assert sorted(s.id for s in page.items) == [f"s{i}" for i in range(5)]
    assert page.skipped == (bad,)
    assert page.total == 6
    assert bad in caplog.text
    walked = [s.id async for s in store.sessions.iterate(batch_size=2, on_corrupt="skip")]
    assert sorted(walked) == [f"s{i}" for i in range(5)]
    got = await store.sessions.get_many(["s1", "bad", "missing"], on_corrupt="skip")
    assert [s.id if s else None for s in got] == ["s1", None, None]
    assert store.sessions.corrupt_skipped == before + 3


async def test_on_corrupt_is_checked(store: Store) -> None:
    with pytest.raises(InvalidQueryError, match="on_corrupt"):
        await store.sessions.find(on_corrupt="ignore")  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="on_corrupt"):
        store.sessions.iterate(on_corrupt=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="on_corrupt"):
        await store.sessions.get_many(["a"], on_corrupt="")  # type: ignore[arg-type]
