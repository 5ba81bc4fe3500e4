"""Shared plumbing of the CLI: common options, building a Store, printing, error handling."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import click
from rich.columns import Columns
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flywheel_state._urls import redact
from flywheel_state.config import Settings
from flywheel_state.errors import FlywheelStateError, NotFoundError, SchemaOutOfDateError
from flywheel_state.store import Store

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliContext",
    "FlywheelGroup",
    "common_options",
    "console",
    "emit_json",
    "fail",
    "format_ttl",
    "option_group",
    "reporting_errors",
    "run_async",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_OK = 0
"""The command did what was asked."""
EXIT_ERROR = 1
"""A library or server error (unreachable, refused credentials, out-of-date schema, ...)."""
EXIT_USAGE = 2
"""Bad options or arguments (click's usage errors, ``--namespace ''``)."""
EXIT_NOT_FOUND = 3
"""What was named does not exist (a session or execution id, a stopped server)."""


def _plain_cell(cell: Any) -> str:
    """A table cell as one plain line: markup removed; tab, newline, backslash escaped."""
    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell).plain
    else:
        text = str(cell)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def table_rows(table: Table) -> list[list[str]]:
    """The header and the rows of a rich table as plain, whole values."""
    columns = table.columns
    rows = [[_plain_cell(column.header) for column in columns]] if table.show_header else []
    cells = [list(column.cells) for column in columns]
    for index in range(table.row_count):
        rows.append([_plain_cell(column[index]) for column in cells])
    return rows


class _PipeAwareConsole(Console):
    """A console that, when stdout is not a terminal, prints tables as tab-separated rows.

    Piped output never splits or cuts a value: each row is one line, columns are separated by a
    tab, the first line is the header, and a tab, newline or backslash inside a value is written
    as ``\\t``, ``\\n`` or ``\\\\``. Titles go to stderr so the rows stay parseable.
    """

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.is_terminal or not any(isinstance(o, (Table, Columns)) for o in objects):
            super().print(*objects, **kwargs)
            return
        for obj in objects:
            tables = (
                [r for r in obj.renderables if isinstance(r, Table)]
                if isinstance(obj, Columns)
                else [obj]
                if isinstance(obj, Table)
                else []
            )
            if not tables:
                super().print(obj, **kwargs)
                continue
            for table in tables:
                if table.title:
                    err_console.print(table.title)
                for row in table_rows(table):
                    click.echo("\t".join(row))


console = _PipeAwareConsole(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_json_errors = False
"""Whether the running command was given ``--json`` (errors are then JSON on stdout)."""


@dataclass
class CliContext:
    """What the common options resolve to."""

    url: str | None
    namespace: str | None
    json: bool
    debug: bool

    def settings(self) -> Settings:
        """Settings from the environment, with --url / --namespace applied on top."""
        overrides: dict[str, Any] = {}
        if self.url:
            overrides["url"] = self.url
        if self.namespace:
            overrides["namespace"] = self.namespace
        return Settings.from_env(**overrides)

    def store(self, *, auto_migrate: bool = False) -> Store:
        """A Store for these options (not yet connected)."""
        return Store(self.settings(), auto_migrate=auto_migrate)

    def run_with_store(self, work: Callable[[Store], Awaitable[T]], *, connect: bool = True) -> T:
        """Run ``work(store)`` on a Store of these options and close the store afterwards.

        Args:
            work: The coroutine function to run.
            connect: Connect first, which checks the modules and the schema revision. ``migrate``
                and ``doctor`` pass False: they must work where a connect would be refused.

        Returns:
            What ``work`` returns.
        """

        async def _main() -> T:
            store = self.store()
            try:
                if connect:
                    try:
                        await store.connect()
                    except SchemaOutOfDateError:
                        report = await store.health()
                        if report.unused_namespace:  # a mistyped --namespace, not a migration
                            fail(report.problems[-1], kind="UnusedNamespaceError")
                        raise
                return await work(store)
            finally:
                await store.close()

        return run_async(_main())


def common_options(func: F) -> F:
    """Add ``--url``, ``--namespace``, ``--json`` and ``--debug`` to a command.

    The wrapped function receives a :class:`CliContext` as its first argument ``ctx``.
    Library errors are printed as one plain line (a traceback only with ``--debug``) and exit 1.
    """

    @click.option("--url", cls=_EffectiveDefault, setting="safe_url", help="Redis URL")
    @click.option(
        "--namespace",
        cls=_EffectiveDefault,
        setting="namespace",
        callback=_check_namespace,
        help="Key namespace",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
    @functools.wraps(func)
    def wrapper(
        *args: Any, url: str | None, namespace: str | None, as_json: bool, debug: bool, **kw: Any
    ) -> Any:
        global _json_errors
        _json_errors = as_json
        ctx = CliContext(url=url, namespace=namespace, json=as_json, debug=debug)
        with reporting_errors(debug=debug, as_json=as_json):
            return func(ctx, *args, **kw)

    return wrapper  # type: ignore[return-value]


def _effective(attribute: str) -> str:
    """The value a setting has now (from the environment), for help texts."""
    try:
        return str(getattr(Settings.from_env(), attribute))
    except FlywheelStateError:
        return "invalid environment"


class _EffectiveDefault(click.Option):
    """An option whose help shows the value the environment gives it when it is not passed."""

    def __init__(self, *args: Any, setting: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting
        self.base_help = self.help or ""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = f"{self.base_help} (default now: {_effective(self.setting)})."
        return super().get_help_record(ctx)


def _check_namespace(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    return value


def emit_error(
    message: str, *, kind: str = "Error", code: int = EXIT_ERROR, as_json: bool | None = None
) -> None:
    """Report an error: ``error: <message>`` on stderr, or with ``--json`` one JSON object
    ``{"error": {"type", "message", "exit_code"}}`` on stdout. Secrets are redacted."""
    text = redact(message)
    if _json_errors if as_json is None else as_json:
        click.echo(json.dumps({"error": {"type": kind, "message": text, "exit_code": code}}))
    else:
        err_console.print(f"error: {text}", markup=False)


def fail(
    message: str, *, kind: str = "Error", code: int = EXIT_ERROR, as_json: bool | None = None
) -> NoReturn:
    """Report an error (see :func:`emit_error`) and exit with ``code``."""
    emit_error(message, kind=kind, code=code, as_json=as_json)
    sys.exit(code)


@contextmanager
def reporting_errors(*, debug: bool, as_json: bool | None = None) -> Iterator[None]:
    """Turn a library error into one error report and exit 1, or 3 for NotFoundError (with
    ``debug``, let it propagate)."""
    try:
        yield
    except FlywheelStateError as exc:
        if debug:
            raise
        code = EXIT_NOT_FOUND if isinstance(exc, NotFoundError) else EXIT_ERROR
        fail(str(exc), kind=type(exc).__name__, code=code, as_json=as_json)


class FlywheelGroup(click.Group):
    """The top-level group: one ``error: `` prefix for click's errors too, JSON errors with
    ``--json``, exit codes 0/1/2/3, and a closed pipe (``| head``) ends quietly."""

    def main(self, args: Any = None, *pargs: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv
        kwargs["standalone_mode"] = False
        try:
            result = super().main(argv, *pargs, **kwargs)
        except click.UsageError as exc:
            if not as_json and exc.ctx is not None:
                click.echo(exc.ctx.get_usage(), err=True)
            fail(exc.format_message(), kind="UsageError", code=EXIT_USAGE, as_json=as_json)
        except click.ClickException as exc:
            fail(exc.format_message(), kind="Error", code=exc.exit_code or 1, as_json=as_json)
        except (click.Abort, KeyboardInterrupt):
            fail("aborted", kind="Aborted", code=EXIT_ERROR, as_json=as_json)
        except BrokenPipeError:
            _quiet_broken_pipe()
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()
        sys.exit(result if isinstance(result, int) else EXIT_OK)


def _quiet_broken_pipe() -> NoReturn:
    """The reader went away (``| head``): drop what is left and exit without a traceback."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_OK)


def option_group(*options: Callable[[Any], Any]) -> Callable[[F], F]:
    """Several click options as one decorator; ``--help`` lists them in the order given."""

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def run_async(coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
    """Run a coroutine from a synchronous click command."""

    async def _wrap() -> T:
        return await coro

    return asyncio.run(_wrap())


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (datetimes as ISO strings, timedeltas as seconds)."""
    click.echo(json.dumps(data, default=_json_default, ensure_ascii=False, indent=2))


def format_ttl(ttl: timedelta | None) -> str:
    """A TTL as ``6d 23h``, ``59m 58s`` or ``no expiry``."""
    if ttl is None:
        return "no expiry"
    seconds = int(ttl.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
