"""`flywheel-state doctor` and the server CLI, run as real commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis
from click.testing import CliRunner

from flywheel_state.cli import cli
from flywheel_state.server import EmbeddedRedis

SECRET = "pw-Do-Not-Print-7f3a"


def test_doctor_reports_modules_indexes_and_keys(redis_server: str, namespace: str) -> None:
    runner = CliRunner()
    # A namespace with nothing in it is reported as unused (issue 14), not "run migrate up".
    result = runner.invoke(cli, ["doctor", "--url", redis_server, "--namespace", namespace])
    assert result.exit_code == 1, result.output
    assert "is unused (no keys, no indexes)" in result.output
    # Data but no indexes -> non-zero exit, advising migrate up.
    client = redis.Redis.from_url(redis_server)
    client.set(f"{namespace}:session:legacy", "{}")
    client.close()
    result = runner.invoke(cli, ["doctor", "--url", redis_server, "--namespace", namespace])
    assert result.exit_code == 1, result.output
    assert "no session index" in result.output
    up = runner.invoke(cli, ["migrate", "up", "--url", redis_server, "--namespace", namespace])
    assert up.exit_code == 0, up.output
    result = runner.invoke(
        cli, ["doctor", "--url", redis_server, "--namespace", namespace, "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["json"] is True and report["search"] is True
    assert report["namespace"] == namespace
    assert report["indexes"]["session"]["index"] == f"{namespace}:session:idx:v1"
    assert report["keys"] == {"session": 1, "execution": 0}
    assert report["problems"] == []


@pytest.mark.integration  # starts a server of its own
def test_doctor_never_prints_the_password(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "pw") as server:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", SECRET)
        admin.close()
        url = f"redis://default:{SECRET}@127.0.0.1:{server.port}/0"
        runner = CliRunner()
        ok = runner.invoke(cli, ["doctor", "--url", url, "--namespace", "pwtest"])
        assert "JSON" in ok.output and "available" in ok.output
        assert SECRET not in ok.output
        assert "default:***@" in ok.output
        as_json = runner.invoke(cli, ["doctor", "--url", url, "--json"])
        assert SECRET not in as_json.output
        assert json.loads(as_json.output)["json"] is True
        # Through the environment, and with a wrong password: the reason, never the secret.
        env = {**os.environ, "REDIS_URL": f"redis://default:{SECRET}x@127.0.0.1:{server.port}/0"}
        bad = subprocess.run(
            [sys.executable, "-m", "flywheel_state.cli", "doctor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0
        assert SECRET not in bad.stdout + bad.stderr
        assert "problem" in bad.stdout
        assert "refused the credentials" in bad.stdout  # not "cannot reach"


@pytest.mark.integration  # starts a server of its own
def test_doctor_on_server_without_modules_fails_with_reason() -> None:
    with EmbeddedRedis(with_modules=False) as plain:
        result = CliRunner().invoke(cli, ["doctor", "--url", plain.url])
        assert result.exit_code == 1
        assert "MISSING" in result.output
        assert "missing commands" in result.output


def test_doctor_on_closed_port_fails_with_reason() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(cli, ["doctor", "--url", f"redis://127.0.0.1:{port}/0"])
    assert result.exit_code == 1
    assert "cannot reach Redis" in result.output


def test_server_start_detach_doctor_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "srv"
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = [sys.executable, "-m", "flywheel_state.cli"]
    started = subprocess.run(
        [*run, "server", "start", "--detach", "--port", str(port), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    pid = json.loads((data_dir / "flywheel-redis.pid").read_text())["pid"]
    try:
        url = f"redis://127.0.0.1:{port}/0"
        doctor = subprocess.run(
            [*run, "doctor", "--url", url, "--json"], capture_output=True, text=True, timeout=60
        )
        report = json.loads(doctor.stdout)
        assert report["json"] is True and report["search"] is True
    finally:
        stopped = subprocess.run(
            [*run, "server", "stop", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert stopped.returncode == 0, stopped.stderr
    if psutil.pid_exists(pid):
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not any(
        p.info["name"] == "redis-server"
        and f":{port}" in " ".join(p.info["cmdline"] or [])
        and p.status() != psutil.STATUS_ZOMBIE
        for p in psutil.process_iter(["name", "cmdline"])
    )
