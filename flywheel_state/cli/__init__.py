"""The ``flywheel-state`` command: thin wrappers over the library."""

from __future__ import annotations

import platform

import click

from flywheel_state import __version__
from flywheel_state.cli._common import FlywheelGroup
from flywheel_state.cli.crypto import crypto
from flywheel_state.cli.demo import demo
from flywheel_state.cli.doctor import doctor
from flywheel_state.cli.events import events
from flywheel_state.cli.executions import executions
from flywheel_state.cli.migrate import migrate
from flywheel_state.cli.server import server
from flywheel_state.cli.sessions import sessions

__all__ = ["cli", "main"]


SERVER_REQUIREMENTS = (
    "Redis >= 7.2 with RedisJSON >= 2.6 and RediSearch >= 2.8 (Redis 8 has both built in; "
    "Redis Stack 7.2+; Redis Cloud/Software with both modules)"
)
"""What the server side must provide; printed by ``--version``."""


@click.group(cls=FlywheelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__,
    prog_name="flywheel-state",
    message=(
        f"%(prog)s %(version)s (Python {platform.python_version()})\nserver: {SERVER_REQUIREMENTS}"
    ),
)
def cli() -> None:
    """flywheel-state: persistence for agentic-flywheel sessions on Redis.

    Connection settings come from REDIS_URL (or REDIS_HOST/REDIS_PORT/...) and REDIS_NAMESPACE,
    or from --url / --namespace on each command.
    """


for _command in (doctor, demo, server, sessions, executions, migrate, events, crypto):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli()
