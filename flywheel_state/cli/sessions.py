"""``flywheel-state sessions``: admin commands over the indexed queries."""

from __future__ import annotations

import click

__all__ = ["sessions"]


@click.group()
def sessions() -> None:
    """Inspect and manage stored sessions."""
