"""Rich rendering shared by the admin commands and the demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from rich.table import Table

from flywheel_state.cli._admin import EXPIRED
from flywheel_state.cli._common import format_ttl
from flywheel_state.models import ExecutionResult, Session

__all__ = [
    "counts_table",
    "execution_table",
    "format_duration_ms",
    "page_footer",
    "relative_time",
    "session_table",
    "ttl_cell",
]

_STATUS_STYLE = {
    "active": "green",
    "running": "cyan",
    "idle": "yellow",
    "pending": "blue",
    "completed": "dim",
    "failed": "red",
    "cancelled": "magenta",
}


def relative_time(value: datetime | None, now: datetime | None = None) -> str:
    """``value`` relative to ``now``: ``just now``, ``45s ago``, ``3m ago``, ``2h ago``, ``3d``."""
    if value is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    seconds = (now - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "just now"
    if seconds < 60:
        text = f"{int(seconds)}s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)}m"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)}h"
    else:
        text = f"{int(seconds // 86400)}d"
    return f"in {text}" if future else f"{text} ago"


def ttl_cell(ttl: timedelta | None) -> str:
    """A TTL to the nearest second: ``7d 0h``, ``59m 58s``, ``no expiry`` or ``expired``."""
    if ttl is None:
        return format_ttl(None)
    if ttl <= EXPIRED:
        return "expired"
    return format_ttl(timedelta(seconds=max(1, round(ttl.total_seconds()))))


def format_duration_ms(ms: float | None) -> str:
    """A duration in milliseconds: ``850 ms``, ``12.3 s``."""
    if ms is None:
        return "-"
    if ms < 10_000:
        return f"{ms:,.0f} ms"
    return f"{ms / 1000:,.1f} s"


def _status(value: object) -> str:
    text = str(value)
    style = _STATUS_STYLE.get(text)
    return f"[{style}]{text}[/{style}]" if style else text


def session_table(
    items: Sequence[Session],
    ttls: Sequence[timedelta | None],
    *,
    title: str | None = None,
    now: datetime | None = None,
) -> Table:
    """A table of sessions: id, backend, status, flow, user, turns, last active, TTL left."""
    now = now or datetime.now(timezone.utc)
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("backend")
    table.add_column("status")
    table.add_column("flow")
    table.add_column("user")
    table.add_column("turns", justify="right")
    table.add_column("last active", justify="right")
    table.add_column("TTL left", justify="right")
    for session, ttl in zip(items, ttls, strict=True):
        table.add_row(
            session.id,
            str(session.backend),
            _status(session.status),
            session.current_flow_id or "-",
            session.user_id or "-",
            str(len(session.history)),
            relative_time(session.last_active, now),
            ttl_cell(ttl),
        )
    return table


def execution_table(
    items: Sequence[ExecutionResult],
    ttls: Sequence[timedelta | None],
    *,
    title: str | None = None,
    now: datetime | None = None,
) -> Table:
    """A table of executions: id, flow, backend, status, duration, session, created, TTL left."""
    now = now or datetime.now(timezone.utc)
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("flow")
    table.add_column("backend")
    table.add_column("status")
    table.add_column("duration", justify="right")
    table.add_column("session", no_wrap=True)
    table.add_column("created", justify="right")
    table.add_column("TTL left", justify="right")
    for execution, ttl in zip(items, ttls, strict=True):
        table.add_row(
            execution.id,
            execution.flow_id or "-",
            str(execution.backend) if execution.backend is not None else "-",
            _status(execution.status),
            format_duration_ms(execution.duration_ms),
            execution.session_id or "-",
            relative_time(execution.created_at, now),
            ttl_cell(ttl),
        )
    return table


def counts_table(field: str, counts: Mapping[str, int], *, title: str | None = None) -> Table:
    """A two-column table of ``counts`` (value -> count), largest first, with a total row."""
    table = Table(title=title, title_justify="left", header_style="bold", show_footer=True)
    total = sum(counts.values())
    table.add_column(field, footer="total")
    table.add_column("count", justify="right", footer=str(total))
    for value, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(_status(value) if field == "status" else (value or "(none)"), str(count))
    return table


def page_footer(total: int, offset: int, shown: int, *, noun: str) -> str:
    """``showing 1-50 of 312 sessions`` (or ``no sessions match``)."""
    if total == 0:
        return f"no {noun} match"
    if shown == 0:
        return f"nothing at offset {offset}: {total} {noun} match"
    return f"showing {offset + 1}-{offset + shown} of {total} {noun}"
