"""Processes of the dev server: pid files, liveness, log tails, the exit-time registry."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel_state.devserver._net import _url
from flywheel_state.devserver.binaries import (
    _LOG_TAIL_LINES,
    _PR_SET_PDEATHSIG,
    _PROCESS_NAME,
    PID_FILE_NAME,
    EmbeddedServerError,
)

if TYPE_CHECKING:
    from flywheel_state.devserver.embedded import EmbeddedRedis


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our own child (a detached server started here)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie counts as dead)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            # The state follows the parenthesised command name, which may hold spaces.
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state not in {"Z", "X"}
    return True


def _process_name(pid: int) -> str | None:
    """The executable name of ``pid``, or None when it can't be read."""
    comm = Path(f"/proc/{pid}/comm")
    if comm.parent.exists():
        try:
            return comm.read_text().strip()
        except OSError:
            return None
    try:
        result = subprocess.run(
            ["ps", "-p", str(pid), "-o", "comm="],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = result.stdout.strip()
    return os.path.basename(name) if name else None


def _is_server_on_port(pid: int, port: int) -> bool:
    """True when ``pid`` is a live ``redis-server`` listening on ``port``.

    A pid from a stale pid file may have been reused by another process, even another
    redis-server: such a process must never be signalled.
    """
    if not _pid_alive(pid) or _process_name(pid) != _PROCESS_NAME:
        return False
    try:
        # redis-server sets its title to "redis-server HOST:PORT".
        title = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return True  # no /proc (macOS): the process name has to do
    return re.search(rf":{port}(\s|$)", title) is not None


def _pidfile_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / PID_FILE_NAME


def _read_pidfile_data(data_dir: str | os.PathLike[str]) -> tuple[int, int, str] | None:
    try:
        raw = json.loads(_pidfile_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    pid, port, host = raw.get("pid"), raw.get("port"), raw.get("host", "127.0.0.1")
    if not (isinstance(pid, int) and isinstance(port, int) and isinstance(host, str)):
        return None
    if pid <= 0 or not 0 < port < 65536:
        return None
    return pid, port, host


def _write_pidfile(data_dir: Path, pid: int, port: int, host: str) -> None:
    path = data_dir / PID_FILE_NAME
    tmp = data_dir / f".{PID_FILE_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"pid": pid, "port": port, "host": host, "url": _url(host, port)}))
    os.replace(tmp, path)


def _remove_pidfile(data_dir: Path, pid: int | None = None) -> None:
    """Remove the pid file; with ``pid``, only if it still names that process."""
    if pid is not None:
        data = _read_pidfile_data(data_dir)
        if data is not None and data[0] != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        (data_dir / PID_FILE_NAME).unlink()


def _log_tail(log_path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty log)"


# --------------------------------------------------------------------------------------------
# Dying with the parent
# --------------------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux only).

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so it is only used
    from the main thread; servers started from other threads rely on the ``atexit`` handler.
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    if _libc is None:
        try:
            # Loaded here, in the parent: loading a library between fork and exec is unsafe.
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    prctl = _libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:
            # The parent died between fork and prctl: the signal will never come.
            os._exit(1)

    return preexec


_running: set[EmbeddedRedis] = set()
_atexit_registered = False
_registry_lock = threading.Lock()


def _track(server: EmbeddedRedis) -> None:
    global _atexit_registered
    with _registry_lock:
        _running.add(server)
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True


def _untrack(server: EmbeddedRedis) -> None:
    with _registry_lock:
        _running.discard(server)


def _stop_all() -> None:
    """Stop every non-detached server this process started (run at interpreter exit)."""
    with _registry_lock:
        servers = list(_running)
    for server in servers:
        with contextlib.suppress(EmbeddedServerError, OSError):
            server.stop()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------
