"""``flywheel-state sessions``: admin commands over the indexed queries.

``list``, ``show``, ``delete``, ``touch`` and ``stats``; each takes ``--url``, ``--namespace`` and
``--json``. Deleting by query is explicit: ``sessions delete --where --status failed ...`` needs
``--where`` and at least one filter, so no command line deletes every session.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import click
from rich.markup import escape

from flywheel_state.cli._admin import filters, find_with_ttls, get_with_ttl, ttl_seconds
from flywheel_state.cli._common import (
    EXIT_NOT_FOUND,
    CliContext,
    common_options,
    console,
    emit_json,
    option_group,
)
from flywheel_state.cli._params import DURATION, POINT_IN_TIME
from flywheel_state.cli._tables import (
    print_document,
    print_page,
    print_stats,
    session_table,
    ttl_cell,
)
from flywheel_state.models import Backend, SessionStatus
from flywheel_state.repositories import DEFAULT, TTLArg
from flywheel_state.repositories.sessions import SESSION_QUERIES
from flywheel_state.store import Store

__all__ = ["sessions"]

_SORTS = SESSION_QUERIES.sort_options  # from the one declaration of what is indexed
_PREVIEW = 5


_filter_options = option_group(
    click.option(
        "--backend",
        multiple=True,
        type=click.Choice([b.value for b in Backend]),
        help="Only this backend (repeatable: any of them).",
    ),
    click.option(
        "--status",
        multiple=True,
        type=click.Choice([s.value for s in SessionStatus]),
        help="Only this status (repeatable).",
    ),
    click.option("--flow", multiple=True, help="Only this current flow id (repeatable)."),
    click.option("--user", multiple=True, help="Only this user id (repeatable)."),
    click.option(
        "--active-since",
        type=POINT_IN_TIME,
        help="Last active at or after this time: 30m, 2h, 7d (ago) or an ISO datetime.",
    ),
    click.option(
        "--active-before",
        type=POINT_IN_TIME,
        help="Last active before this time (e.g. 7d: idle for over a week).",
    ),
    click.option("--created-since", type=POINT_IN_TIME, help="Created at or after this time."),
    click.option("--created-before", type=POINT_IN_TIME, help="Created before this time."),
)
"""The session filters shared by ``list`` and ``delete --where``."""


def _query_filters(opts: dict[str, Any]) -> dict[str, Any]:
    return filters(
        backend=opts["backend"],
        status=opts["status"],
        flow_id=opts["flow"],
        user_id=opts["user"],
        active_after=opts["active_since"],
        active_before=opts["active_before"],
        created_after=opts["created_since"],
        created_before=opts["created_before"],
    )


@click.group()
def sessions() -> None:
    """Inspect and manage stored sessions (through the session index)."""


# ---------------------------------------------------------------------------------- list


@sessions.command("list")
@_filter_options
@click.option(
    "--sort",
    type=click.Choice(_SORTS),
    default="-last_active",
    show_default=True,
    help="Sort field; '-' for descending.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@common_options
def list_(ctx: CliContext, sort: str, limit: int, offset: int, **opts: Any) -> None:
    """List sessions matching the filters, most recently active first.

    Repeating an option matches any of its values: --status active --status idle. Without
    filters every session is listed, a page at a time (--limit / --offset).
    """
    query = _query_filters(opts)
    page, ttls = ctx.run_with_store(
        lambda store: find_with_ttls(store.sessions, sort=sort, limit=limit, offset=offset, **query)
    )
    print_page(ctx, page, ttls, session_table, noun="sessions")


# ---------------------------------------------------------------------------------- show


@sessions.command()
@click.argument("session_id", metavar="ID")
@common_options
def show(ctx: CliContext, session_id: str) -> None:
    """Show one session's document and its remaining TTL."""
    session, ttl = ctx.run_with_store(lambda store: get_with_ttl(store.sessions, session_id))
    print_document(
        ctx,
        session,
        ttl,
        f"[bold]session {escape(session.id)}[/bold]  {session.backend} / {session.status}  "
        f"version {session.version}  TTL left {ttl_cell(ttl)}",
    )


# ---------------------------------------------------------------------------------- touch


@sessions.command()
@click.argument("session_id", metavar="ID")
@click.option("--ttl", type=DURATION, default=None, help="Restart with this TTL (default: 7d).")
@common_options
def touch(ctx: CliContext, session_id: str, ttl: timedelta | None) -> None:
    """Mark a session active now and restart its TTL."""
    ttl_arg: TTLArg = DEFAULT if ttl is None else ttl

    async def _run(store: Store) -> tuple[int, timedelta | None]:
        version = await store.sessions.touch(session_id, ttl=ttl_arg)
        ttls = await store.sessions.ttls([session_id])
        return version, ttls[0]

    version, left = ctx.run_with_store(_run)
    if ctx.json:
        emit_json({"id": session_id, "version": version, "ttl_seconds": ttl_seconds(left)})
        return
    console.print(
        f"touched {session_id}: last active now, TTL {ttl_cell(left)} (version {version})",
        markup=False,
    )


# ---------------------------------------------------------------------------------- delete


@sessions.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option(
    "--where",
    is_flag=True,
    help="Delete the sessions matching the filter options that follow (at least one).",
)
@_filter_options
@click.option("--yes", "-y", is_flag=True, help="Don't ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@common_options
def delete(
    ctx: CliContext, ids: tuple[str, ...], where: bool, yes: bool, dry_run: bool, **opts: Any
) -> None:
    """Delete sessions by id, or by query with --where and filters.

    \b
      flywheel-state sessions delete session_1 session_2
      flywheel-state sessions delete --where --status failed --active-before 7d

    Asks "Delete N sessions? [y/N]" unless --yes; without an answer (no terminal, no input) it
    refuses and deletes nothing. With --where, the matching ids are collected first and exactly
    those are deleted after the confirmation. Nothing deletes every session without a filter:
    --where needs at least one, and filters without --where are refused.
    """
    query = _query_filters(opts)
    if ids and (where or query):
        raise click.UsageError("give session ids, or --where with filters, not both")
    if not ids and not where:
        if query:
            raise click.UsageError(
                "filters select sessions to delete only after --where, e.g. "
                "`sessions delete --where --status failed`"
            )
        raise click.UsageError("give session ids to delete, or --where with filters")
    if where and not query:
        raise click.UsageError(
            "--where needs at least one filter (--backend, --status, --flow, --user, "
            "--active-since, --active-before, --created-since, --created-before)"
        )

    async def _resolve(store: Store) -> tuple[list[str], list[str]]:
        if where:
            return await store.sessions.ids(**query), []
        unique = list(dict.fromkeys(ids))
        flags = await store.sessions.exists_many(unique)
        existing = [i for i, flag in zip(unique, flags, strict=True) if flag]
        missing = [i for i, flag in zip(unique, flags, strict=True) if not flag]
        return existing, missing

    targets, missing = ctx.run_with_store(_resolve)
    if missing and not ctx.json:
        console.print(f"not found: {', '.join(missing)}", markup=False)
    if not targets:
        if ctx.json:
            emit_json({"deleted": 0, "ids": [], "not_found": missing})
        else:
            console.print("no sessions match; nothing deleted")
        if missing:
            sys.exit(EXIT_NOT_FOUND)
        return

    noun = "session" if len(targets) == 1 else "sessions"
    if not ctx.json or dry_run:
        preview = ", ".join(targets[:_PREVIEW])
        more = f" and {len(targets) - _PREVIEW} more" if len(targets) > _PREVIEW else ""
        click.echo(f"{len(targets)} {noun}: {preview}{more}", err=ctx.json)
    if dry_run:
        if ctx.json:
            emit_json({"deleted": 0, "would_delete": targets, "not_found": missing})
        return
    if not yes:
        _confirm_delete(f"Delete {len(targets)} {noun}?")
    deleted = ctx.run_with_store(lambda store: store.sessions.delete_many(targets))
    if ctx.json:
        emit_json({"deleted": deleted, "ids": targets, "not_found": missing})
    else:
        console.print(f"deleted {deleted} {'session' if deleted == 1 else 'sessions'}")
    if missing:
        sys.exit(EXIT_NOT_FOUND)  # the others were deleted; a script still learns of the miss


def _confirm_delete(question: str) -> None:
    """Ask ``question``; exit 1 unless the answer is yes (no answer at all is a no)."""
    try:
        confirmed = click.confirm(question, default=False, err=True)
    except click.Abort:
        click.echo("\nrefusing to delete without confirmation (no input): pass --yes", err=True)
        sys.exit(1)
    if not confirmed:
        click.echo("nothing deleted", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------- stats


@sessions.command()
@common_options
def stats(ctx: CliContext) -> None:
    """Count sessions per backend and per status (one FT.AGGREGATE on the index).

    --json prints the library's stats(): {"backend": {...}, "status": {...}, "total": {"all": n}}.
    """
    counts = ctx.run_with_store(lambda store: store.sessions.stats())
    print_stats(ctx, counts.as_dict(), {"backend": "backend", "status": "status"}, noun="sessions")
