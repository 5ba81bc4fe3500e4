"""``flywheel-state migrate ...`` and doctor's revision check, against the real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from flywheel_state.cli import cli
from flywheel_state.migrations import default_scripts

HEAD = default_scripts().head


def run(url: str, namespace: str, *args: str, input: str | None = None) -> Result:
    command = [*args, "--url", url, "--namespace", namespace]
    return CliRunner().invoke(cli, command, input=input, catch_exceptions=False)


def run_json(url: str, namespace: str, *args: str) -> Any:
    result = run(url, namespace, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def keys(client: redis.Redis, namespace: str) -> set[str]:
    return set(client.scan_iter(match=f"{namespace}:*", count=1000))


def test_status_up_history_down_stamp(
    redis_url: str, namespace: str, sync_client: redis.Redis
) -> None:
    status = run_json(redis_url, namespace, "migrate", "status")
    assert status["current"] is None and status["pending"] == ["0001", "0002", "0003"]
    assert not status["up_to_date"]

    dry = run_json(redis_url, namespace, "migrate", "up", "--dry-run")
    assert dry["dry_run"] and [s["revision"] for s in dry["steps"]] == ["0001", "0002", "0003"]
    assert keys(sync_client, namespace) == set()  # a dry run writes nothing, not even a lock

    result = run(redis_url, namespace, "migrate", "up")
    assert result.exit_code == 0, result.output
    assert "applied 0001" in result.output and "applied 0002" in result.output
    assert f"now at revision {HEAD}" in result.output
    assert run_json(redis_url, namespace, "migrate", "status")["up_to_date"]
    text = run(redis_url, namespace, "migrate", "status").output
    assert "up to date" in text and HEAD in text

    history = run_json(redis_url, namespace, "migrate", "history")
    assert [(h["action"], h["revision"]) for h in history] == [
        ("upgrade", "0001"),
        ("upgrade", "0002"),
        ("upgrade", "0003"),
    ]
    assert all(h["host"] and h["pid"] for h in history)

    # down asks first; answering no changes nothing.
    refused = run(redis_url, namespace, "migrate", "down", "0001", input="n\n")
    assert refused.exit_code == 1 and "Undo 0003" in refused.output
    assert run_json(redis_url, namespace, "migrate", "status")["current"] == "0003"
    down = run_json(redis_url, namespace, "migrate", "down", "0001", "--yes")
    assert down["direction"] == "downgrade" and down["to_revision"] == "0001"

    stamped = run_json(redis_url, namespace, "migrate", "stamp", "head")
    assert stamped["action"] == "stamp" and stamped["to_revision"] == HEAD
    assert run_json(redis_url, namespace, "migrate", "status")["current"] == HEAD
    assert "stamp" in run(redis_url, namespace, "migrate", "history").output


def test_up_reports_legacy_values_it_could_not_map(
    redis_url: str, namespace: str, sync_client: redis.Redis
) -> None:
    legacy = {
        "id": "s1",
        "backend": "flowise",
        "status": "hibernating",
        "created_at": "2025-11-18 10:00:00",
        "last_active": "2025-11-18T10:05:00",
    }
    sync_client.set(f"{namespace}:session:s1", json.dumps(legacy), ex=3600)
    dry = run(redis_url, namespace, "migrate", "up", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would apply 0002" in dry.output and "unknown status 'hibernating'" in dry.output
    assert "sample" in dry.output
    assert sync_client.type(f"{namespace}:session:s1") == "string"

    result = run(redis_url, namespace, "migrate", "up")
    assert result.exit_code == 0, result.output
    assert "1 value(s) could not be mapped" in result.output
    assert sync_client.type(f"{namespace}:session:s1") == "ReJSON-RL"
    assert 3500 < sync_client.ttl(f"{namespace}:session:s1") <= 3600


def test_errors_are_one_line(redis_url: str, namespace: str) -> None:
    result = CliRunner().invoke(
        cli, ["migrate", "up", "0042", "--url", redis_url, "--namespace", namespace]
    )
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: unknown revision '0042'")
    assert "Traceback" not in result.output


def test_new_writes_a_script_from_the_template(tmp_path: Path, redis_url: str) -> None:
    src = default_scripts().path
    for name in ("0001_initial.py", "0002_import_legacy_strings.py"):
        (tmp_path / name).write_text((src / name).read_text())
    out = run_json(
        redis_url, "unused", "migrate", "new", "Rename a field", "--directory", str(tmp_path)
    )
    path = Path(out["path"])
    assert out["revision"] == "0003" and path.name == "0003_rename_a_field.py"
    assert 'down_revision = "0002"' in path.read_text()


def test_doctor_reports_a_schema_behind_head(
    redis_url: str, namespace: str, sync_client: redis.Redis
) -> None:
    assert run(redis_url, namespace, "migrate", "up", "0001").exit_code == 0
    result = run(redis_url, namespace, "doctor", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["migrations"]["current"] == "0001" and report["migrations"]["head"] == HEAD
    assert any("behind head" in p for p in report["problems"])
    assert run(redis_url, namespace, "migrate", "up").exit_code == 0
    healthy = run(redis_url, namespace, "doctor")
    assert healthy.exit_code == 0, healthy.output
    assert f"{HEAD} (head {HEAD})" in healthy.output


def test_migrate_new_refuses_the_installed_package_and_uses_the_configured_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLYWHEEL_STATE_MIGRATIONS", raising=False)
    monkeypatch.chdir(tmp_path)
    shipped = sorted(p.name for p in default_scripts().path.iterdir())
    refused = CliRunner().invoke(cli, ["migrate", "new", "x"])
    assert refused.exit_code == 2
    assert "[tool.flywheel-state]" in refused.stderr and "--directory" in refused.stderr
    assert sorted(p.name for p in default_scripts().path.iterdir()) == shipped
    # pyproject.toml of the application, found from a subdirectory
    (tmp_path / "pyproject.toml").write_text(
        '[tool.flywheel-state]\nmigrations = "db/migrations"\n'
    )
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    made = CliRunner().invoke(cli, ["migrate", "new", "Add a field"])
    assert made.exit_code == 0, made.output
    assert [p.name for p in (tmp_path / "db" / "migrations").glob("*.py")] == [
        "0001_add_a_field.py"
    ]
    # the environment variable, and the hint naming --directory when it was given
    monkeypatch.setenv("FLYWHEEL_STATE_MIGRATIONS", str(tmp_path / "env_migrations"))
    assert CliRunner().invoke(cli, ["migrate", "new", "y"]).exit_code == 0
    assert list((tmp_path / "env_migrations").glob("0001_*.py"))
    given = CliRunner().invoke(cli, ["migrate", "new", "z", "--directory", str(tmp_path / "d")])
    assert f"migrate up --directory {tmp_path / 'd'}" in given.stdout


def _interrupt(sync_client: redis.Redis, namespace: str, revision: str) -> None:
    """Leave the marker a run killed in the middle of upgrading ``revision`` leaves behind."""
    marker = {"revision": revision, "direction": "upgrade", "host": "h", "pid": 1}
    sync_client.set(f"{namespace}:_migrations:running", json.dumps(marker))


def test_an_interrupted_migration_whose_script_is_missing_is_never_cleared_silently(
    redis_url: str, namespace: str, sync_client: redis.Redis
) -> None:
    assert run(redis_url, namespace, "migrate", "up").exit_code == 0
    _interrupt(sync_client, namespace, "0099")  # a script since removed

    status = run_json(redis_url, namespace, "migrate", "status")
    assert status["interrupted_script_missing"] and not status["up_to_date"]
    assert "script of revision 0099 is missing" in status["resolution"]
    assert f"migrate stamp {HEAD}" in status["resolution"]
    text = run(redis_url, namespace, "migrate", "status").output
    assert "0099 is missing" in text

    # migrate up refuses (it used to clear the marker and report success) and keeps the state.
    result = run(redis_url, namespace, "migrate", "up")
    assert result.exit_code != 0 and "0099 is missing" in result.output
    assert sync_client.exists(f"{namespace}:_migrations:running") == 1
    assert run(redis_url, namespace, "migrate", "up", "--dry-run").exit_code != 0

    # doctor reports it with the same way out.
    doctor = run(redis_url, namespace, "doctor", "--json")
    assert doctor.exit_code != 0 and "0099 is missing" in doctor.output
    # The Store's connect error names the same way out.
    result = run(redis_url, namespace, "sessions", "list")
    assert result.exit_code != 0 and f"migrate stamp {HEAD}" in result.output

    # stamp, after checking the data by hand, is the way out it names.
    assert run(redis_url, namespace, "migrate", "stamp", HEAD).exit_code == 0
    assert run_json(redis_url, namespace, "migrate", "status")["up_to_date"]


def test_an_interrupted_known_step_is_resumed_or_refused_never_dropped(
    redis_url: str, namespace: str, sync_client: redis.Redis
) -> None:
    assert run(redis_url, namespace, "migrate", "up", "0002").exit_code == 0
    _interrupt(sync_client, namespace, "0003")
    status = run_json(redis_url, namespace, "migrate", "status")
    assert not status["interrupted_script_missing"]
    assert "`flywheel-state migrate up` finishes it" in status["resolution"]
    assert "migrate down 0002" in status["resolution"]
    # An upgrade that would not resume 0003 (the target is the applied revision) refuses.
    result = run(redis_url, namespace, "migrate", "up", "0002")
    assert result.exit_code != 0 and "0003 was interrupted" in result.output
    assert sync_client.exists(f"{namespace}:_migrations:running") == 1
    # A plain migrate up resumes it and ends up to date.
    assert run(redis_url, namespace, "migrate", "up").exit_code == 0
    assert run_json(redis_url, namespace, "migrate", "status")["up_to_date"]


APP_SCRIPT = """
revision = "0001"
down_revision = None
description = "mark the namespace"


async def upgrade(ctx):
    await ctx.client.set(ctx.key("app-mark"), "1")


async def downgrade(ctx):
    await ctx.client.delete(ctx.key("app-mark"))
"""


def test_application_migrations_are_a_chain_of_their_own(
    redis_url: str, namespace: str, sync_client: redis.Redis, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_mark.py").write_text(APP_SCRIPT, encoding="utf-8")
    where = ("--directory", str(directory))

    up = run_json(redis_url, namespace, "migrate", "up", *where)
    # The library's chain first (the application's scripts build on it), then the app's.
    assert [s["revision"] for s in up["library"]["steps"]] == ["0001", "0002", "0003"]
    assert [s["revision"] for s in up["steps"]] == ["0001"]
    assert sync_client.get(f"{namespace}:app-mark") == "1"
    # Recorded apart: a later release's 0004 can't collide with the application's numbers.
    assert sync_client.get(f"{namespace}:_migrations:revision") == HEAD
    assert sync_client.get(f"{namespace}:_migrations:app:revision") == "0001"

    status = run_json(redis_url, namespace, "migrate", "status", *where)
    assert status["current"] == "0001" and status["up_to_date"]
    assert status["library"]["current"] == HEAD and status["library"]["up_to_date"]
    text = run(redis_url, namespace, "migrate", "status", *where).output
    assert "flywheel-state's own migrations" in text and "the application's migrations" in text
    assert run(redis_url, namespace, "sessions", "list").exit_code == 0  # the Store opens

    # Undoing the application's chain leaves the library's alone.
    down = run(redis_url, namespace, "migrate", "down", "base", "--yes", *where)
    assert down.exit_code == 0, down.output
    assert sync_client.get(f"{namespace}:app-mark") is None
    assert sync_client.get(f"{namespace}:_migrations:revision") == HEAD
    assert run_json(redis_url, namespace, "migrate", "status", *where)["current"] is None
