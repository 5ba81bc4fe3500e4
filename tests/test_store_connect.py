"""A Store used before connect(): its repositories raise NotConnectedError, nothing is skipped."""

from __future__ import annotations

import pytest

from flywheel_state import NotConnectedError, SchemaOutOfDateError, Settings, Store
from flywheel_state.models import Backend, ExecutionResult, Session


async def test_repositories_raise_until_connect_has_checked_server_and_schema(
    settings: Settings,
) -> None:
    store = Store(settings)
    try:
        with pytest.raises(NotConnectedError, match=r"connect\(\)"):
            await store.sessions.get_or_none("s1")
        with pytest.raises(NotConnectedError):
            await store.executions.save(ExecutionResult(id="e1"))
        assert await store.client.exists(store.executions.key("e1")) == 0  # nothing written
        # The schema check of connect() is not skipped: a namespace behind head refuses, and
        # the repositories stay closed.
        await store.migrations.upgrade("0001")  # migrations work before connect
        with pytest.raises(SchemaOutOfDateError):
            await store.connect()
        with pytest.raises(NotConnectedError):
            await store.sessions.save(Session(id="s1", backend=Backend.FLOWISE))
        await store.migrations.upgrade()
        await store.connect()
        await store.sessions.save(Session(id="s1", backend=Backend.FLOWISE))
        assert (await store.sessions.get("s1")).backend is Backend.FLOWISE
    finally:
        await store.close()
    with pytest.raises(NotConnectedError):  # closed: connect again to use it
        await store.sessions.get("s1")
    async with Store(settings) as again:
        assert await again.sessions.exists("s1")


def test_register_upgrade_is_public() -> None:
    from flywheel_state import models
    from flywheel_state.models import _upgrades

    assert models.register_upgrade is _upgrades.register_upgrade
    assert not hasattr(_upgrades, "registered_upgrades")  # dead code removed
