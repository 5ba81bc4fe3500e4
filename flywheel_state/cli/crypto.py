"""``flywheel-state crypto``: encryption at rest of a namespace (thin wrappers over the library).

``status`` counts values per key id; ``encrypt``, ``rekey`` and ``decrypt`` call
:mod:`flywheel_state.migrations.encryption` with progress bars. The key ring comes from
FLYWHEEL_ENCRYPTION_KEYS / FLYWHEEL_ENCRYPTION_ACTIVE_KEY; keys are never printed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import click
from rich.markup import escape
from rich.table import Table

from flywheel_state.cli._common import CliContext, common_options, console, emit_json
from flywheel_state.cli.migrate import _progress
from flywheel_state.migrations.encryption import decrypt, encrypt, encryption_status, rekey
from flywheel_state.migrations.report import StepReport
from flywheel_state.store import Store

__all__ = ["crypto"]

_SHOWN_PROBLEMS = 10


@click.group()
def crypto() -> None:
    """Encryption at rest: status, encrypt, rekey, decrypt (keys from FLYWHEEL_ENCRYPTION_KEYS)."""


@crypto.command()
@common_options
def status(ctx: CliContext) -> None:
    """Count the values of encrypted fields per key id (and in clear), per kind."""

    async def _run(store: Store) -> dict[str, dict[str, int]]:
        return await encryption_status(store)

    counts = ctx.run_with_store(_run, connect=False)
    settings = ctx.settings()
    if ctx.json:
        emit_json(
            {
                "namespace": settings.namespace,
                "active_key": None if settings.cipher is None else settings.cipher.active,
                "kinds": counts,
            }
        )
        return
    table = Table(title=f"encrypted fields of namespace {settings.namespace}")
    table.add_column("kind")
    table.add_column("stored as")
    table.add_column("values", justify="right")
    for kind, per_key in counts.items():
        if not per_key:
            table.add_row(kind, "-", "0")
        for kid, n in sorted(per_key.items()):
            table.add_row(kind, "in clear" if kid == "clear" else f"key {escape(kid)}", f"{n:,}")
    console.print(table)
    if settings.cipher is None:
        console.print(
            "no key ring configured (FLYWHEEL_ENCRYPTION_KEYS): values are written in clear"
        )
    else:
        console.print(f"active key: {escape(settings.cipher.active)}")


def _operation(
    ctx: CliContext,
    name: str,
    run: Callable[..., Awaitable[StepReport]],
    *,
    dry_run: bool,
    yes: bool,
    wait: bool,
    batch_size: int | None,
    question: str,
) -> None:
    if not dry_run and not yes:
        click.confirm(
            f"{question} in namespace {ctx.settings().namespace!r}?", abort=True, err=True
        )

    async def _run(store: Store) -> StepReport:
        with _progress(ctx) as progress:
            return await run(
                store, dry_run=dry_run, wait=wait, progress=progress, batch_size=batch_size
            )

    report = ctx.run_with_store(_run, connect=False)
    if ctx.json:
        emit_json(report.to_dict())
        return
    verb = "would change" if dry_run else "changed"
    resumed = " (resumed an interrupted run)" if report.resumed else ""
    timing = "" if dry_run else f" in {report.duration_s:.2f}s"
    console.print(
        f"crypto {name}{resumed}: {verb} {report.documents_changed:,} documents of "
        f"{report.documents_scanned:,} examined{timing}"
    )
    if report.problem_count:
        console.print(f"[yellow]{report.problem_count} document(s) left as they were:[/yellow]")
        for problem in report.problems[:_SHOWN_PROBLEMS]:
            console.print(f"  {escape(problem.message)}")
        if report.problem_count > _SHOWN_PROBLEMS:
            console.print(f"  ... and {report.problem_count - _SHOWN_PROBLEMS} more")


def _options(func: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        (
            click.option("--dry-run", is_flag=True, help="Count what would change; write nothing."),
            click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
            click.option("--wait", is_flag=True, help="Wait for a runner holding the lock."),
            click.option(
                "--batch-size", type=click.IntRange(1), default=None, help="Keys per batch."
            ),
        )
    ):
        func = option(func)
    return func


@crypto.command("encrypt")
@_options
@common_options
def encrypt_command(
    ctx: CliContext, dry_run: bool, yes: bool, wait: bool, batch_size: int | None
) -> None:
    """Encrypt every content field stored in clear, with the active key (resumable)."""
    _operation(
        ctx,
        "encrypt",
        encrypt,
        dry_run=dry_run,
        yes=yes,
        wait=wait,
        batch_size=batch_size,
        question="Encrypt every field stored in clear",
    )


@crypto.command("rekey")
@_options
@common_options
def rekey_command(
    ctx: CliContext, dry_run: bool, yes: bool, wait: bool, batch_size: int | None
) -> None:
    """Re-encrypt every value under the active key (resumable); then old keys can go."""
    _operation(
        ctx,
        "rekey",
        rekey,
        dry_run=dry_run,
        yes=yes,
        wait=wait,
        batch_size=batch_size,
        question="Re-encrypt every value under the active key",
    )


@crypto.command("decrypt")
@_options
@common_options
def decrypt_command(
    ctx: CliContext, dry_run: bool, yes: bool, wait: bool, batch_size: int | None
) -> None:
    """Store every encrypted field in clear again (for leaving encryption; resumable)."""
    _operation(
        ctx,
        "decrypt",
        decrypt,
        dry_run=dry_run,
        yes=yes,
        wait=wait,
        batch_size=batch_size,
        question="Decrypt every field and store it IN CLEAR",
    )
