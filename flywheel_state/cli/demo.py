"""``flywheel-state demo``: the guided tour.

Without ``REDIS_URL`` (or ``--url``) it starts the embedded Redis Stack in a temporary directory;
with one it uses that server. Either way it works in a fresh namespace (``demo_<random>``), writes
a few hundred realistic sessions and execution results, runs the indexed queries an admin would
run, shows TTLs counting down, a session expiring, a partial update and a touch, and then removes
everything it created (indexes and keys) or stops the server it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from flywheel_state.cli._admin import find_with_ttls
from flywheel_state.cli._common import console, fail, reporting_errors, run_async
from flywheel_state.cli._tables import (
    counts_columns,
    execution_table,
    page_footer,
    relative_time,
    session_table,
    ttl_cell,
)
from flywheel_state.config import Settings
from flywheel_state.errors import FlywheelStateError, NotFoundError
from flywheel_state.models import (
    Backend,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    Session,
    SessionStatus,
)
from flywheel_state.store import Store

if TYPE_CHECKING:
    from flywheel_state.server import EmbeddedRedis

__all__ = ["DemoData", "demo", "generate", "run_tour"]

# ------------------------------------------------------------------------------ the data

_FLOWS: dict[Backend, tuple[str, ...]] = {
    Backend.FLOWISE: ("csv2507", "structural-tension", "rag-docs"),
    Backend.LANGFLOW: ("triage", "rag-docs", "summarize-ticket"),
    Backend.CUSTOM: ("structural-tension", "code-review", "triage"),
}
_FLOW_MS = {  # typical run time of each flow, in milliseconds
    "csv2507": 1400.0,
    "structural-tension": 3200.0,
    "rag-docs": 2100.0,
    "triage": 650.0,
    "summarize-ticket": 1800.0,
    "code-review": 5200.0,
}
_USERS = (
    "alice", "bob", "carol", "dmitri", "esme", "farid", "grace", "hiro", "ines", "jun",
    "kofi", "lena",
)  # fmt: skip
_TOPICS = (
    "structural tension",
    "quarterly csv import",
    "onboarding docs",
    "incident triage",
    "pricing page rewrite",
    "flaky CI job",
    "customer churn analysis",
    "API rate limits",
)
_QUESTIONS = (
    "What is the current reality versus the desired outcome?",
    "Summarize the last import run.",
    "Which docs cover SSO setup?",
    "Is this ticket a duplicate?",
    "Draft a reply to the customer.",
    "Why did the nightly job fail?",
    "List the columns with missing values.",
    "What changed since yesterday?",
)
_ANSWERS = (
    "Here is what I found in the knowledge base.",
    "The import finished with 3 warnings; details below.",
    "Two documents match; the second is more recent.",
    "Likely a duplicate of an issue opened last week.",
    "Done: the draft is in the context under 'reply'.",
    "The job hit the API rate limit at 02:13 UTC.",
)
_SESSION_STATUS_WEIGHTS = {
    SessionStatus.ACTIVE: 30,
    SessionStatus.IDLE: 25,
    SessionStatus.RUNNING: 8,
    SessionStatus.COMPLETED: 20,
    SessionStatus.FAILED: 7,
    SessionStatus.PENDING: 5,
    SessionStatus.CANCELLED: 5,
}
_EXECUTION_STATUS_WEIGHTS = {
    ExecutionStatus.COMPLETED: 80,
    ExecutionStatus.FAILED: 10,
    ExecutionStatus.RUNNING: 5,
    ExecutionStatus.CANCELLED: 3,
    ExecutionStatus.PENDING: 2,
}
_BACKEND_WEIGHTS = {Backend.FLOWISE: 50, Backend.LANGFLOW: 30, Backend.CUSTOM: 20}
# How long ago a session in each status was last active: (min, max) seconds.
_IDLE_FOR = {
    SessionStatus.ACTIVE: (5, 1800),
    SessionStatus.RUNNING: (1, 600),
    SessionStatus.PENDING: (30, 7200),
    SessionStatus.IDLE: (600, 6 * 3600),
    SessionStatus.COMPLETED: (3600, 5 * 86400),
    SessionStatus.FAILED: (1800, 3 * 86400),
    SessionStatus.CANCELLED: (3600, 4 * 86400),
}
_SESSION_TTL = timedelta(days=7)
_CONCURRENCY = 16


def _pick(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


@dataclass
class DemoData:
    """The generated records, kept in memory to check query results against."""

    sessions: list[Session] = field(default_factory=list)
    executions: list[ExecutionResult] = field(default_factory=list)

    def session_ttl(self, session: Session, now: datetime) -> timedelta:
        """The TTL a session would have left had it been written when it was last active."""
        return max(timedelta(minutes=1), _SESSION_TTL - (now - session.last_active))


def _history(rng: random.Random, start: datetime, end: datetime, turns: int) -> list[HistoryEntry]:
    entries: list[HistoryEntry] = []
    span = max((end - start).total_seconds(), 1.0)
    for i in range(turns):
        at = start + timedelta(seconds=span * (i + 1) / (turns + 1))
        entries.append(HistoryEntry(role="user", content=rng.choice(_QUESTIONS), timestamp=at))
        entries.append(
            HistoryEntry(
                role="assistant",
                content=rng.choice(_ANSWERS),
                timestamp=at + timedelta(seconds=rng.uniform(0.5, 8)),
            )
        )
    return entries


def generate(n_sessions: int, n_executions: int, *, seed: int, now: datetime) -> DemoData:
    """Realistic sessions and execution results across backends, statuses, flows and users."""
    rng = random.Random(seed)
    data = DemoData()
    for _ in range(n_sessions):
        backend: Backend = _pick(rng, _BACKEND_WEIGHTS)
        status: SessionStatus = _pick(rng, _SESSION_STATUS_WEIGHTS)
        lo, hi = _IDLE_FOR[status]
        last_active = now - timedelta(seconds=rng.uniform(lo, hi))
        created_at = last_active - timedelta(seconds=rng.uniform(60, 2 * 86400))
        turns = rng.randint(0, 4)
        flow = rng.choice(_FLOWS[backend])
        queries = turns
        ok = sum(1 for _ in range(queries) if rng.random() < 0.9)
        data.sessions.append(
            Session(
                id=f"sess_{rng.getrandbits(32):08x}",
                backend=backend,
                backend_session_id=f"{backend.value}_{rng.getrandbits(48):012x}",
                status=status,
                current_flow_id=flow,
                user_id=rng.choice(_USERS),
                context={
                    "topic": rng.choice(_TOPICS),
                    "channel": rng.choice(("slack", "web", "api")),
                    "locale": rng.choice(("en", "en", "fr", "de")),
                },
                history=_history(rng, created_at, last_active, turns),
                metadata={"client": "agentic-flywheel-mcp", "flow_version": rng.randint(1, 9)},
                created_at=created_at,
                last_active=last_active,
                total_queries=queries,
                successful_queries=ok,
                total_response_time=round(sum(rng.uniform(0.3, 6) for _ in range(queries)), 2),
            )
        )
    for _ in range(n_executions):
        session = rng.choice(data.sessions)
        flow = rng.choice(_FLOWS[session.backend])
        if session.current_flow_id is not None and rng.random() < 0.7:
            flow = session.current_flow_id
        status_e: ExecutionStatus = _pick(rng, _EXECUTION_STATUS_WEIGHTS)
        duration = round(rng.lognormvariate(0, 0.45) * _FLOW_MS[flow], 1)
        failed = status_e is ExecutionStatus.FAILED
        data.executions.append(
            ExecutionResult(
                id=f"exec_{rng.getrandbits(40):010x}",
                session_id=session.id,
                flow_id=flow,
                backend=session.backend,
                status=status_e,
                result=None
                if failed
                else {"text": rng.choice(_ANSWERS), "tokens": rng.randint(80, 2400)},
                error="upstream flow timed out after 30 s" if failed else None,
                duration_ms=None if status_e is ExecutionStatus.PENDING else duration,
                created_at=now - timedelta(seconds=rng.uniform(5, 55 * 60)),
                metadata={"model": rng.choice(("gpt-4o-mini", "claude-haiku", "llama-3.1-8b"))},
            )
        )
    return data


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
    stats = await store.sessions.stats()
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
    estats = await store.executions.stats()
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


# ------------------------------------------------------------------------------ the command


@click.command()
@click.option(
    "--url",
    default=None,
    help="Redis URL (default: REDIS_URL; without either, an embedded server is started).",
)
@click.option(
    "--sessions",
    "n_sessions",
    type=click.IntRange(20, 100_000),
    default=300,
    show_default=True,
    help="Sessions to generate.",
)
@click.option(
    "--executions",
    "n_executions",
    type=click.IntRange(20, 200_000),
    default=600,
    show_default=True,
    help="Execution results to generate.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the demo's data. With the embedded server, keep it running until Ctrl-C, so "
    "you can try the `sessions` and `executions` commands on it.",
)
@click.option("--seed", type=int, default=None, help="Random seed of the generated data.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def demo(
    url: str | None, n_sessions: int, n_executions: int, keep: bool, seed: int | None, debug: bool
) -> None:
    """A guided tour: write sessions and executions, query them, watch TTLs expire.

    Without REDIS_URL (or --url) it starts an embedded Redis 8 with JSON and search in a
    temporary directory and stops it at the end. With one, it works in a fresh namespace
    (demo_<random>) of that server and deletes everything it created at the end.
    """
    started = time.perf_counter()
    url = url or os.environ.get("REDIS_URL") or None
    namespace = f"demo_{secrets.token_hex(4)}"
    seed = secrets.randbelow(1_000_000) if seed is None else seed
    console.print(Rule("[bold]flywheel-state demo[/bold]", style="cyan"))
    server = None if url else _start_embedded()
    try:
        with reporting_errors(debug=debug):
            if server is None:
                settings = Settings.from_env(url=url, namespace=namespace)
                _say(f"Using the server of REDIS_URL: {settings.safe_url}")
            else:
                settings = Settings(url=server.url, namespace=namespace)
            run_async(
                run_tour(
                    settings,
                    n_sessions=n_sessions,
                    n_executions=n_executions,
                    seed=seed,
                    cleanup=server is None and not keep,
                )
            )
            console.print()
            if keep:
                _say(
                    f"Kept: namespace {namespace}. Try:\n"
                    f"  flywheel-state sessions list --url {settings.safe_url} "
                    f"--namespace {namespace} --status active\n"
                    f"  flywheel-state sessions stats --url {settings.safe_url} "
                    f"--namespace {namespace}"
                )
                if server is not None:
                    _run_until_interrupted(server)
    finally:
        if server is not None:
            server.stop()
            _say("Stopped the embedded server and removed its temporary directory.")
    if not keep:
        _say(
            "Next: `flywheel-state server start --detach` for a server of your own, then "
            "`flywheel-state sessions list --help`; `flywheel-state demo --keep` keeps the data."
        )
    seconds = time.perf_counter() - started
    console.print(Rule(f"done in {seconds:.1f} s", style="cyan"))


def _start_embedded() -> EmbeddedRedis:
    """Start the embedded server, or exit 1 saying how to use another one."""
    from flywheel_state.server import EmbeddedRedis, EmbeddedServerError

    try:
        server = EmbeddedRedis().start()
    except EmbeddedServerError as exc:
        message = str(exc)
        if "REDIS_URL" not in message:
            message += " Set REDIS_URL to a Redis 8 or Redis Stack 7.2+ server instead."
        fail(message)
    _say(
        f"Started an embedded Redis 8 with RedisJSON and RediSearch at {server.url} "
        "(temporary directory; set REDIS_URL to use your own server)."
    )
    return server


def _run_until_interrupted(server: EmbeddedRedis) -> None:
    _say("The embedded server keeps running; press Ctrl-C to stop it.")
    try:
        while server.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
