"""``flywheel-state doctor``: check the connection, modules, indexes and key counts."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from flywheel_state.cli._common import CliContext, common_options, console, emit_json
from flywheel_state.store import Store

__all__ = ["doctor"]


async def diagnose(store: Store) -> dict[str, Any]:
    """What ``doctor`` reports, as JSON-able data (:meth:`Store.health`)."""
    return (await store.health()).to_dict()


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title="flywheel-state doctor", show_header=False)
    table.add_column("check")
    table.add_column("result")
    table.add_row("server", report["url"])
    table.add_row("namespace", report["namespace"])
    if report.get("reachable"):
        table.add_row("redis version", str(report.get("redis_version", "?")))
        table.add_row("modules", ", ".join(report.get("modules", [])) or "(none listed)")
        table.add_row("JSON", "available" if report.get("json") else "MISSING")
        table.add_row("search", "available" if report.get("search") else "MISSING")
        for kind, info in (report.get("indexes") or {}).items():
            if info is None:
                shown = "absent"
            else:
                indexing = ", indexing" if info["indexing"] else ""
                shown = f"{info['index']} ({info['num_docs']} docs{indexing})"
            table.add_row(f"{kind} index", shown)
        for kind, count in (report.get("keys") or {}).items():
            table.add_row(f"{kind} keys", str(count))
        for shard in report.get("shards") or []:
            table.add_row("shard", f"{shard['address']} ({shard['keys']} keys)")
        if "distributed_search" in report:
            shown = "yes" if report["distributed_search"] else "NO (per-shard modules)"
            table.add_row("distributed search", shown)
        migrations = report.get("migrations")
        if migrations:
            shown = f"{migrations['current'] or 'base'} (head {migrations['head']})"
            if migrations["pending"]:
                shown += f": {len(migrations['pending'])} pending"
            table.add_row("migration revision", shown)
    console.print(table)
    if report["problems"]:
        for problem in report["problems"]:
            console.print(f"[red]problem:[/red] {problem}")
    else:
        console.print("[green]all checks passed[/green]")


@click.command()
@common_options
def doctor(ctx: CliContext) -> None:
    """Check the server: version, JSON/search modules, namespace, indexes, key counts.

    Exits non-zero, with the reason, when something is wrong.
    """
    report = ctx.run_with_store(diagnose, connect=False)
    if ctx.json:
        emit_json(report)
    else:
        _print_report(report)
    if report["problems"]:
        sys.exit(1)
