"""`flywheel-state server start --replicas N --sentinels M` / `--cluster N`: start, healthy,
URL printed, stopped by pid; a killed parent leaves no process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

pytestmark = pytest.mark.timeout(180)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flywheel_state.cli", "server", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _gone(pids: list[int], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_detached_cluster_starts_prints_its_url_and_stops(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    started = _cli("start", "--cluster", "3", "--detach", "--data-dir", str(data))
    assert started.returncode == 0, started.stderr
    url = re.search(r"export REDIS_URL=(\S+)", started.stdout)
    assert url is not None and url.group(1).startswith("redis+cluster://")
    pids = [int(p) for p in re.search(r"pids ([\d ]+)", started.stdout).group(1).split()]  # type: ignore[union-attr]
    assert len(pids) == 3
    try:
        port = int(url.group(1).split(",")[0].rsplit(":", 1)[1])
        client = redis.Redis(port=port, decode_responses=True)
        assert "cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
        for node in url.group(1).split("//")[1].split(","):
            node_client = redis.Redis(port=int(node.rsplit(":", 1)[1]), decode_responses=True)
            names = {m["name"] for m in node_client.execute_command("MODULE", "LIST")}
            node_client.close()
            assert {"ReJSON", "search"} <= names  # both modules on every node
        client.close()
        status = _cli("status", "--data-dir", str(data), "--json")
        assert json.loads(status.stdout)["nodes"] == 3
    finally:
        stopped = _cli("stop", "--data-dir", str(data))
    assert stopped.returncode == 0, stopped.stderr
    assert _gone(pids)
    assert _cli("stop", "--data-dir", str(data)).returncode != 0  # nothing left to stop


def test_detached_sentinel_topology_starts_and_stops(tmp_path: Path) -> None:
    data = tmp_path / "sentinel"
    started = _cli(
        "start", "--replicas", "1", "--sentinels", "1", "--detach", "--data-dir", str(data)
    )
    assert started.returncode == 0, started.stderr
    url = re.search(r"export REDIS_URL=(\S+)", started.stdout)
    assert url is not None and url.group(1).startswith("redis+sentinel://")
    pids = [int(p) for p in re.search(r"pids ([\d ]+)", started.stdout).group(1).split()]  # type: ignore[union-attr]
    assert len(pids) == 3
    try:
        port = int(url.group(1).split("//")[1].split("/")[0].rsplit(":", 1)[1])
        sentinel = redis.Redis(port=port, decode_responses=True)
        masters = sentinel.sentinel_masters()
        assert masters["flywheel"]["num-slaves"] == 1
        sentinel.close()
    finally:
        stopped = _cli("stop", "--data-dir", str(data))
    assert stopped.returncode == 0, stopped.stderr
    assert _gone(pids)


def test_a_killed_parent_leaves_no_process(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from flywheel_state.topology import LocalSentinel, LocalCluster\n"
        "a = LocalSentinel(replicas=1, sentinels=1).start()\n"
        "b = LocalCluster(shards=2).start()\n"
        "print(' '.join(map(str, a.pids() + b.pids())), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 5 and all(psutil.pid_exists(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)  # no atexit: only the parent-death signal remains
        proc.wait(timeout=30)
    assert _gone(pids)


def test_foreground_topology_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flywheel_state.cli",
            "server",
            "start",
            "--replicas",
            "1",
            "--sentinels",
            "1",
            "--data-dir",
            str(tmp_path / "fg"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or "Press Ctrl-C" not in lines[-1]:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        found = re.search(r"pids ([\d ]+)", "".join(lines))
        assert found is not None
        pids = [int(p) for p in found.group(1).split()]
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert _gone(pids)
