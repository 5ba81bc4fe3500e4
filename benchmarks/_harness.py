"""Shared benchmark plumbing: a server, common options, cleanup, timing, and the tables.

Benchmarks run on the embedded Redis Stack, or on REDIS_URL when it is set. They print a table
comparing this library with hand-written redis-py and plain redis-om on the same server, in the
same run, as ratios.
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from flywheel_state import _purge
from flywheel_state.devserver import server_url

__all__ = [
    "PROSE_WORDS",
    "Row",
    "bench_parser",
    "console",
    "drop_namespace",
    "fresh_namespace",
    "print_cells",
    "print_table",
    "random_text",
    "server_url",
]

console = Console(highlight=False)

_PROSE = (
    "the flow routes each question to a backend and keeps the answer with its sources "
    "while the agent refines structural tension between current reality and the vision"
)
PROSE_WORDS: tuple[str, ...] = tuple(_PROSE.split(" "))
"""The vocabulary of the realistic documents' text (contexts, history turns)."""


def bench_parser(
    doc: str | None,
    *,
    quick_help: str = "tiny sizes: a smoke run",
    check_help: str = "exit 1 when a target is missed",
    repeat: int | None = None,
    repeat_help: str = "runs per figure",
) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes.

    ``--quick`` (a smoke run, what CI runs), ``--check`` (exit 1 when a target is missed) and,
    when ``repeat`` is given, ``--repeat`` with that default. The description is the first line
    of ``doc``, the script's docstring.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--check", action="store_true", help=check_help)
    if repeat is not None:
        parser.add_argument("--repeat", type=int, default=repeat, help=repeat_help)
    return parser


def fresh_namespace(prefix: str = "bench") -> str:
    """A namespace unique to this run."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def random_text(rng: random.Random, words: int, vocabulary: Sequence[str] = PROSE_WORDS) -> str:
    """``words`` words drawn from ``vocabulary`` by ``rng``, joined by spaces."""
    return " ".join(rng.choice(vocabulary) for _ in range(words))


async def drop_namespace(client: Redis, namespace: str) -> None:
    """Drop the namespace's RediSearch indexes and unlink its keys (the library's purge)."""
    await _purge.drop_namespace(client, namespace)


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


def print_cells(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print rows of already formatted cells, every column right-aligned."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
