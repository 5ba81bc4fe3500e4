"""The change feed: events written by the write script, read, watched and consumed.

Every write of a Store with ``events=True`` appends one event to ``{ns}:events`` in the same
script as the record; a refused write appends none.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from flywheel_state import (
    Backend,
    ConfigError,
    ConflictError,
    CorruptRecordError,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    InvalidQueryError,
    NotFoundError,
    Session,
    SessionStatus,
    Settings,
    Store,
)
from flywheel_state.cli import cli
from flywheel_state.events import Event
from flywheel_state.server import EmbeddedRedis

DEADLINE = 20.0  # liveness bound for anything that waits for an event


def session(sid: str, **fields: Any) -> Session:
    base: dict[str, Any] = {"backend": Backend.FLOWISE, "status": SessionStatus.ACTIVE}
    base.update(fields)
    return Session(id=sid, **base)


@pytest.fixture
async def estore(settings: Settings) -> AsyncIterator[Store]:
    """A connected Store that writes events."""
    async with Store(settings, auto_migrate=True, events=True) as s:
        yield s


def ops(events: list[Event]) -> list[tuple[str, str, str, int | None]]:
    return [(e.kind, e.id, e.op, e.version) for e in events]


# ----------------------------------------------------------------------------- what is written


async def test_every_write_appends_its_event_with_op_version_and_field_names(
    estore: Store,
) -> None:
    s = await estore.sessions.save(session("s1", context={"secret": "do-not-leak"}))
    assert s.version == 1
    await estore.sessions.save(s)
    v3 = await estore.sessions.update("s1", status=SessionStatus.IDLE)
    v4 = await estore.sessions.append_history("s1", HistoryEntry(role="user", content="hello"))
    v5 = await estore.sessions.touch("s1")
    await estore.sessions.insert(session("s2"))
    await estore.executions.save(
        ExecutionResult(
            id="e1",
            session_id="s1",
            flow_id="f",
            backend=Backend.FLOWISE,
            status=ExecutionStatus.COMPLETED,
        )
    )
    assert await estore.sessions.delete("s1") is True

    events = await estore.events.read()
    assert ops(events) == [
        ("session", "s1", "created", 1),
        ("session", "s1", "updated", 2),
        ("session", "s1", "updated", v3),
        ("session", "s1", "history_appended", v4),
        ("session", "s1", "touched", v5),
        ("session", "s2", "created", 1),
        ("execution", "e1", "created", 1),
        ("session", "s1", "deleted", v5),
    ]
    assert [v3, v4, v5] == [3, 4, 5]
    assert events[0].fields == () and events[1].fields == ()
    assert events[2].fields == ("status", "updated_at")
    assert set(events[3].fields) == {"history", "last_active", "updated_at", "total_queries"}
    assert events[4].fields == ("last_active", "updated_at")
    ids = [e.stream_id for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    assert all(e.time.tzinfo is not None for e in events)
    # Names only: no value reaches the stream.
    raw = json.dumps([e.to_dict() for e in events])
    assert "do-not-leak" not in raw and "hello" not in raw and "idle" not in raw


async def test_bulk_writes_append_one_event_per_record(estore: Store) -> None:
    await estore.sessions.save_many([session(f"b{i}") for i in range(5)])
    await estore.sessions.save_many([session("b0")])
    assert await estore.sessions.delete_many(["b1", "b2", "nope"]) == 2
    assert ops(await estore.events.read()) == [
        *[("session", f"b{i}", "created", 1) for i in range(5)],
        ("session", "b0", "updated", 2),  # the stored version counts on
        ("session", "b1", "deleted", 1),
        ("session", "b2", "deleted", 1),
    ]


async def test_refused_writes_append_no_event(estore: Store, sync_client: redis.Redis) -> None:
    s = await estore.sessions.save(session("r1"))
    before = await estore.events.length()
    with pytest.raises(ConflictError):
        await estore.sessions.save(s, expected_version=7)
    with pytest.raises(ConflictError):
        await estore.sessions.insert(session("r1"))
    with pytest.raises(ConflictError):
        await estore.sessions.update("r1", expected_version=9, status=SessionStatus.IDLE)
    with pytest.raises(InvalidQueryError):
        await estore.sessions.update("r1", status="not-a-status")
    with pytest.raises(InvalidQueryError):
        await estore.sessions.append_history("r1", {"role": 5})
    for call in (
        estore.sessions.update("gone", status=SessionStatus.IDLE),
        estore.sessions.touch("gone"),
        estore.sessions.append_history("gone", HistoryEntry(role="user", content="x")),
    ):
        with pytest.raises(NotFoundError):
            await call
    assert await estore.sessions.delete("gone") is False
    assert await estore.sessions.delete_many(["gone", "gone2"]) == 0
    sync_client.set(estore.sessions.key("legacy"), "a legacy string value")
    with pytest.raises(CorruptRecordError):
        await estore.sessions.save(session("legacy"))
    assert await estore.events.length() == before
    # Deleting the legacy value is a write like the others: its event has no version.
    assert await estore.sessions.delete("legacy") is True
    last = (await estore.events.read(count=100))[-1]
    assert (last.id, last.op, last.version) == ("legacy", "deleted", None)


async def test_without_events_nothing_is_written_to_the_stream(
    store: Store, sync_client: redis.Redis
) -> None:
    s = await store.sessions.save(session("q1"))
    await store.sessions.update(s.id, status=SessionStatus.IDLE)
    await store.sessions.delete(s.id)
    assert not sync_client.exists(store.events.key)
    assert await store.events.read() == []


async def test_concurrent_writers_give_every_version_once_in_stream_order(
    estore: Store,
) -> None:
    ids = [f"c{i}" for i in range(4)]
    for sid in ids:
        await estore.sessions.save(session(sid))

    async def writer(w: int) -> None:
        for n in range(15):
            sid = ids[(w + n) % len(ids)]
            if n % 3 == 0:
                await estore.sessions.append_history(sid, HistoryEntry(role="user", content="x"))
            else:
                await estore.sessions.update(sid, current_flow_id=f"f{w}-{n}")

    await asyncio.gather(*(writer(w) for w in range(8)))
    events = await estore.events.read(count=1000)
    assert len(events) == len(ids) + 8 * 15
    per_id: dict[str, list[int | None]] = {}
    for event in events:
        per_id.setdefault(event.id, []).append(event.version)
    for sid in ids:
        stored = await estore.sessions.get(sid)
        # Stream order is write order: each record's versions are 1, 2, 3, ... with no gap.
        assert per_id[sid] == list(range(1, stored.version + 1))
    assert sum(len(v) for v in per_id.values()) == len(events)


async def test_the_stream_is_capped(settings: Settings) -> None:
    async with Store(settings.replace(events=True, events_maxlen=10), auto_migrate=True) as capped:
        s = await capped.sessions.save(session("cap"))
        for _ in range(400):
            await capped.sessions.touch(s.id)
        length = await capped.events.length()
        # Approximate trimming drops whole stream nodes (100 entries by default).
        assert 10 <= length <= 10 + 100
        newest = (await capped.events.read(after=None, count=length))[-1]
        assert newest.version == 401


# ----------------------------------------------------------------------------- reading


async def test_read_pages_after_an_id_and_filters_kinds(estore: Store) -> None:
    for i in range(5):
        await estore.sessions.save(session(f"p{i}"))
        await estore.executions.save(
            ExecutionResult(
                id=f"x{i}",
                session_id=f"p{i}",
                flow_id="f",
                backend=Backend.FLOWISE,
                status=ExecutionStatus.COMPLETED,
            )
        )
    first = await estore.events.read(count=3)
    rest = await estore.events.read(after=first[-1].stream_id, count=100)
    assert [e.id for e in first + rest] == [x for i in range(5) for x in (f"p{i}", f"x{i}")]
    only = await estore.events.read(count=3, kinds="execution")
    assert [e.id for e in only] == ["x0", "x1", "x2"]
    assert await estore.events.read(after=rest[-1].stream_id) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.read(count=-1), "count"),
        (lambda f: f.read(count=0), "count"),
        (lambda f: f.read(count=True), "count"),
        (lambda f: f.read(after="yesterday"), "after"),
        (lambda f: f.read(after="1-2-3"), "after"),
        (lambda f: f.read(after="$"), "after"),
        (lambda f: f.read(kinds=["session", "user"]), "unknown event kind"),
        (lambda f: f.ack("g", "not-an-id"), "event id"),
        (lambda f: f.pending(""), "group"),
    ],
)
async def test_bad_input_is_an_invalid_query_error(store: Store, call: Any, message: str) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        await call(store.events)


def test_bad_watch_and_consume_arguments_fail_when_called(store: Store) -> None:
    with pytest.raises(InvalidQueryError, match="after"):
        store.events.watch(after="0-x")
    with pytest.raises(InvalidQueryError, match="unknown event kind"):
        store.events.watch(kinds="sessions")
    with pytest.raises(InvalidQueryError, match="count"):
        store.events.watch(count=-5)
    with pytest.raises(InvalidQueryError, match="group"):
        store.events.consume("", "c")
    with pytest.raises(InvalidQueryError, match="start"):
        store.events.consume("g", "c", start="latest")
    with pytest.raises(InvalidQueryError, match="claim_idle"):
        store.events.consume("g", "c", claim_idle=-1)


# ----------------------------------------------------------------------------- watching


async def test_watch_gives_new_events_in_order(estore: Store) -> None:
    await estore.sessions.save(session("old"))
    stream = estore.events.watch(kinds="session")
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.5)  # let the watch pin "$" (one round trip; "old" is before it)
    await estore.executions.save(
        ExecutionResult(
            id="x", session_id="n1", flow_id="f", backend=Backend.FLOWISE, status="completed"
        )
    )
    await estore.sessions.save(session("n1"))
    await estore.sessions.touch("n1")
    got = [await asyncio.wait_for(first, DEADLINE)]
    got.append(await asyncio.wait_for(anext(stream), DEADLINE))
    assert ops(got) == [("session", "n1", "created", 1), ("session", "n1", "touched", 2)]
    await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.integration  # starts a server of its own
async def test_watch_survives_a_restart_of_the_server() -> None:
    server = EmbeddedRedis().start()
    try:
        settings = Settings(url=server.url, namespace="restart", command_timeout=1.0)
        async with Store(settings, auto_migrate=True, events=True) as writer:
            stream = writer.events.watch(after="0")
            await writer.sessions.save(session("before"))
            event = await asyncio.wait_for(anext(stream), DEADLINE)
            assert (event.id, event.op) == ("before", "created")
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(0.3)  # the watch meets the outage and retries
            assert not pending.done()
            await asyncio.to_thread(server.start)  # same port, empty data

            async def write_after_restart() -> None:
                while True:
                    try:
                        await writer.sessions.save(session("after"))
                        return
                    except Exception:  # the first commands may meet dead connections
                        await asyncio.sleep(0.05)

            await asyncio.wait_for(write_after_restart(), DEADLINE)
            event = await asyncio.wait_for(pending, DEADLINE)
            assert (event.id, event.op, event.version) == ("after", "created", 1)
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        server.stop()


# ----------------------------------------------------------------------------- consumer groups


async def test_consumer_group_redelivers_unacknowledged_events(estore: Store) -> None:
    for i in range(4):
        await estore.sessions.save(session(f"g{i}"))
    worker = estore.events.consume("indexer", "w1", start="0")
    got = [await asyncio.wait_for(anext(worker), DEADLINE) for _ in range(3)]
    assert [e.id for e in got] == ["g0", "g1", "g2"]
    assert await worker.ack(got[0]) == 1
    assert await estore.events.pending("indexer") >= 2
    # w1 "crashes" without acknowledging g1, g2; started again under its name, it gets them
    # first, then what nobody had yet.
    again = estore.events.consume("indexer", "w1", start="0")
    redelivered = [await asyncio.wait_for(anext(again), DEADLINE) for _ in range(3)]
    # The first consumer fetched all four in one round trip: g3 is pending at w1 as well.
    assert [e.id for e in redelivered] == ["g1", "g2", "g3"]
    assert redelivered[0].stream_id == got[1].stream_id
    assert await again.ack(*redelivered) == 3
    assert await estore.events.pending("indexer") == 0
    assert await estore.events.ack("indexer", got[0].stream_id) == 0  # acked already


async def test_another_consumer_takes_over_a_dead_ones_events(estore: Store) -> None:
    await estore.sessions.save(session("t0"))
    dead = estore.events.consume("mailer", "dead", start="0", count=1)
    taken = await asyncio.wait_for(anext(dead), DEADLINE)
    rescuer = estore.events.consume("mailer", "alive", claim_idle=0.0, count=1)
    rescued = await asyncio.wait_for(anext(rescuer), DEADLINE)
    assert rescued.stream_id == taken.stream_id
    assert await rescuer.ack(rescued) == 1
    assert await estore.events.pending("mailer") == 0
    await estore.sessions.touch("t0")
    fresh = await asyncio.wait_for(anext(rescuer), DEADLINE)
    assert (fresh.id, fresh.op) == ("t0", "touched")


async def test_consumer_kinds_filter_acknowledges_the_rest(estore: Store) -> None:
    await estore.executions.save(
        ExecutionResult(
            id="k0", session_id="k", flow_id="f", backend=Backend.FLOWISE, status="completed"
        )
    )
    await estore.sessions.save(session("k1"))
    only_sessions = estore.events.consume("s-only", "c", start="0", kinds=["session"])
    event = await asyncio.wait_for(anext(only_sessions), DEADLINE)
    assert (event.kind, event.id) == ("session", "k1")
    await only_sessions.ack(event)
    assert await estore.events.pending("s-only") == 0


# ----------------------------------------------------------------------------- expiry


async def test_expirations_report_sessions_removed_by_their_ttl(estore: Store) -> None:
    expiries = estore.events.expirations()
    waiting = asyncio.ensure_future(anext(expiries))

    async def expire_one() -> None:
        while not waiting.done():
            await estore.sessions.save(session("short"), ttl=timedelta(milliseconds=300))
            await asyncio.sleep(1.0)

    writer = asyncio.ensure_future(expire_one())
    try:
        event = await asyncio.wait_for(waiting, DEADLINE)
    finally:
        writer.cancel()
    assert (event.kind, event.id, event.op, event.version) == ("session", "short", "expired", None)
    await expiries.aclose()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- settings and CLI


def test_settings_read_the_event_variables() -> None:
    s = Settings.from_env({"REDIS_EVENTS": "yes", "REDIS_EVENTS_MAXLEN": "500"})
    assert (s.events, s.events_maxlen) == (True, 500)
    assert Settings.from_env({"REDIS_EVENTS": "0"}).events is False
    with pytest.raises(ConfigError, match="REDIS_EVENTS"):
        Settings.from_env({"REDIS_EVENTS": "maybe"})
    with pytest.raises(ConfigError, match="REDIS_EVENTS_MAXLEN"):
        Settings.from_env({"REDIS_EVENTS_MAXLEN": "0"})
    with pytest.raises(ConfigError, match="events_maxlen"):
        Settings(events_maxlen=-1)
    assert Store(events=True).settings.events is True


async def test_cli_events_tail_prints_json_lines(
    estore: Store, redis_url: str, namespace: str
) -> None:
    await estore.sessions.save(session("cli1"))
    await estore.executions.save(
        ExecutionResult(
            id="cx", session_id="cli1", flow_id="f", backend=Backend.FLOWISE, status="completed"
        )
    )
    await estore.sessions.touch("cli1")
    args = ["events", "tail", "--from-start", "--kind", "session", "--count", "2"]
    common = ["--url", redis_url, "--namespace", namespace]
    result = await asyncio.wait_for(
        asyncio.to_thread(CliRunner().invoke, cli, [*args, "--json", *common]), DEADLINE
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["id"], d["op"], d["version"]) for d in lines] == [
        ("cli1", "created", 1),
        ("cli1", "touched", 2),
    ]
    plain = await asyncio.to_thread(CliRunner().invoke, cli, [*args, *common])
    assert plain.exit_code == 0, plain.output
    assert "cli1" in plain.stdout and "touched" in plain.stdout and "v2" in plain.stdout
    bad = await asyncio.to_thread(
        CliRunner().invoke, cli, ["events", "tail", "--after", "soon", *common]
    )
    assert bad.exit_code == 1 and "after must be" in bad.output
