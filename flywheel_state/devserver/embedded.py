"""EmbeddedRedis: one redis-server with the JSON and search modules, as a child process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from flywheel_state.devserver._net import _connect_host, _free_port, _ping, _port_is_free, _url
from flywheel_state.devserver.binaries import (
    _INSTALL_HINT,
    LOG_FILE_NAME,
    EmbeddedServerError,
    PortInUseError,
    ServerBinaries,
    find_binaries,
)
from flywheel_state.devserver.process import (
    _is_server_on_port,
    _log_tail,
    _pdeathsig_preexec,
    _read_pidfile_data,
    _remove_pidfile,
    _track,
    _untrack,
    _write_pidfile,
)


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
