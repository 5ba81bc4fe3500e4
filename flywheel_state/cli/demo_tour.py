"""The demo's guided tour: writes, queries, expiry, partial writes, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from rich import box
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from flywheel_state.cli._admin import find_with_ttls
from flywheel_state.cli._common import console
from flywheel_state.cli._tables import (
    counts_columns,
    execution_table,
    page_footer,
    relative_time,
    session_table,
    ttl_cell,
)
from flywheel_state.cli.demo_data import _CONCURRENCY, DemoData, generate
from flywheel_state.config import Settings
from flywheel_state.errors import FlywheelStateError, NotFoundError
from flywheel_state.models import (
    Backend,
    ExecutionStatus,
    HistoryEntry,
    Session,
    SessionStatus,
)
from flywheel_state.store import Store

if TYPE_CHECKING:
    pass

__all__ = ["run_tour"]

# ------------------------------------------------------------------------------ printing


def _section(title: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{escape(title)}[/bold]", align="left", style="cyan"))


def _say(text: str) -> None:
    console.print(text)


def _code(text: str) -> None:
    console.print(f"  [dim]>>>[/dim] [cyan]{escape(text)}[/cyan]")


def _check(ok: bool, what: str) -> None:
    mark = "[green]ok[/green]" if ok else "[red]MISMATCH[/red]"
    console.print(f"  {mark} {what}")


# ------------------------------------------------------------------------------ cleanup


# ------------------------------------------------------------------------------ the tour


async def _write(store: Store, data: DemoData, now: datetime) -> None:
    _section("1. Writing sessions and execution results")
    _say(
        "Sessions are written with a sliding TTL (7 days from their last activity); execution "
        "results are cached for an hour."
    )
    # At most _CONCURRENCY writes in flight: the client's connection pool is bounded.
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def save(session: Session) -> None:
        async with gate:
            await store.sessions.save(session, ttl=data.session_ttl(session, now))

    start = time.perf_counter()
    await asyncio.gather(*(save(s) for s in data.sessions))
    took_sessions = time.perf_counter() - start
    _code("await store.sessions.save(session, ttl=...)   # JSON.SET + PEXPIRE in one Lua call")
    _say(
        f"  {len(data.sessions)} sessions saved, {_CONCURRENCY} at a time, in "
        f"{took_sessions * 1000:.0f} ms"
    )

    start = time.perf_counter()
    await store.executions.save_many(data.executions)
    took_executions = time.perf_counter() - start
    _code("await store.executions.save_many(results)     # one pipelined round trip per 500")
    _say(f"  {len(data.executions)} execution results in {took_executions * 1000:.0f} ms")

    talking = [s for s in data.sessions if s.status is SessionStatus.ACTIVE][:20]
    start = time.perf_counter()
    await asyncio.gather(
        *(
            store.sessions.append_history(
                s.id,
                HistoryEntry(role="user", content="Any update on this?"),
                HistoryEntry(role="assistant", content="Yes: the flow finished a minute ago."),
            )
            for s in talking
        )
    )
    took_history = time.perf_counter() - start
    # Mirror the change locally (query results are checked against the local copies).
    stored = await store.sessions.get_many([s.id for s in talking])
    for s, fresh in zip(talking, stored, strict=True):
        if fresh is not None:
            s.last_active, s.history = fresh.last_active, fresh.history
    _code('await store.sessions.append_history(id, HistoryEntry(role="user", content=...), ...)')
    _say(
        f"  {len(talking)} active sessions got a new turn in {took_history * 1000:.0f} ms: "
        "JSON.ARRAPPEND on the history (no rewrite), last_active = now, TTL restarted"
    )


async def _queries(store: Store, data: DemoData) -> None:
    _section("2. Indexed queries (RediSearch, no SCAN)")
    now = datetime.now(timezone.utc)

    _say("[bold]Active sessions on flowise running flow csv2507, most recent first[/bold]")
    _code(
        'await store.sessions.find(backend="flowise", status="active", flow_id="csv2507", '
        'sort="-last_active", limit=6)'
    )
    page, ttls = await find_with_ttls(
        store.sessions,
        backend="flowise",
        status="active",
        flow_id="csv2507",
        sort="-last_active",
        limit=6,
    )
    console.print(
        session_table(
            page.items,
            ttls,
            columns=("id", "user", "topic", "turns", "last_active", "ttl"),
            now=now,
        )
    )
    _say(page_footer(page.total, page.offset, len(page.items), noun="sessions"))
    expected = sorted(
        (
            s
            for s in data.sessions
            if s.backend is Backend.FLOWISE
            and s.status is SessionStatus.ACTIVE
            and s.current_flow_id == "csv2507"
        ),
        key=lambda s: s.last_active,
        reverse=True,
    )
    _check(
        page.total == len(expected)
        and [s.id for s in page.items] == [s.id for s in expected[: len(page.items)]],
        "same sessions, same order as a brute-force filter of the generated data",
    )

    console.print()
    _say("[bold]Counts per backend and per status[/bold]")
    _code("await store.sessions.stats()")
    stats = (await store.sessions.stats()).as_dict()
    console.print(counts_columns(stats, {"backend": "backend", "status": "status"}, titled=False))
    brute = {
        "backend": dict(Counter(s.backend.value for s in data.sessions)),
        "status": dict(Counter(s.status.value for s in data.sessions)),
    }
    _check(
        {k: {v: n for v, n in stats[k].items() if n} for k in brute} == brute,
        "equal to counting every generated session",
    )

    console.print()
    _say("[bold]Sessions active in the last 10 minutes[/bold]")
    since = now - timedelta(minutes=10)
    _code("await store.sessions.count(active_after=now - timedelta(minutes=10))")
    recent = await store.sessions.count(active_after=since)
    _say(f"  {recent} sessions")
    _check(
        recent == sum(1 for s in data.sessions if s.last_active >= since),
        "equal to the brute-force count",
    )

    console.print()
    _say("[bold]Failed or cancelled sessions on langflow or custom[/bold] (a list means any of)")
    _code(
        'await store.sessions.count(backend=["langflow", "custom"], status=["failed", "cancelled"])'
    )
    stuck = await store.sessions.count(
        backend=["langflow", "custom"], status=["failed", "cancelled"]
    )
    _say(f"  {stuck} sessions")
    _check(
        stuck
        == sum(
            1
            for s in data.sessions
            if s.backend in (Backend.LANGFLOW, Backend.CUSTOM)
            and s.status in (SessionStatus.FAILED, SessionStatus.CANCELLED)
        ),
        "equal to the brute-force count",
    )

    console.print()
    _say("[bold]Every session of one user, streamed with a cursor[/bold]")
    _code('async for s in store.sessions.iterate(user_id="alice"): ...')
    per_backend: Counter[str] = Counter()
    async for s in store.sessions.iterate(user_id="alice"):
        per_backend[s.backend.value] += 1
    shown = ", ".join(f"{b} {n}" for b, n in per_backend.most_common()) or "none"
    _say(f"  alice: {sum(per_backend.values())} sessions ({shown})")

    console.print()
    _say("[bold]Slowest completed executions of flow structural-tension[/bold]")
    _code(
        'await store.executions.find(flow_id="structural-tension", status="completed", '
        'sort="-duration_ms", limit=5)'
    )
    slow = await store.executions.find(
        flow_id="structural-tension", status="completed", sort="-duration_ms", limit=5
    )
    ttls = [None] * len(slow.items)  # not shown: every result was cached a moment ago
    console.print(
        execution_table(
            slow.items, ttls, columns=("id", "duration", "backend", "session", "created"), now=now
        )
    )
    _say(page_footer(slow.total, slow.offset, len(slow.items), noun="executions"))
    expected_e = sorted(
        (
            e
            for e in data.executions
            if e.flow_id == "structural-tension" and e.status is ExecutionStatus.COMPLETED
        ),
        key=lambda e: e.duration_ms or 0.0,
        reverse=True,
    )
    _check(
        [e.duration_ms for e in slow.items]
        == [e.duration_ms for e in expected_e[: len(slow.items)]],
        "the same durations as sorting every generated result",
    )

    console.print()
    _say("[bold]Executions per flow in the last hour[/bold]")
    _code("await store.executions.stats()")
    estats = (await store.executions.stats()).as_dict()
    console.print(counts_columns(estats, {"flow_id": "flow", "status": "status"}, titled=False))


async def _expiry(store: Store, total: int) -> None:
    _section("3. TTLs count down, and sessions expire")
    _say("A session saved with ttl=3 (seconds). Redis removes it when the time is up, and the")
    _say("index forgets it: no cleanup job.")
    short = Session(
        id="sess_short_lived",
        backend=Backend.CUSTOM,
        status=SessionStatus.ACTIVE,
        current_flow_id="triage",
        user_id="ttl-demo",
        context={"topic": "a quick question"},
    )
    _code("await store.sessions.save(session, ttl=3)")
    await store.sessions.save(short, ttl=3)
    before = await store.sessions.count()
    mine = await store.sessions.count(user_id="ttl-demo")
    _say(f"  count(): {before} sessions, {mine} of ttl-demo")
    console.print("  TTL left: ", end="")
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            left = await store.sessions.ttl(short.id)
        except NotFoundError:
            console.print("[bold red]gone[/bold red]")
            break
        console.print(f"{(left or timedelta(0)).total_seconds():.1f}s → ", end="")
        await asyncio.sleep(0.6)
    else:
        console.print("still there after 6 s?")
    _code("await store.sessions.get_or_none('sess_short_lived')")
    _say(f"  {await store.sessions.get_or_none(short.id)!r}")
    after = await store.sessions.count()
    _say(
        f"  count(): {after} sessions (was {before}), "
        f"{await store.sessions.count(user_id='ttl-demo')} of ttl-demo"
    )
    _check(after == before - 1 == total, "the expired session left the index by itself")


def _state_table(rows: Sequence[tuple[str, str, str]]) -> Table:
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("field")
    table.add_column("before")
    table.add_column("after")
    for row in rows:
        table.add_row(*row)
    return table


async def _partial_writes(store: Store, data: DemoData) -> None:
    _section("4. Touch and partial updates")
    idle = sorted(
        (s for s in data.sessions if s.status is SessionStatus.IDLE),
        key=lambda s: s.last_active,
    )
    target = idle[len(idle) // 2] if idle else data.sessions[0]
    before = await store.sessions.get(target.id)
    ttl_before = await store.sessions.ttl(target.id)
    _say(f"[bold]touch[/bold]: {target.id} was last active {relative_time(before.last_active)}.")
    _code(f"await store.sessions.touch({target.id!r})")
    await store.sessions.touch(target.id)
    after = await store.sessions.get(target.id)
    ttl_after = await store.sessions.ttl(target.id)
    console.print(
        _state_table(
            [
                (
                    "last_active",
                    relative_time(before.last_active),
                    relative_time(after.last_active),
                ),
                ("TTL left", ttl_cell(ttl_before), ttl_cell(ttl_after)),
                ("version", str(before.version), str(after.version)),
            ]
        )
    )

    console.print()
    candidates = [s for s in data.sessions if s.status is SessionStatus.RUNNING and s.history]
    other = candidates[0] if candidates else data.sessions[-1]
    before = await store.sessions.get(other.id)
    _say(
        f"[bold]update[/bold] and [bold]append_history[/bold] at the same time on {other.id}: "
        "each writes only its own JSON paths, so neither loses the other's change."
    )
    _code(
        f'await asyncio.gather(store.sessions.update({other.id!r}, status="completed"), '
        f"store.sessions.append_history({other.id!r}, HistoryEntry(...)))"
    )
    await asyncio.gather(
        store.sessions.update(other.id, status=SessionStatus.COMPLETED),
        store.sessions.append_history(
            other.id, HistoryEntry(role="assistant", content="All done. Closing this session.")
        ),
    )
    after = await store.sessions.get(other.id)
    console.print(
        _state_table(
            [
                ("status", str(before.status), str(after.status)),
                ("history", f"{len(before.history)} entries", f"{len(after.history)} entries"),
                ("total_queries", str(before.total_queries), str(after.total_queries)),
                ("context.topic", _topic(before), _topic(after)),
                ("version", str(before.version), str(after.version)),
            ]
        )
    )
    _check(
        after.status is SessionStatus.COMPLETED
        and len(after.history) == len(before.history) + 1
        and after.context == before.context
        and after.version == before.version + 2,
        "both writes landed; the untouched fields are unchanged",
    )


def _topic(session: Session) -> str:
    return str(session.context.get("topic", "-"))


async def run_tour(
    settings: Settings, *, n_sessions: int, n_executions: int, seed: int, cleanup: bool
) -> None:
    """Run the demo against ``settings`` (its namespace should be fresh).

    Args:
        settings: Where to connect; everything is written under ``settings.namespace``.
        n_sessions: How many sessions to generate.
        n_executions: How many execution results to generate.
        seed: Random seed of the generated data.
        cleanup: Drop the namespace's indexes and keys at the end (even after an error).
    """
    store = Store(settings, auto_migrate=True)
    try:
        await store.connect()
        _say(
            f"Connected to {settings.safe_url}, namespace [bold]{settings.namespace}[/bold]; "
            "indexes created:"
        )
        for kind in ("session", "execution"):
            target = await store.index_target(kind)
            _say(f"  {settings.namespace}:{kind}:idx -> {target}")
        now = datetime.now(timezone.utc)
        data = generate(n_sessions, n_executions, seed=seed, now=now)
        await _write(store, data, now)
        await _queries(store, data)
        await _expiry(store, len(data.sessions))
        await _partial_writes(store, data)
    except BaseException:
        if cleanup:  # best effort: the error that stopped the tour is the one to report
            with contextlib.suppress(FlywheelStateError):
                await store.drop_namespace()
        raise
    else:
        if cleanup:
            _section("5. Cleaning up")
            dropped, unlinked = await store.drop_namespace()
            _say(
                f"Dropped {dropped} indexes and unlinked {unlinked} keys of namespace "
                f"{settings.namespace} (FT.DROPINDEX + UNLINK)."
            )
    finally:
        await store.close()
