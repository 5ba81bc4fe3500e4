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
from rich.console import Console

from flywheel_state._urls import redact
from flywheel_state.config import Settings
from flywheel_state.errors import FlywheelStateError
from flywheel_state.store import Store

__all__ = [
    "CliContext",
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

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


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
                    await store.connect()
                return await work(store)
            finally:
                await store.close()

        return run_async(_main())


def common_options(func: F) -> F:
    """Add ``--url``, ``--namespace``, ``--json`` and ``--debug`` to a command.

    The wrapped function receives a :class:`CliContext` as its first argument ``ctx``.
    Library errors are printed as one plain line (a traceback only with ``--debug``) and exit 1.
    """

    @click.option("--url", envvar=None, default=None, help="Redis URL (default: REDIS_URL).")
    @click.option("--namespace", default=None, help="Key namespace (default: REDIS_NAMESPACE).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
    @functools.wraps(func)
    def wrapper(
        *args: Any, url: str | None, namespace: str | None, as_json: bool, debug: bool, **kw: Any
    ) -> Any:
        ctx = CliContext(url=url, namespace=namespace, json=as_json, debug=debug)
        with reporting_errors(debug=debug):
            return func(ctx, *args, **kw)

    return wrapper  # type: ignore[return-value]


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` on stderr (secrets redacted) and exit 1."""
    err_console.print(f"error: {redact(message)}", markup=False)
    sys.exit(1)


@contextmanager
def reporting_errors(*, debug: bool) -> Iterator[None]:
    """Turn a library error into one plain line and exit 1 (with ``debug``, let it propagate)."""
    try:
        yield
    except FlywheelStateError as exc:
        if debug:
            raise
        fail(str(exc))


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
