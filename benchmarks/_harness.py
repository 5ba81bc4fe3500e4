"""Shared benchmark plumbing: a server to run against, timing, and the comparison table.

Benchmarks run on the embedded Redis Stack, or on REDIS_URL when it is set. They print a table
comparing this library with hand-written redis-py and plain redis-om on the same server, in the
same run, as ratios.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


@contextmanager
def server_url() -> Iterator[str]:
    """REDIS_URL when set, else a temporary embedded server for the duration of the block."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from flywheel_state.server import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


def fresh_namespace(prefix: str = "bench") -> str:
    """A namespace unique to this run."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def timed(fn: Callable[[], Awaitable[object]], *, repeat: int = 1) -> float:
    """Best wall-clock seconds of ``repeat`` runs of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class Row:
    """One line of a comparison table."""

    name: str
    values: dict[str, float]


def print_table(
    title: str,
    columns: list[str],
    rows: list[Row],
    *,
    unit: str,
    ratio: tuple[str, str] | None = None,
    ratio_label: str = "ratio",
) -> None:
    """Print rows with one column per implementation and, optionally, a ratio column."""
    table = Table(title=title)
    table.add_column("operation")
    for col in columns:
        table.add_column(f"{col} ({unit})", justify="right")
    if ratio:
        table.add_column(ratio_label, justify="right")
    for row in rows:
        cells = [row.name] + [f"{row.values[c]:,.1f}" if c in row.values else "-" for c in columns]
        if ratio:
            a, b = ratio
            if a in row.values and b in row.values and row.values[b]:
                cells.append(f"{row.values[a] / row.values[b]:.2f}")
            else:
                cells.append("-")
        table.add_row(*cells)
    console.print(table)
