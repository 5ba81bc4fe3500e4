"""``flywheel-state migrate``: run and inspect migrations (thin wrappers over ``store.migrations``).

``status``, ``up [TARGET]``, ``down TARGET``, ``history``, ``stamp REVISION`` and ``new MESSAGE``.
The commands work on a namespace whose schema is behind (they never require it to be current), take
``--url`` / ``--namespace`` / ``--json``, and print library errors as one line (exit status 1).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from flywheel_state.cli._common import (
    CliContext,
    common_options,
    console,
    emit_json,
    fail,
    option_group,
)
from flywheel_state.migrations import (
    MigrationProgress,
    MigrationRecord,
    MigrationReport,
    MigrationRunner,
    MigrationStatus,
    ProgressCallback,
    ScriptDirectory,
    default_scripts,
)
from flywheel_state.migrations.report import Direction
from flywheel_state.migrations.script import APP_CHAIN, HEAD
from flywheel_state.store import Store

__all__ = ["migrate"]

_SHOWN_PROBLEMS = 10


@click.group()
def migrate() -> None:
    """Schema and data migrations: status, up, down, history, stamp, new."""


# ---------------------------------------------------------------------- helpers


class _RateColumn(ProgressColumn):
    """Documents per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} docs/s", style="progress.data.speed")


@contextmanager
def _progress(ctx: CliContext) -> Iterator[ProgressCallback | None]:
    """A progress callback drawing rich bars, or None when quiet (--json, not a terminal)."""
    if ctx.json or not console.is_terminal:
        yield None
        return
    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("{task.fields[changed]:,} changed"),
        TimeElapsedColumn(),
        console=console,
    )
    tasks: dict[tuple[str, str, str], Any] = {}

    def update(event: MigrationProgress) -> None:
        ident = (event.revision, event.direction, event.label)
        if ident not in tasks:
            tasks[ident] = bars.add_task(
                f"{event.revision} {event.label}", total=event.total, changed=0
            )
        bars.update(
            tasks[ident],
            completed=event.processed,
            total=event.total,
            changed=event.changed,
        )

    with bars:
        yield update


MIGRATIONS_ENV = "FLYWHEEL_STATE_MIGRATIONS"
"""The environment variable naming an application's migrations directory."""


def configured_directory(start: Path | None = None) -> Path | None:
    """The application's migrations directory: ``$FLYWHEEL_STATE_MIGRATIONS``, else
    ``[tool.flywheel-state] migrations = "..."`` in the nearest pyproject.toml from ``start``
    (default: the working directory) upward, relative to that file; None when neither is set."""
    import os

    value = os.environ.get(MIGRATIONS_ENV, "").strip()
    if value:
        return Path(value)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                configured = _migrations_setting(candidate.read_text("utf-8"))
            except (OSError, ValueError):
                return None
            return folder / configured if configured else None
    return None


def _migrations_setting(text: str) -> str | None:
    """``[tool.flywheel-state] migrations`` of a pyproject.toml's text, or None."""
    if sys.version_info >= (3, 11):
        import tomllib

        table = tomllib.loads(text).get("tool", {}).get("flywheel-state", {})
        value = table.get("migrations") if isinstance(table, dict) else None
        return value if isinstance(value, str) and value else None
    # Python 3.10 has no tomllib: read the one key this needs (a quoted string).
    import re

    section = re.search(
        r"^\[tool\.(?:\"flywheel-state\"|flywheel-state)\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S
    )
    if section is None:
        return None
    match = re.search(r"^migrations\s*=\s*(?:\"([^\"]+)\"|'([^']+)')", section.group(1), re.M)
    return (match.group(1) or match.group(2)) if match else None


def _runner(store: Store, directory: Path | None) -> MigrationRunner:
    """The runner of the application's chain when a directory is configured, else the
    library's. The application's chain is recorded apart (``{ns}:_migrations:app:*``)."""
    directory = directory or configured_directory()
    if directory is None:
        return store.migrations
    return MigrationRunner(store, scripts=ScriptDirectory(directory, chain=APP_CHAIN))


def _print_report(report: MigrationReport) -> None:
    verb = {"upgrade": "applied", "downgrade": "undid"}[report.direction]
    if report.dry_run:
        verb = {"upgrade": "would apply", "downgrade": "would undo"}[report.direction]
    if not report.steps:
        console.print(f"nothing to do: at revision {report.from_revision or 'base'}")
        return
    for step in report.steps:
        timing = "" if report.dry_run else f" in {step.duration_s:.2f}s"
        resumed = " (resumed)" if step.resumed else ""
        documents = ""
        if step.documents_scanned or step.documents_changed:
            documents = (
                f": {step.documents_changed:,} documents of {step.documents_scanned:,} examined"
            )
        console.print(
            f"{verb} [bold]{step.revision}[/bold] {escape(step.description)}{resumed}"
            f"{documents}{timing}"
        )
        for action in step.actions:
            console.print(f"  - {escape(action)}")
        if step.problem_count:
            console.print(
                f"  [yellow]{step.problem_count} value(s) could not be mapped as they were:"
                "[/yellow]"
            )
            for problem in step.problems[:_SHOWN_PROBLEMS]:
                console.print(f"    {escape(problem.key)}: {escape(problem.message)}")
            if step.problem_count > _SHOWN_PROBLEMS:
                console.print(f"    ... and {step.problem_count - _SHOWN_PROBLEMS} more")
        for sample in step.samples:
            console.print(f"  sample {escape(sample['key'])}:")
            console.print(f"    before: {escape(sample['before'])}", overflow="ellipsis")
            console.print(f"    after:  {escape(sample['after'])}", overflow="ellipsis")
    target = report.to_revision or "base"
    console.print(f"{'would be' if report.dry_run else 'now'} at revision [bold]{target}[/bold]")


def _print_status(status: MigrationStatus, runner: MigrationRunner) -> None:
    scripts = {s.revision: s for s in runner.scripts.scripts}
    current = status.current or "base"
    table = Table(title=f"migrations of namespace {status.namespace}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    if status.current in scripts:
        current += f"  {scripts[status.current].description}"
    table.add_row("applied revision", escape(current))
    table.add_row("head", escape(status.head or "none"))
    if not status.known:
        state = "[red]AHEAD: the applied revision is unknown to this code[/red]"
    elif status.up_to_date:
        state = "[green]up to date[/green]"
    else:
        state = f"[yellow]behind: {len(status.pending)} pending[/yellow]"
    table.add_row("state", state)
    for rev in status.pending:
        desc = scripts[rev].description if rev in scripts else ""
        table.add_row("pending", escape(f"{rev}  {desc}"))
    if status.interrupted:
        info = status.interrupted
        table.add_row(
            "interrupted",
            escape(
                f"{info.get('direction')} of {info.get('revision')} (started "
                f"{info.get('started_at')} by {info.get('host')} pid {info.get('pid')})"
            ),
        )
        table.add_row("resolve", escape(status.resolution or ""))
    if status.lock_holder:
        holder = status.lock_holder
        table.add_row(
            "locked by",
            escape(f"{holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}"),
        )
    console.print(table)
    if status.applied:
        _print_records(status.applied, title="applied revisions")


def _print_records(records: Sequence[MigrationRecord], *, title: str) -> None:
    table = Table(title=title)
    for col in ("when (UTC)", "action", "from -> to", "took", "docs", "problems", "by"):
        table.add_column(col, no_wrap=col != "by", overflow="fold")
    for r in records:
        table.add_row(
            r.started_at.strftime("%Y-%m-%d %H:%M"),
            r.action,
            escape(f"{r.from_revision or 'base'} -> {r.to_revision or 'base'}"),
            f"{r.duration_s:.2f}s",
            f"{r.documents_changed:,}",
            str(r.problem_count),
            escape(f"{r.host}:{r.pid}"),
        )
    console.print(table)


_DIRECTORY = click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=(
        "Directory of migration scripts (default: FLYWHEEL_STATE_MIGRATIONS, else "
        "[tool.flywheel-state] migrations in pyproject.toml, else the shipped ones)."
    ),
)


_wait_options = option_group(
    click.option(
        "--wait", is_flag=True, help="Wait for another runner holding the lock to finish."
    ),
    click.option(
        "--wait-timeout",
        type=float,
        default=None,
        help="With --wait, give up after this many seconds.",
    ),
)


# ---------------------------------------------------------------------- commands


@migrate.command()
@_DIRECTORY
@common_options
def status(ctx: CliContext, directory: Path | None) -> None:
    """Show the applied revision, the head, pending revisions and who holds the lock."""

    async def _run(
        store: Store,
    ) -> tuple[MigrationStatus, MigrationRunner, MigrationStatus | None, MigrationRunner]:
        runner = _runner(store, directory)
        library = None if runner is store.migrations else await store.migrations.status()
        return await runner.status(), runner, library, store.migrations

    result, runner, library, library_runner = ctx.run_with_store(_run, connect=False)
    if ctx.json:
        data = result.to_dict()
        if library is not None:  # the application's chain, and the library's beside it
            data["library"] = library.to_dict()
        emit_json(data)
    else:
        if library is not None:
            console.print("flywheel-state's own migrations:")
            _print_status(library, library_runner)
            console.print(f"the application's migrations ({runner.scripts.path}):")
        _print_status(result, runner)


def _apply(
    ctx: CliContext,
    direction: Direction,
    target: str,
    *,
    dry_run: bool,
    wait: bool,
    wait_timeout: float | None,
    directory: Path | None,
) -> None:
    """Upgrade or downgrade to ``target`` with progress bars, then print the report."""

    async def _run(store: Store) -> tuple[MigrationReport | None, MigrationReport]:
        runner = _runner(store, directory)
        library = None
        with _progress(ctx) as progress:
            if runner is not store.migrations and direction == "upgrade":
                # The application's scripts build on the library's: bring those to head first.
                library = await store.migrations.upgrade(
                    HEAD, dry_run=dry_run, wait=wait, wait_timeout=wait_timeout, progress=progress
                )
            move = runner.upgrade if direction == "upgrade" else runner.downgrade
            report = await move(
                target, dry_run=dry_run, wait=wait, wait_timeout=wait_timeout, progress=progress
            )
        return library, report

    library, report = ctx.run_with_store(_run, connect=False)
    if ctx.json:
        data = report.to_dict()
        if library is not None:
            data["library"] = library.to_dict()
        emit_json(data)
    else:
        if library is not None and library.steps:
            console.print("flywheel-state's own migrations:")
            _print_report(library)
            console.print("the application's migrations:")
        _print_report(report)


@migrate.command()
@click.argument("target", default="head")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@_wait_options
@_DIRECTORY
@common_options
def up(
    ctx: CliContext,
    target: str,
    dry_run: bool,
    wait: bool,
    wait_timeout: float | None,
    directory: Path | None,
) -> None:
    """Apply pending migrations up to TARGET (default: head), resuming an interrupted one."""
    _apply(
        ctx,
        "upgrade",
        target,
        dry_run=dry_run,
        wait=wait,
        wait_timeout=wait_timeout,
        directory=directory,
    )


@migrate.command()
@click.argument("target")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_wait_options
@_DIRECTORY
@common_options
def down(
    ctx: CliContext,
    target: str,
    dry_run: bool,
    yes: bool,
    wait: bool,
    wait_timeout: float | None,
    directory: Path | None,
) -> None:
    """Undo migrations until TARGET is the applied revision (``base``: undo all)."""

    async def _plan(store: Store) -> list[str]:
        steps = await _runner(store, directory).plan("downgrade", target)
        return [f"{s.revision} ({s.description})" for s in steps]

    if not dry_run and not yes:
        steps = ctx.run_with_store(_plan, connect=False)
        if steps:
            click.confirm(
                f"Undo {', '.join(steps)} in namespace {ctx.settings().namespace!r}?",
                abort=True,
                err=True,
            )
    _apply(
        ctx,
        "downgrade",
        target,
        dry_run=dry_run,
        wait=wait,
        wait_timeout=wait_timeout,
        directory=directory,
    )


@migrate.command()
@common_options
def history(ctx: CliContext) -> None:
    """List every recorded upgrade, downgrade and stamp, oldest first."""
    records = ctx.run_with_store(lambda store: store.migrations.history(), connect=False)
    if ctx.json:
        emit_json([r.to_dict() for r in records])
    elif not records:
        console.print("no migrations recorded in this namespace")
    else:
        _print_records(records, title="migration history")


@migrate.command()
@click.argument("revision")
@_wait_options
@_DIRECTORY
@common_options
def stamp(
    ctx: CliContext,
    revision: str,
    wait: bool,
    wait_timeout: float | None,
    directory: Path | None,
) -> None:
    """Record REVISION (or head / base) as applied without running anything."""
    record = ctx.run_with_store(
        lambda store: _runner(store, directory).stamp(
            revision, wait=wait, wait_timeout=wait_timeout
        ),
        connect=False,
    )
    if ctx.json:
        emit_json(record.to_dict())
    else:
        console.print(
            f"stamped namespace at revision [bold]{escape(record.to_revision or 'base')}[/bold] "
            f"(was {escape(record.from_revision or 'base')})"
        )


@migrate.command()
@click.argument("message")
@_DIRECTORY
@common_options
def new(ctx: CliContext, message: str, directory: Path | None) -> None:
    """Write a new migration script following the head, from the template.

    It is written into the application's migrations directory: --directory, else
    FLYWHEEL_STATE_MIGRATIONS, else `[tool.flywheel-state] migrations = "..."` in your
    pyproject.toml. Without one it refuses (it would write into the installed package).
    """
    given = directory
    directory = directory or configured_directory()
    if directory is None:
        fail(
            "no migrations directory is configured, and a script written into the installed "
            f"flywheel-state package ({default_scripts().path}) would be lost on upgrade. "
            "Configure one: `migrate new ... --directory migrations`, or "
            f"{MIGRATIONS_ENV}=migrations, or in your pyproject.toml:\n"
            '[tool.flywheel-state]\nmigrations = "migrations"',
            kind="UsageError",
            code=2,
        )
    scripts = ScriptDirectory(directory)
    path = scripts.new(message)
    revision = path.name.split("_", 1)[0]
    if ctx.json:
        emit_json({"path": str(path), "revision": revision})
    else:
        console.print(f"wrote [bold]{escape(str(path))}[/bold] (revision {revision})")
        option = f" --directory {given}" if given is not None else ""
        console.print(
            f"edit its upgrade() and downgrade(), then run `flywheel-state migrate up{option}`",
            markup=False,
        )
