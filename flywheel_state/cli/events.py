"""``flywheel-state events``: follow the change feed (``{namespace}:events``).

``tail`` prints events as they are written (one line each, or JSON lines with ``--json``).
The stream exists when writers use ``events=True`` (``REDIS_EVENTS=1``); see the README.
"""

from __future__ import annotations

import contextlib
import json

import click
from rich.markup import escape

from flywheel_state.cli._common import CliContext, common_options, console
from flywheel_state.events import EVENT_KINDS, Event
from flywheel_state.store import Store

__all__ = ["events"]


@click.group()
def events() -> None:
    """Follow the change events of the namespace."""


def _line(event: Event) -> str:
    version = "-" if event.version is None else f"v{event.version}"
    fields = ",".join(event.fields)
    return (
        f"{event.time.isoformat(timespec='milliseconds')}  {event.kind:<9}  "
        f"{escape(event.id)}  {event.op:<16}  {version:<6}  {escape(fields)}".rstrip()
    )


@events.command("tail")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(EVENT_KINDS),
    help="Only events of this record kind (repeatable).",
)
@click.option("--from-start", is_flag=True, help="First print the events the stream still holds.")
@click.option("--after", default=None, help="Start after this stream id instead of now.")
@click.option(
    "--count",
    "limit",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many events (default: run until interrupted).",
)
@common_options
def tail(
    ctx: CliContext,
    kinds: tuple[str, ...],
    from_start: bool,
    after: str | None,
    limit: int | None,
) -> None:
    """Print change events as they are written (Ctrl-C stops)."""
    start = after if after is not None else ("0" if from_start else "$")

    async def work(store: Store) -> None:
        feed = store.events
        stream = feed.watch(start, kinds=kinds or None)  # bad --after fails here, typed
        await feed.length()  # an unreachable server fails now, not in the retry loop
        seen = 0
        async for event in stream:
            if ctx.json:
                click.echo(json.dumps(event.to_dict(), ensure_ascii=False))
            else:
                console.print(_line(event))
            seen += 1
            if limit is not None and seen >= limit:
                return

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a tail ends
        ctx.run_with_store(work, connect=False)
