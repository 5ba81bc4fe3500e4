"""``flywheel-state executions``: admin commands over the indexed queries."""

from __future__ import annotations

import click

__all__ = ["executions"]


@click.group()
def executions() -> None:
    """Inspect and manage stored executions."""
