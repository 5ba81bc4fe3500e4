"""Retry-safe writes (defect 6) and one bound on waiting (defect 7), against a stalled server.

A SIGSTOPped server accepts connections and buffers commands but never answers; on SIGCONT it
runs what it had received. Each test starts its own server, so the shared one never stalls.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from flywheel_state import Settings, Store
from flywheel_state.errors import OutcomeUnknownError, StoreUnavailableError
from flywheel_state.models import Backend, HistoryEntry, Session
from flywheel_state.server import EmbeddedRedis

BUDGET = 1.0  # Settings.command_timeout: the whole budget of one call


@pytest.fixture(scope="module")
def own_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
async def stalling(own_server: EmbeddedRedis, namespace: str) -> AsyncIterator[Store]:
    settings = Settings(
        url=own_server.url, namespace=namespace, command_timeout=BUDGET, max_connections=10
    )
    async with Store(settings, auto_migrate=True) as store:
        yield store
        await store.sessions.delete_many(await store.sessions.ids())


@contextmanager
def stalled(server: EmbeddedRedis) -> Iterator[None]:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_a_write_without_reply_is_outcome_unknown_and_a_keyed_retry_applies_once(
    stalling: Store, own_server: EmbeddedRedis
) -> None:
    store = stalling
    await store.sessions.save(Session(id="s1", backend=Backend.FLOWISE))
    entry = HistoryEntry(role="user", content="hello")
    with stalled(own_server), pytest.raises(OutcomeUnknownError, match="may have been applied"):
        await asyncio.wait_for(
            store.sessions.append_history("s1", entry, idempotency_key="turn-1"), BUDGET + 5
        )
    # The server ran the first append when it resumed; the retry must not add a second one.
    version = await asyncio.wait_for(
        store.sessions.append_history("s1", entry, idempotency_key="turn-1"), BUDGET + 5
    )
    session = await store.sessions.get("s1")
    assert [h.content for h in session.history] == ["hello"]
    assert session.total_queries == 1
    assert version == session.version == 2
    # Other keys still append, and a key is remembered across update / touch / save.
    await store.sessions.append_history("s1", entry, idempotency_key="turn-2")
    await store.sessions.update("s1", status="idle")
    await store.sessions.touch("s1")
    await store.sessions.save(await store.sessions.get("s1"))
    await store.sessions.append_history("s1", entry, idempotency_key="turn-1")
    await store.sessions.append_history("s1", entry, idempotency_key="turn-2")
    assert len((await store.sessions.get("s1")).history) == 2


async def test_reads_stay_unavailable_and_unsent_writes_are_not_outcome_unknown(
    stalling: Store, own_server: EmbeddedRedis
) -> None:
    await stalling.sessions.save(Session(id="s1", backend=Backend.FLOWISE))
    writes = {
        "save": lambda s: s.sessions.save(Session(id="s2", backend=Backend.FLOWISE)),
        "update": lambda s: s.sessions.update("s1", status="idle"),
        "touch": lambda s: s.sessions.touch("s1"),
        "append": lambda s: s.sessions.append_history("s1", {"role": "user"}),
        "delete": lambda s: s.sessions.delete("s1"),
    }
    stores = {name: Store(stalling.settings) for name in [*writes, "read", "fresh"]}
    try:
        for name, store in stores.items():
            await store.connect()  # a Store's records need connect() (NotConnectedError)
            if name != "fresh":
                assert await store.sessions.exists("s1")  # a connected connection, idle
            else:  # connected and checked, but no pooled connection left
                await store.client.connection_pool.disconnect()
        with stalled(own_server):
            for name, write in writes.items():
                with pytest.raises(OutcomeUnknownError, match="may have been applied"):
                    await asyncio.wait_for(write(stores[name]), BUDGET + 5)
            with pytest.raises(StoreUnavailableError) as read_error:
                await asyncio.wait_for(stores["read"].sessions.get("s1"), BUDGET + 5)
            assert not isinstance(read_error.value, OutcomeUnknownError)
            # A store with no connection yet can't even set one up: nothing is sent.
            with pytest.raises(StoreUnavailableError, match="nothing was sent") as unsent:
                await asyncio.wait_for(stores["fresh"].sessions.touch("s1"), BUDGET + 5)
            assert not isinstance(unsent.value, OutcomeUnknownError)
    finally:
        for store in stores.values():
            await store.close()


async def test_many_callers_on_a_stalled_server_each_wait_one_budget_at_most(
    stalling: Store, own_server: EmbeddedRedis
) -> None:
    store = stalling
    await store.sessions.save(Session(id="s1", backend=Backend.FLOWISE))
    entry = HistoryEntry(role="user", content="x")

    def call(i: int) -> Any:
        kind = i % 5
        if kind == 0:
            return store.sessions.get("s1")
        if kind == 1:
            return store.sessions.find(status="pending")
        if kind == 2:
            return store.sessions.count()
        if kind == 3:
            return store.sessions.append_history("s1", entry, idempotency_key=f"k{i}")
        return store.sessions.save(Session(id=f"n{i}", backend=Backend.FLOWISE))

    async def bounded(i: int) -> BaseException | None:
        # Less than two budgets: a caller that waited for the pool and then for its command
        # (or was retried) would hit this deadline instead of failing by itself.
        try:
            await asyncio.wait_for(call(i), BUDGET * 1.9)
        except StoreUnavailableError as exc:
            return exc
        return None

    with stalled(own_server):
        outcomes = await asyncio.gather(*(bounded(i) for i in range(200)))
    assert all(isinstance(o, StoreUnavailableError) for o in outcomes)
    assert (await asyncio.wait_for(store.sessions.get("s1"), BUDGET + 5)).id == "s1"


@pytest.mark.parametrize("many", [False, True], ids=["get", "get_many"])
async def test_a_read_cancelled_after_sending_leaves_no_reply_behind(
    own_server: EmbeddedRedis, namespace: str, many: bool
) -> None:
    # One pooled connection: the call after the cancelled one gets that very connection. Had
    # the cancelled read left it open, the server's late reply to JSON.GET s1 would be read as
    # the reply to JSON.GET s2.
    settings = Settings(
        url=own_server.url, namespace=namespace, command_timeout=BUDGET * 5, max_connections=1
    )
    async with Store(settings, auto_migrate=True) as store:
        await store.sessions.save(Session(id="s1", backend=Backend.FLOWISE, user_id="one"))
        await store.sessions.save(Session(id="s2", backend=Backend.FLOWISE, user_id="two"))
        with stalled(own_server):
            first = store.sessions.get_many(["s1", "s1"]) if many else store.sessions.get("s1")
            read = asyncio.ensure_future(first)
            await asyncio.sleep(0.2)  # sent: the stopped server buffers it
            assert not read.done()
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            # The next read is sent while the server is still stopped (so no late reply is
            # there to be seen when it takes the connection): it must read its own reply.
            after = asyncio.ensure_future(store.sessions.get("s2"))
            await asyncio.sleep(0.2)
        session = await asyncio.wait_for(after, BUDGET * 5)
        assert (session.id, session.user_id) == ("s2", "two")
        assert (await store.sessions.get("s1")).user_id == "one"
        await store.sessions.delete_many(["s1", "s2"])
