"""Rich rendering and output shared by the admin commands and the demo."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Generic, Literal, TypeVar

from rich import box
from rich.columns import Columns
from rich.markup import escape
from rich.table import Table

from flywheel_state.cli._admin import EXPIRED, document_json
from flywheel_state.cli._common import CliContext, console, emit_json, err_console, format_ttl
from flywheel_state.models import ExecutionResult, Session
from flywheel_state.repositories import Page

__all__ = [
    "EXECUTION_COLUMNS",
    "SESSION_COLUMNS",
    "counts_columns",
    "counts_table",
    "execution_table",
    "format_duration_ms",
    "needs_pager",
    "page_footer",
    "print_document",
    "print_page",
    "print_stats",
    "relative_time",
    "session_table",
    "ttl_cell",
]

R = TypeVar("R")
D = TypeVar("D", Session, ExecutionResult)

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
    return f"[{style}]{text}[/{style}]" if style else escape(text)


@dataclass(frozen=True)
class _Column(Generic[R]):
    header: str
    cell: Callable[[R, timedelta | None, datetime], str]
    justify: Literal["left", "right"] = "left"
    #: Only wrapping columns give up width on a narrow terminal (folding their text); the
    #: others always show their values whole.
    wrap: bool = False
    max_width: int | None = None


_SESSION_COLUMNS: dict[str, _Column[Session]] = {
    "id": _Column("id", lambda s, t, n: escape(s.id)),
    "backend": _Column("backend", lambda s, t, n: str(s.backend)),
    "status": _Column("status", lambda s, t, n: _status(s.status)),
    "flow": _Column("flow", lambda s, t, n: escape(s.current_flow_id or "-"), wrap=True),
    "user": _Column("user", lambda s, t, n: escape(s.user_id or "-"), wrap=True),
    "topic": _Column(
        "topic", lambda s, t, n: escape(str(s.context.get("topic", "-"))), max_width=20
    ),
    "turns": _Column("turns", lambda s, t, n: str(len(s.history)), "right"),
    "last_active": _Column("last active", lambda s, t, n: relative_time(s.last_active, n), "right"),
    "ttl": _Column("TTL", lambda s, t, n: ttl_cell(t), "right"),
}

_EXECUTION_COLUMNS: dict[str, _Column[ExecutionResult]] = {
    "id": _Column("id", lambda e, t, n: escape(e.id)),
    "flow": _Column("flow", lambda e, t, n: escape(e.flow_id or "-"), wrap=True),
    "backend": _Column("backend", lambda e, t, n: "-" if e.backend is None else str(e.backend)),
    "status": _Column("status", lambda e, t, n: _status(e.status)),
    "duration": _Column("duration", lambda e, t, n: format_duration_ms(e.duration_ms), "right"),
    "session": _Column("session", lambda e, t, n: escape(e.session_id or "-")),
    "created": _Column("created", lambda e, t, n: relative_time(e.created_at, n), "right"),
    "ttl": _Column("TTL", lambda e, t, n: ttl_cell(t), "right"),
}

SESSION_COLUMNS = ("id", "backend", "status", "flow", "user", "last_active", "ttl")
"""The columns of ``sessions list``; :func:`session_table` also knows ``topic`` and ``turns``."""

EXECUTION_COLUMNS = ("id", "flow", "status", "duration", "session", "created", "ttl")
"""The columns of ``executions list``; :func:`execution_table` also knows ``backend``."""


def _table(
    columns: Mapping[str, _Column[R]],
    chosen: Sequence[str],
    items: Sequence[R],
    ttls: Sequence[timedelta | None],
    title: str | None,
    now: datetime | None,
) -> Table:
    now = now or datetime.now(timezone.utc)
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    picked = [columns[name] for name in chosen]
    for column in picked:
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=not column.wrap,
            overflow="fold" if column.wrap else "ellipsis",
            max_width=column.max_width,
        )
    for item, ttl in zip(items, ttls, strict=True):
        table.add_row(*(column.cell(item, ttl, now) for column in picked))
    return table


def session_table(
    items: Sequence[Session],
    ttls: Sequence[timedelta | None],
    *,
    columns: Sequence[str] = SESSION_COLUMNS,
    title: str | None = None,
    now: datetime | None = None,
) -> Table:
    """A table of sessions (by default id, backend, status, flow, user, last active, TTL).

    Args:
        items: The sessions.
        ttls: Their remaining TTLs, in the same order.
        columns: Names from :data:`SESSION_COLUMNS`, ``topic`` (the context's) or ``turns``
            (history entries).
        title: A title above the table.
        now: The time relative times are computed against (default: now).
    """
    return _table(_SESSION_COLUMNS, columns, items, ttls, title, now)


def execution_table(
    items: Sequence[ExecutionResult],
    ttls: Sequence[timedelta | None],
    *,
    columns: Sequence[str] = EXECUTION_COLUMNS,
    title: str | None = None,
    now: datetime | None = None,
) -> Table:
    """A table of executions (by default id, flow, status, duration, session, created, TTL);
    ``columns`` picks names from :data:`EXECUTION_COLUMNS` or ``backend``."""
    return _table(_EXECUTION_COLUMNS, columns, items, ttls, title, now)


def counts_table(field: str, counts: Mapping[str, int], *, title: str | None = None) -> Table:
    """A two-column table of ``counts`` (value -> count), largest first, with a total row."""
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        show_footer=True,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    total = sum(counts.values())
    table.add_column(field, footer="total")
    table.add_column("count", justify="right", footer=str(total))
    for value, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(
            _status(value) if field == "status" else escape(value or "(none)"), str(count)
        )
    return table


def page_footer(total: int, offset: int, shown: int, *, noun: str) -> str:
    """``showing 1-50 of 312 sessions`` (or ``no sessions match``)."""
    if total == 0:
        return f"no {noun} match"
    if shown == 0:
        return f"nothing at offset {offset}: {total} {noun} match"
    return f"showing {offset + 1}-{offset + shown} of {total} {noun}"


def counts_columns(
    stats: Mapping[str, Mapping[str, int]], fields: Mapping[str, str], *, titled: bool
) -> Columns:
    """:func:`counts_table` side by side, one per stats field.

    Args:
        stats: A repository's ``stats()``.
        fields: Stats field -> column header, e.g. ``{"flow_id": "flow", "status": "status"}``.
        titled: Title each table ``per <header>``.
    """
    tables = [
        counts_table(header, stats.get(field, {}), title=f"per {header}" if titled else None)
        for field, header in fields.items()
    ]
    return Columns(tables, padding=(0, 4))


def print_stats(
    ctx: CliContext,
    stats: Mapping[str, Mapping[str, int]],
    fields: Mapping[str, str],
    *,
    noun: str,
) -> None:
    """A ``stats`` command's output: the counts as JSON, or tables and ``N <noun>``."""
    if ctx.json:
        emit_json(stats)
        return
    console.print(counts_columns(stats, fields, titled=True))
    console.print(f"{stats.get('total', {}).get('all', 0)} {noun}")


def print_page(
    ctx: CliContext,
    page: Page[D],
    ttls: Sequence[timedelta | None],
    table: Callable[[Sequence[D], Sequence[timedelta | None]], Table],
    *,
    noun: str,
) -> None:
    """A ``list`` command's output: the page as JSON, or ``table`` and a footer line."""
    if ctx.json:
        emit_json(
            {
                "items": [document_json(d, t) for d, t in zip(page.items, ttls, strict=True)],
                "total": page.total,
                "offset": page.offset,
                "limit": page.limit,
            }
        )
        return
    if page.items:
        console.print(table(page.items, ttls))
    footer = page_footer(page.total, page.offset, len(page.items), noun=noun)
    (console if console.is_terminal else err_console).print(footer)  # piped: rows only


def print_document(
    ctx: CliContext, item: Session | ExecutionResult, ttl: timedelta | None, heading: str
) -> None:
    """A ``show`` command's output: the record as JSON, or ``heading`` and the document."""
    data = document_json(item, ttl)
    if ctx.json:
        emit_json(data)
        return
    data.pop("ttl_seconds")
    text = json.dumps(data, ensure_ascii=False, indent=2)
    if needs_pager(text):  # a long document on a terminal: through $PAGER (less -R)
        with console.pager(styles=True):
            console.print(heading)
            console.print_json(text)
        return
    console.print(heading)
    console.print_json(text)


def needs_pager(text: str) -> bool:
    """True when ``text`` is longer than the terminal is high and stdout is a terminal."""
    return console.is_terminal and text.count("\n") + 2 > console.size.height
