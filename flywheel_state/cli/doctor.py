"""``flywheel-state doctor``: check the connection, modules, indexes and key counts."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from flywheel_state._redis import as_str
from flywheel_state.cli._common import CliContext, common_options, console, emit_json
from flywheel_state.errors import FlywheelStateError
from flywheel_state.indexes import alias_name, index_info
from flywheel_state.store import Store

__all__ = ["doctor"]

_KINDS = ("session", "execution")


async def diagnose(store: Store) -> dict[str, Any]:
    """Gather what ``doctor`` reports; ``problems`` lists what is wrong (empty when healthy).

    Every problem is redacted with the store's secrets (passwords never show).
    """
    report = await _diagnose(store)
    report["problems"] = [store.settings.redact(p) for p in report["problems"]]
    return report


async def _diagnose(store: Store) -> dict[str, Any]:
    report: dict[str, Any] = {
        "url": store.settings.safe_url,
        "namespace": store.namespace,
        "problems": [],
    }
    problems: list[str] = report["problems"]
    client = store.client
    try:
        await client.ping()
    except Exception as exc:
        problems.append(f"cannot reach Redis at {store.settings.safe_url}: {exc}")
        report["reachable"] = False
        return report
    report["reachable"] = True
    try:
        report.update(await store.server_info())
        missing = await store.missing_commands()
        report["json"] = not any(c.startswith("JSON.") for c in missing)
        report["search"] = not any(c.startswith("FT.") for c in missing)
        if missing:
            problems.append(
                f"missing commands {', '.join(missing)}: use Redis 8 or Redis Stack 7.2+"
            )
            return report
        if store.is_cluster:
            report["shards"] = await store.shards()
            report["distributed_search"] = await store.has_distributed_search()
            if not report["distributed_search"]:
                problems.append(
                    "this cluster has no distributed query engine (each shard's search module "
                    "indexes its own keys only): queries and migrations are unavailable; the "
                    "key-value API works with Store(..., search=False)"
                )
                return report
        indexes: dict[str, Any] = {}
        keys: dict[str, int] = {}
        for kind in _KINDS:
            info = await index_info(client, alias_name(store.namespace, kind))
            if info is None:
                indexes[kind] = None
                problems.append(
                    f"no {kind} index ({alias_name(store.namespace, kind)}): "
                    "run `flywheel-state migrate up`"
                )
            else:
                indexes[kind] = {
                    "index": as_str(info["index_name"]),
                    "num_docs": int(as_str(info.get("num_docs", b"0"))),
                    "indexing": bool(int(as_str(info.get("indexing", b"0")))),
                }
            count = 0
            async for _ in client.scan_iter(match=f"{store.namespace}:{kind}:*", count=1000):
                count += 1
            keys[kind] = count
        report["indexes"] = indexes
        report["keys"] = keys
        status = await store.migrations.status()
        report["migrations"] = {
            "current": status.current,
            "head": status.head,
            "pending": list(status.pending),
            "up_to_date": status.up_to_date,
        }
        if not status.known:
            problems.append(
                f"applied migration revision {status.current} is unknown to this code (head "
                f"{status.head}): the data was migrated by a newer flywheel-state"
            )
        elif status.interrupted is not None:
            problems.append(
                f"a {status.interrupted.get('direction')} of migration "
                f"{status.interrupted.get('revision')} was interrupted: run "
                "`flywheel-state migrate up` to resume it"
            )
        elif status.pending:
            problems.append(
                f"schema behind head: at revision {status.current or 'base'}, head is "
                f"{status.head} ({len(status.pending)} pending): run `flywheel-state migrate up`"
            )
    except FlywheelStateError as exc:
        problems.append(str(exc))
    return report


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
