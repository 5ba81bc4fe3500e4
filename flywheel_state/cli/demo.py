"""``flywheel-state demo``: the guided tour on the embedded Redis Stack."""

from __future__ import annotations

import click

__all__ = ["demo"]


@click.command()
def demo() -> None:
    """Run the demo."""
    raise click.ClickException("the demo is not written yet")
