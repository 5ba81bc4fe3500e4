"""``flywheel-state executions``: admin commands over the indexed queries.

``list``, ``show`` and ``stats``; each takes ``--url``, ``--namespace`` and ``--json``.
"""

from __future__ import annotations

from datetime import datetime

import click
from rich.markup import escape

from flywheel_state.cli._admin import filters, find_with_ttls, get_with_ttl
from flywheel_state.cli._common import CliContext, common_options
from flywheel_state.cli._params import POINT_IN_TIME
from flywheel_state.cli._tables import (
    execution_table,
    format_duration_ms,
    print_document,
    print_page,
    print_stats,
    ttl_cell,
)
from flywheel_state.models import Backend, ExecutionStatus
from flywheel_state.repositories.executions import EXECUTION_QUERIES

__all__ = ["executions"]

_SORTS = EXECUTION_QUERIES.sort_options  # from the one declaration of what is indexed


@click.group()
def executions() -> None:
    """Inspect stored execution results (through the execution index)."""


@executions.command("list")
@click.option("--session", multiple=True, help="Only executions of this session (repeatable).")
@click.option("--flow", multiple=True, help="Only this flow id (repeatable).")
@click.option(
    "--backend",
    multiple=True,
    type=click.Choice([b.value for b in Backend]),
    help="Only this backend (repeatable).",
)
@click.option(
    "--status",
    multiple=True,
    type=click.Choice([s.value for s in ExecutionStatus]),
    help="Only this status (repeatable).",
)
@click.option(
    "--since",
    type=POINT_IN_TIME,
    help="Created at or after this time: 30m, 2h, 7d (ago) or an ISO datetime.",
)
@click.option("--before", type=POINT_IN_TIME, help="Created before this time.")
@click.option(
    "--min-duration-ms", type=click.FloatRange(min=0), help="Only runs at least this long."
)
@click.option(
    "--max-duration-ms", type=click.FloatRange(min=0), help="Only runs at most this long."
)
@click.option(
    "--sort",
    type=click.Choice(_SORTS),
    default="-created_at",
    show_default=True,
    help="Sort field; '-' for descending (-duration_ms: slowest first).",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@common_options
def list_(
    ctx: CliContext,
    session: tuple[str, ...],
    flow: tuple[str, ...],
    backend: tuple[str, ...],
    status: tuple[str, ...],
    since: datetime | None,
    before: datetime | None,
    min_duration_ms: float | None,
    max_duration_ms: float | None,
    sort: str,
    limit: int,
    offset: int,
) -> None:
    """List execution results matching the filters, newest first.

    Repeating an option matches any of its values: --flow csv2507 --flow rag-docs.
    """
    if (
        min_duration_ms is not None
        and max_duration_ms is not None
        and min_duration_ms > max_duration_ms
    ):
        raise click.BadParameter(
            f"--min-duration-ms {min_duration_ms:g} is above --max-duration-ms {max_duration_ms:g}",
            param_hint="'--min-duration-ms'",
        )
    query = filters(
        session_id=session,
        flow_id=flow,
        backend=backend,
        status=status,
        created_after=since,
        created_before=before,
        min_duration_ms=min_duration_ms,
        max_duration_ms=max_duration_ms,
    )

    page, ttls = ctx.run_with_store(
        lambda store: find_with_ttls(
            store.executions, sort=sort, limit=limit, offset=offset, **query
        )
    )
    print_page(ctx, page, ttls, execution_table, noun="executions")


@executions.command()
@click.argument("execution_id", metavar="ID")
@common_options
def show(ctx: CliContext, execution_id: str) -> None:
    """Show one execution result and its remaining TTL."""
    execution, ttl = ctx.run_with_store(lambda store: get_with_ttl(store.executions, execution_id))
    print_document(
        ctx,
        execution,
        ttl,
        f"[bold]execution {escape(execution.id)}[/bold]  {escape(execution.flow_id or '-')}"
        f" / {execution.status}"
        f"  {format_duration_ms(execution.duration_ms)}  TTL left {ttl_cell(ttl)}",
    )


@executions.command()
@common_options
def stats(ctx: CliContext) -> None:
    """Count execution results per flow and per status (one FT.AGGREGATE on the index).

    --json prints the library's stats(): {"flow_id": {...}, "status": {...}, "total": {"all": n}}.
    """
    counts = ctx.run_with_store(lambda store: store.executions.stats())
    print_stats(ctx, counts.as_dict(), {"flow_id": "flow", "status": "status"}, noun="executions")
