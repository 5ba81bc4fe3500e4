"""``flywheel-state demo``: the guided tour.

Without ``REDIS_URL`` (or ``--url``) it starts the embedded Redis Stack in a temporary directory;
with one it uses that server. Either way it works in a fresh namespace (``demo_<random>``), writes
a few hundred realistic sessions and execution results, runs the indexed queries an admin would
run, shows TTLs counting down, a session expiring, a partial update and a touch, and then removes
everything it created (indexes and keys) or stops the server it started.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING

import click
from rich.rule import Rule

from flywheel_state.cli._common import console, fail, reporting_errors, run_async
from flywheel_state.cli.demo_data import DemoData, generate
from flywheel_state.cli.demo_tour import _say, run_tour
from flywheel_state.config import Settings

if TYPE_CHECKING:
    from flywheel_state.server import EmbeddedRedis


__all__ = ["DemoData", "demo", "generate", "run_tour"]

# ------------------------------------------------------------------------------ the command


@click.command()
@click.option(
    "--url",
    default=None,
    help="Redis URL (default: REDIS_URL; without either, an embedded server is started).",
)
@click.option(
    "--sessions",
    "n_sessions",
    type=click.IntRange(20, 100_000),
    default=300,
    show_default=True,
    help="Sessions to generate.",
)
@click.option(
    "--executions",
    "n_executions",
    type=click.IntRange(20, 200_000),
    default=600,
    show_default=True,
    help="Execution results to generate.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the demo's data. With the embedded server, keep it running until Ctrl-C, so "
    "you can try the `sessions` and `executions` commands on it.",
)
@click.option("--seed", type=int, default=None, help="Random seed of the generated data.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def demo(
    url: str | None, n_sessions: int, n_executions: int, keep: bool, seed: int | None, debug: bool
) -> None:
    """A guided tour: write sessions and executions, query them, watch TTLs expire.

    Without REDIS_URL (or --url) it starts an embedded Redis 8 with JSON and search in a
    temporary directory and stops it at the end. With one, it works in a fresh namespace
    (demo_<random>) of that server and deletes everything it created at the end.
    """
    started = time.perf_counter()
    url = url or os.environ.get("REDIS_URL") or None
    namespace = f"demo_{secrets.token_hex(4)}"
    seed = secrets.randbelow(1_000_000) if seed is None else seed
    console.print(Rule("[bold]flywheel-state demo[/bold]", style="cyan"))
    server = None if url else _start_embedded()
    try:
        with reporting_errors(debug=debug):
            if server is None:
                settings = Settings.from_env(url=url, namespace=namespace)
                _say(f"Using the server of REDIS_URL: {settings.safe_url}")
            else:
                settings = Settings(url=server.url, namespace=namespace)
            run_async(
                run_tour(
                    settings,
                    n_sessions=n_sessions,
                    n_executions=n_executions,
                    seed=seed,
                    cleanup=server is None and not keep,
                )
            )
            console.print()
            if keep:
                _say(
                    f"Kept: namespace {namespace}. Try:\n"
                    f"  flywheel-state sessions list --url {settings.safe_url} "
                    f"--namespace {namespace} --status active\n"
                    f"  flywheel-state sessions stats --url {settings.safe_url} "
                    f"--namespace {namespace}"
                )
                if server is not None:
                    _run_until_interrupted(server)
    finally:
        if server is not None:
            server.stop()
            _say("Stopped the embedded server and removed its temporary directory.")
    if not keep:
        _say(
            "Next (README, First run): `flywheel-state server start --detach`, export the "
            "REDIS_URL it prints, `flywheel-state migrate up`, then "
            "`python examples/quickstart.py`; `flywheel-state demo --keep` keeps the data."
        )
    seconds = time.perf_counter() - started
    console.print(Rule(f"done in {seconds:.1f} s", style="cyan"))


def _start_embedded() -> EmbeddedRedis:
    """Start the embedded server, or exit 1 saying how to use another one."""
    from flywheel_state.server import EmbeddedRedis, EmbeddedServerError

    try:
        server = EmbeddedRedis().start()
    except EmbeddedServerError as exc:
        message = str(exc)
        if "REDIS_URL" not in message:
            message += " Set REDIS_URL to a Redis 8 or Redis Stack 7.2+ server instead."
        fail(message)
    _say(
        f"Started an embedded Redis 8 with RedisJSON and RediSearch at {server.url} "
        "(temporary directory; set REDIS_URL to use your own server)."
    )
    return server


def _run_until_interrupted(server: EmbeddedRedis) -> None:
    _say("The embedded server keeps running; press Ctrl-C to stop it.")
    try:
        while server.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
