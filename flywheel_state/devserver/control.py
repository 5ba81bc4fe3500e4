"""Stopping and inspecting a detached server through its data directory."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from flywheel_state.devserver._net import _connect_host, _url
from flywheel_state.devserver.binaries import EmbeddedServerError, ServerStatus
from flywheel_state.devserver.process import (
    _is_server_on_port,
    _pid_alive,
    _read_pidfile_data,
    _remove_pidfile,
)


def read_pidfile(data_dir: str | os.PathLike[str]) -> tuple[int, int] | None:
    """The (pid, port) recorded in a data directory's pid file.

    Args:
        data_dir: The server's data directory.

    Returns:
        ``(pid, port)``, or None when there is no readable pid file. The process may be gone: see
        :func:`server_status`.
    """
    data = _read_pidfile_data(data_dir)
    return None if data is None else (data[0], data[1])


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_by_data_dir(data_dir: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    """Stop the server whose pid file is in ``data_dir`` (for example a detached one).

    The process is signalled only if it is a live ``redis-server`` on the recorded port; a stale
    pid file is removed.

    Args:
        data_dir: The server's data directory.
        timeout: Seconds to wait for a clean shutdown (SIGTERM) before SIGKILL.

    Returns:
        True if a running server was stopped, False if none was running.

    Raises:
        EmbeddedServerError: The process could not be signalled or did not die.
    """
    path = Path(data_dir)
    data = _read_pidfile_data(path)
    if data is None:
        return False
    pid, port, _ = data
    if not _is_server_on_port(pid, port):
        _remove_pidfile(path, pid)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, 10.0):
                raise EmbeddedServerError(f"redis-server (pid {pid}) did not die after SIGKILL.")
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise EmbeddedServerError(f"Not allowed to stop redis-server (pid {pid}): {exc}") from exc
    _remove_pidfile(path, pid)
    return True


def server_status(data_dir: str | os.PathLike[str]) -> ServerStatus:
    """Whether a server runs on ``data_dir``, and where.

    Args:
        data_dir: The server's data directory.

    Returns:
        ``running``, and the ``pid``, ``port`` and ``url`` of the running server (None when it
        is not running), and the absolute ``data_dir``.
    """
    path = Path(data_dir).absolute()
    data = _read_pidfile_data(path)
    if data is None or not _is_server_on_port(data[0], data[1]):
        return ServerStatus(running=False, pid=None, port=None, url=None, data_dir=str(path))
    pid, port, host = data
    return ServerStatus(
        running=True, pid=pid, port=port, url=_url(_connect_host(host), port), data_dir=str(path)
    )
