"""The admin commands (`flywheel-state sessions ...`, `executions ...`) against the real server.

Each test seeds data through the library, then runs the real click command (CliRunner, in a
worker thread so the command can run its own event loop) on the test's namespace.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flywheel_state import Store
from flywheel_state.cli import cli
from flywheel_state.cli._params import parse_duration
from flywheel_state.models import (
    Backend,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    Session,
    SessionStatus,
)

NOW = datetime.now(timezone.utc)

# backend, status, flow, user, minutes since last activity
_SESSION_SPECS: list[tuple[str, str, str, str, float]] = [
    ("flowise", "active", "csv2507", "alice", 1),
    ("flowise", "active", "csv2507", "bob", 4),
    ("flowise", "idle", "csv2507", "alice", 90),
    ("flowise", "active", "rag-docs", "carol", 12),
    ("flowise", "failed", "structural-tension", "alice", 600),
    ("langflow", "active", "triage", "bob", 2),
    ("langflow", "failed", "triage", "dmitri", 300),
    ("langflow", "failed", "rag-docs", "carol", 2000),
    ("langflow", "completed", "summarize-ticket", "alice", 4000),
    ("custom", "running", "code-review", "esme", 0.5),
    ("custom", "failed", "triage", "bob", 45),
    ("custom", "cancelled", "structural-tension", "esme", 7000),
    ("custom", "pending", "code-review", "farid", 20),
]


def _sessions() -> list[Session]:
    out = []
    for i, (backend, status, flow, user, minutes) in enumerate(_SESSION_SPECS):
        last_active = NOW - timedelta(minutes=minutes)
        out.append(
            Session(
                id=f"s{i:02d}",
                backend=Backend(backend),
                status=SessionStatus(status),
                current_flow_id=flow,
                user_id=user,
                context={"topic": f"topic {i}", "n": i},
                history=[HistoryEntry(role="user", content=f"question {i}")],
                created_at=last_active - timedelta(hours=i + 1),
                last_active=last_active,
            )
        )
    return out


def _executions(sessions: list[Session]) -> list[ExecutionResult]:
    statuses = [ExecutionStatus.COMPLETED] * 4 + [ExecutionStatus.FAILED, ExecutionStatus.RUNNING]
    out = []
    for i in range(24):
        session = sessions[i % len(sessions)]
        out.append(
            ExecutionResult(
                id=f"e{i:02d}",
                session_id=session.id,
                flow_id=session.current_flow_id,
                backend=session.backend,
                status=statuses[i % len(statuses)],
                result={"text": f"answer {i}"},
                duration_ms=float(100 + (i * 37) % 500),
                created_at=NOW - timedelta(minutes=i * 2),
            )
        )
    return out


@pytest.fixture
async def seeded(store: Store) -> dict[str, Any]:
    """The test namespace with 13 sessions and 24 executions."""
    sessions = _sessions()
    executions = _executions(sessions)
    await store.sessions.save_many(sessions)
    await store.executions.save_many(executions)
    return {"sessions": sessions, "executions": executions}


class Cli:
    """Runs `flywheel-state ...` on the test server and namespace."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.runner = CliRunner()

    def run_sync(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(
            cli, [*args, "--url", self.url, "--namespace", self.namespace], input=input
        )

    async def __call__(self, *args: str, input: str | None = None) -> Result:
        return await asyncio.to_thread(self.run_sync, *args, input=input)

    async def json(self, *args: str) -> Any:
        result = await self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def run(redis_server: str, namespace: str) -> Cli:
    return Cli(redis_server, namespace)


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _by_recent(sessions: list[Session]) -> list[str]:
    return [s.id for s in sorted(sessions, key=lambda s: s.last_active, reverse=True)]


# ----------------------------------------------------------------------------- sessions list


async def test_sessions_list_json_round_trips_the_saved_documents(
    run: Cli, seeded: dict[str, Any]
) -> None:
    saved: list[Session] = seeded["sessions"]
    data = await run.json("sessions", "list")
    assert data["total"] == len(saved)
    assert data["offset"] == 0
    assert data["limit"] == 50
    assert _ids(data["items"]) == _by_recent(saved)  # default sort: -last_active
    by_id = {s.id: s for s in saved}
    for item in data["items"]:
        ttl = item.pop("ttl_seconds")
        assert 0 < ttl <= timedelta(days=7).total_seconds()
        back = Session.model_validate(item)
        original = by_id[back.id]
        assert back.backend == original.backend
        assert back.status == original.status
        assert back.current_flow_id == original.current_flow_id
        assert back.context == original.context
        assert back.history == original.history
        assert abs((back.last_active - original.last_active).total_seconds()) < 0.001
        assert back.version == 1


async def test_sessions_list_filters_equal_a_brute_force_filter(
    run: Cli, seeded: dict[str, Any]
) -> None:
    saved: list[Session] = seeded["sessions"]

    data = await run.json(
        "sessions", "list", "--backend", "flowise", "--status", "active", "--status", "idle",
        "--flow", "csv2507",
    )  # fmt: skip
    expected = [
        s
        for s in saved
        if s.backend is Backend.FLOWISE
        and s.status in (SessionStatus.ACTIVE, SessionStatus.IDLE)
        and s.current_flow_id == "csv2507"
    ]
    assert data["total"] == len(expected) == 3
    assert _ids(data["items"]) == _by_recent(expected)

    data = await run.json("sessions", "list", "--user", "alice", "--user", "esme")
    expected = [s for s in saved if s.user_id in ("alice", "esme")]
    assert sorted(_ids(data["items"])) == sorted(s.id for s in expected)

    data = await run.json("sessions", "list", "--active-since", "15m")
    expected = [s for s in saved if s.last_active >= NOW - timedelta(minutes=15)]
    assert sorted(_ids(data["items"])) == sorted(s.id for s in expected)
    assert data["total"] == len(expected) == 5

    cutoff = (NOW - timedelta(hours=2)).isoformat()
    data = await run.json("sessions", "list", "--active-before", cutoff)
    expected = [s for s in saved if s.last_active <= NOW - timedelta(hours=2)]
    assert sorted(_ids(data["items"])) == sorted(s.id for s in expected)

    data = await run.json("sessions", "list", "--backend", "custom", "--sort", "created_at")
    expected = sorted((s for s in saved if s.backend is Backend.CUSTOM), key=lambda s: s.created_at)
    assert _ids(data["items"]) == [s.id for s in expected]


async def test_sessions_list_pages(run: Cli, seeded: dict[str, Any]) -> None:
    ordered = _by_recent(seeded["sessions"])
    data = await run.json("sessions", "list", "--limit", "4", "--offset", "3")
    assert data["total"] == len(ordered)
    assert (data["offset"], data["limit"]) == (3, 4)
    assert _ids(data["items"]) == ordered[3:7]

    result = await run("sessions", "list", "--limit", "4", "--offset", "3")
    assert result.exit_code == 0, result.output
    assert f"showing 4-7 of {len(ordered)} sessions" in result.stderr  # footer on stderr when piped
    for session_id in ordered[3:7]:
        assert session_id in result.stdout
    assert ordered[0] not in result.stdout


async def test_sessions_list_table_shows_ttl_and_relative_time(
    run: Cli, seeded: dict[str, Any]
) -> None:
    result = await run("sessions", "list", "--status", "running")
    assert result.exit_code == 0, result.output
    assert "s09" in result.stdout
    assert re.search(r"\b[3-5]\ds ago", result.stdout), result.stdout  # saved 30 s ago
    assert "6d 23h" in result.stdout or "7d 0h" in result.stdout
    assert "showing 1-1 of 1 sessions" in result.stderr

    result = await run("sessions", "list", "--user", "nobody")
    assert result.exit_code == 0, result.output
    assert "no sessions match" in result.stderr  # notes on stderr when piped (issue 14)


async def test_values_that_look_like_markup_are_printed_as_they_are(
    run: Cli, store: Store, seeded: dict[str, Any]
) -> None:
    odd = Session(
        id="odd", backend=Backend.CUSTOM, current_flow_id="[bold]flow[/bold]", user_id="[/]"
    )
    await store.sessions.save(odd)
    await store.executions.save(ExecutionResult(id="odd_e", session_id="odd", flow_id="[/x]"))
    for args in (
        ("sessions", "list", "--backend", "custom"),
        ("sessions", "show", "odd"),
        ("executions", "list", "--session", "odd"),
        ("executions", "show", "odd_e"),
        ("executions", "stats"),
    ):
        result = await run(*args)
        assert result.exit_code == 0, (args, result.output)
    result = await run("sessions", "list", "--user", "[/]")
    assert "[/]" in result.stdout
    assert "[bold]flow[/bold]" in result.stdout
    result = await run("executions", "stats")
    assert "[/x]" in result.stdout


# ----------------------------------------------------------------------------- show


async def test_sessions_show(run: Cli, seeded: dict[str, Any]) -> None:
    data = await run.json("sessions", "show", "s03")
    assert data["id"] == "s03"
    assert data["backend"] == "flowise"
    assert data["current_flow_id"] == "rag-docs"
    assert data["context"] == {"topic": "topic 3", "n": 3}
    assert 0 < data["ttl_seconds"] <= 7 * 86400

    result = await run("sessions", "show", "s03")
    assert result.exit_code == 0, result.output
    assert "session s03" in result.stdout
    assert "TTL left" in result.stdout
    assert '"topic 3"' in result.stdout


async def test_unknown_session_is_one_line_and_exit_3(run: Cli, seeded: dict[str, Any]) -> None:
    # exit 3 (not found) since issue 14: scripts can tell "missing" from "failed".
    for command in ("show", "touch"):
        result = await run("sessions", command, "no_such_session")
        assert result.exit_code == 3, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "no_such_session" in lines[0]
        assert "does not exist" in lines[0]
        assert "Traceback" not in result.output
    result = await run("executions", "show", "no_such_execution")
    assert result.exit_code == 3
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- delete


async def test_delete_without_yes_and_without_input_refuses(
    run: Cli, store: Store, seeded: dict[str, Any]
) -> None:
    result = await run("sessions", "delete", "s00", "s01")
    assert result.exit_code == 1
    assert "Delete 2 sessions? [y/N]" in result.stderr
    assert "refusing" in result.stderr
    assert await store.sessions.exists("s00")
    assert await store.sessions.exists("s01")

    result = await run("sessions", "delete", "--where", "--status", "failed")
    assert result.exit_code == 1
    assert await store.sessions.count(status="failed") == 4

    result = await run("sessions", "delete", "s00", input="n\n")
    assert result.exit_code == 1
    assert "nothing deleted" in result.stderr
    assert await store.sessions.exists("s00")

    result = await run("sessions", "delete", "s00", input="y\n")
    assert result.exit_code == 0, result.output
    assert "deleted 1 session" in result.stdout
    assert not await store.sessions.exists("s00")


async def test_delete_ids_with_yes_deletes_exactly_those(
    run: Cli, store: Store, seeded: dict[str, Any]
) -> None:
    result = await run("sessions", "delete", "s02", "s05", "ghost", "--yes")
    assert result.exit_code == 3, result.output  # a missing id exits 3 (issue 14)
    assert "deleted 2 sessions" in result.stdout
    assert "not found: ghost" in result.stdout
    remaining = {s.id for s in seeded["sessions"]} - {"s02", "s05"}
    found = await store.sessions.get_many(sorted({s.id for s in seeded["sessions"]}))
    assert {s.id for s in found if s is not None} == remaining
    assert await store.sessions.count() == len(remaining)


async def test_delete_where_deletes_exactly_the_matching_sessions(
    run: Cli, store: Store, seeded: dict[str, Any]
) -> None:
    saved: list[Session] = seeded["sessions"]
    doomed = {
        s.id
        for s in saved
        if s.status is SessionStatus.FAILED and s.backend in (Backend.LANGFLOW, Backend.CUSTOM)
    }
    assert len(doomed) == 3

    result = await run(
        "sessions", "delete", "--where", "--status", "failed", "--backend", "langflow",
        "--backend", "custom", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 sessions" in result.stdout
    assert await store.sessions.count() == len(saved)

    data = await run.json(
        "sessions", "delete", "--where", "--status", "failed", "--backend", "langflow",
        "--backend", "custom", "--yes",
    )  # fmt: skip
    assert data["deleted"] == 3
    assert set(data["ids"]) == doomed
    left = await store.sessions.ids()
    assert set(left) == {s.id for s in saved} - doomed

    result = await run("sessions", "delete", "--where", "--active-before", "3d", "--yes")
    assert result.exit_code == 0, result.output
    old = {s.id for s in saved if s.last_active <= NOW - timedelta(days=3)} - doomed
    assert f"deleted {len(old)} session" in result.stdout
    assert set(await store.sessions.ids()) == {s.id for s in saved} - doomed - old


async def test_delete_never_deletes_everything_without_a_filter(
    run: Cli, store: Store, seeded: dict[str, Any]
) -> None:
    total = len(seeded["sessions"])
    for args in (
        ("sessions", "delete", "--yes"),
        ("sessions", "delete", "--where", "--yes"),
        ("sessions", "delete", "--status", "failed", "--yes"),  # filters need --where
        ("sessions", "delete", "s00", "--where", "--status", "failed", "--yes"),
    ):
        result = await run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert (
            result.stderr.startswith("Usage") and "\nerror: " in result.stderr
        )  # one prefix (issue 14)
    assert await store.sessions.count() == total


# ----------------------------------------------------------------------------- touch


async def test_touch_restarts_the_ttl(run: Cli, store: Store, seeded: dict[str, Any]) -> None:
    await store.sessions.save(seeded["sessions"][7], ttl=60)
    before = await store.sessions.get("s07")
    assert (await store.sessions.ttl("s07") or timedelta(0)) <= timedelta(seconds=60)

    result = await run("sessions", "touch", "s07")
    assert result.exit_code == 0, result.output
    assert "touched s07" in result.stdout
    assert "7d 0h" in result.stdout
    ttl = await store.sessions.ttl("s07")
    assert ttl is not None and ttl > timedelta(days=6, hours=23)
    after = await store.sessions.get("s07")
    assert after.last_active > before.last_active
    assert after.version == before.version + 1
    assert after.history == before.history

    data = await run.json("sessions", "touch", "s07", "--ttl", "2h")
    assert data["version"] == after.version + 1
    assert 7000 < data["ttl_seconds"] <= 7200
    ttl = await store.sessions.ttl("s07")
    assert ttl is not None and timedelta(minutes=116) < ttl <= timedelta(hours=2)


# ----------------------------------------------------------------------------- stats


async def test_sessions_stats_equal_a_brute_force_count(run: Cli, seeded: dict[str, Any]) -> None:
    saved: list[Session] = seeded["sessions"]
    data = await run.json("sessions", "stats")
    assert data["backend"] == dict(Counter(s.backend.value for s in saved))
    assert set(data["status"]) == {s.value for s in SessionStatus}  # every status, 0 if unused
    assert _nonzero(data["status"]) == dict(Counter(s.status.value for s in saved))
    assert data["total"] == {"all": len(saved)}

    result = await run("sessions", "stats")
    assert result.exit_code == 0, result.output
    assert "per backend" in result.stderr  # titles go to stderr when piped (issue 14)
    assert "per status" in result.stderr  # titles go to stderr when piped (issue 14)
    assert f"{len(saved)} sessions" in result.stdout


# ----------------------------------------------------------------------------- executions


async def test_executions_list_show_and_stats(run: Cli, seeded: dict[str, Any]) -> None:
    saved: list[ExecutionResult] = seeded["executions"]

    data = await run.json("executions", "list")
    assert data["total"] == len(saved)
    newest_first = [e.id for e in sorted(saved, key=lambda e: e.created_at, reverse=True)]
    assert _ids(data["items"]) == newest_first
    assert all(0 < item["ttl_seconds"] <= 3600 for item in data["items"])

    data = await run.json("executions", "list", "--session", "s01", "--session", "s02")
    assert sorted(_ids(data["items"])) == sorted(
        e.id for e in saved if e.session_id in ("s01", "s02")
    )

    data = await run.json(
        "executions", "list", "--flow", "triage", "--status", "completed", "--sort", "-duration_ms"
    )
    expected = sorted(
        (e for e in saved if e.flow_id == "triage" and e.status is ExecutionStatus.COMPLETED),
        key=lambda e: e.duration_ms or 0,
        reverse=True,
    )
    assert [item["duration_ms"] for item in data["items"]] == [e.duration_ms for e in expected]

    data = await run.json(
        "executions", "list", "--min-duration-ms", "200", "--max-duration-ms", "400",
        "--backend", "flowise", "--since", "30m",
    )  # fmt: skip
    expected = [
        e
        for e in saved
        if e.duration_ms is not None
        and 200 <= e.duration_ms <= 400
        and e.backend is Backend.FLOWISE
        and e.created_at >= NOW - timedelta(minutes=30)
    ]
    assert sorted(_ids(data["items"])) == sorted(e.id for e in expected)

    data = await run.json("executions", "show", "e05")
    assert data["id"] == "e05"
    assert data["session_id"] == saved[5].session_id
    assert data["result"] == {"text": "answer 5"}
    result = await run("executions", "show", "e05")
    assert result.exit_code == 0, result.output
    assert "execution e05" in result.stdout

    data = await run.json("executions", "stats")
    assert data["flow_id"] == dict(Counter(e.flow_id for e in saved))
    assert _nonzero(data["status"]) == dict(Counter(e.status.value for e in saved))
    assert data["total"] == {"all": len(saved)}
    result = await run("executions", "stats")
    assert result.exit_code == 0, result.output
    assert "per flow" in result.stderr and "csv2507" in result.stdout
    assert f"{len(saved)} executions" in result.stdout
    result = await run("executions", "list", "--limit", "5")
    assert f"showing 1-5 of {len(saved)} executions" in result.stderr


# ----------------------------------------------------------------------------- bad input


async def test_bad_times_and_durations_exit_2(run: Cli, seeded: dict[str, Any]) -> None:
    for args in (
        ("sessions", "list", "--active-since", "2 fortnights"),
        ("sessions", "list", "--active-since", "0m"),
        ("sessions", "list", "--created-before", "yesterday"),
        ("sessions", "list", "--backend", "n8n"),
        ("sessions", "touch", "s00", "--ttl", "forever"),
        ("executions", "list", "--since", "2025-13-45"),
        ("executions", "list", "--min-duration-ms", "500", "--max-duration-ms", "100"),
        ("executions", "list", "--sort", "name"),
    ):
        result = await run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Invalid value" in result.stderr or "Error" in result.stderr, result.stderr
    result = await run("sessions", "list", "--active-since", "2 fortnights")
    assert "is neither a duration" in result.stderr


async def test_iso_datetimes_are_accepted(run: Cli, seeded: dict[str, Any]) -> None:
    data = await run.json("sessions", "list", "--active-since", "2000-01-01T00:00:00Z")
    assert data["total"] == len(seeded["sessions"])
    data = await run.json("sessions", "list", "--active-since", "2999-01-01")
    assert data["total"] == 0


def test_parse_duration() -> None:
    assert parse_duration("45s") == timedelta(seconds=45)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    for bad in ("", "h", "5", "5x", "-5m", "0s", "1h 3"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# ---------------------------------------------------------------- issue 14: a CLI that pipes


async def test_piped_list_keeps_long_values_whole_for_grep(run: Cli, store: Store) -> None:
    long_flow = "structural-tension-" + "x" * 150
    for i in range(3):
        await store.sessions.save(
            Session(id=f"long{i}", backend=Backend.FLOWISE, current_flow_id=long_flow)
        )
    result = await run("sessions", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[0] == "id"  # a header row
    assert sum(long_flow in line for line in lines) == 3  # `| grep` finds each whole
    assert all(len(line.split("\t")) == len(lines[0].split("\t")) for line in lines[1:])


async def test_json_errors_are_one_object_on_stdout(run: Cli, seeded: dict[str, Any]) -> None:
    result = await run("sessions", "show", "missing", "--json")
    assert result.exit_code == 3
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "NotFoundError" and error["exit_code"] == 3
    assert "missing" in error["message"]
    usage = await run("sessions", "list", "--limit", "0", "--json")
    assert usage.exit_code == 2
    assert json.loads(usage.stdout)["error"]["type"] == "UsageError"


async def test_deleting_a_missing_id_exits_3_and_deletes_the_others(
    run: Cli, store: Store, seeded: dict[str, Any]
) -> None:
    result = await run("sessions", "delete", "s00", "missing", "--yes")
    assert result.exit_code == 3, result.output
    assert not await store.sessions.exists("s00")
    assert (await run("sessions", "delete", "missing", "--yes")).exit_code == 3


def test_piped_cells_escape_tab_newline_backslash() -> None:
    from rich.table import Table

    from flywheel_state.cli._common import table_rows

    table = Table("a", "b")
    table.add_row("x\ty", "p\nq\\r")
    assert table_rows(table) == [["a", "b"], ["x\\ty", "p\\nq\\\\r"]]


def test_empty_namespace_is_a_usage_error(redis_server: str) -> None:
    result = CliRunner().invoke(cli, ["sessions", "list", "--url", redis_server, "--namespace", ""])
    assert result.exit_code == 2
    assert "error: " in result.stderr and "--namespace" in result.stderr


def test_server_status_exits_3_when_stopped(tmp_path: Any) -> None:
    result = CliRunner().invoke(cli, ["server", "status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert result.stdout.startswith("stopped")


def test_version_names_the_server_requirements() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "RedisJSON" in result.stdout and "RediSearch" in result.stdout


def test_help_shows_the_effective_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_NAMESPACE", "from_env_ns")
    result = CliRunner().invoke(cli, ["sessions", "list", "--help"])
    assert "from_env_ns" in result.stdout


async def test_a_mistyped_namespace_is_reported_unused_not_migrate_up(
    redis_server: str, store: Store, seeded: dict[str, Any]
) -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["sessions", "list", "--url", redis_server, "--namespace", f"{store.namespace}_typo"],
    )
    assert result.exit_code == 1
    assert "is unused" in result.stderr and store.namespace in result.stderr
    assert "run `flywheel-state migrate up`" not in result.stderr


def test_pager_only_for_long_output_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from flywheel_state.cli import _tables

    monkeypatch.setattr(_tables, "console", Console(force_terminal=True, height=10))
    assert _tables.needs_pager("\n".join(["x"] * 50))
    assert not _tables.needs_pager("short")
    monkeypatch.setattr(_tables, "console", Console(force_terminal=False, height=10))
    assert not _tables.needs_pager("\n".join(["x"] * 50))  # piped: never a pager
