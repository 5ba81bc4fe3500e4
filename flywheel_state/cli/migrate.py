"""``flywheel-state migrate``: run and inspect migrations."""

from __future__ import annotations

import click

__all__ = ["migrate"]


@click.group()
def migrate() -> None:
    """Schema and data migrations."""
