"""`flywheel-state demo`, run as a user runs it: a subprocess, with and without REDIS_URL."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

_SECTIONS = (
    "flywheel-state demo",
    "1. Writing sessions and execution results",
    "2. Indexed queries",
    "Active sessions on flowise running flow csv2507, most recent first",
    "Counts per backend and per status",
    "Sessions active in the last 10 minutes",
    "Slowest completed executions of flow structural-tension",
    "3. TTLs count down, and sessions expire",
    "4. Touch and partial updates",
    "done in",
)


def _run_demo(*args: str, redis_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env["COLUMNS"] = "100"
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "flywheel_state.cli", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _namespace(output: str) -> str:
    match = re.search(r"namespace (demo_[0-9a-f]{8})", output)
    assert match, output
    return match.group(1)


def _check_tour(output: str) -> None:
    for section in _SECTIONS:
        assert section in output, f"missing {section!r} in:\n{output}"
    assert "MISMATCH" not in output, output
    # Every query result was checked against a brute-force filter of the generated data.
    assert len(re.findall(r"^\s+ok ", output, flags=re.MULTILINE)) >= 7, output
    assert re.search(r"TTL left: [23]\.\ds → .*gone", output), output
    assert "count(): 300 sessions (was 301), 0 of ttl-demo" in output


@pytest.fixture
def client(redis_server: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server, protocol=2, decode_responses=True)
    yield c
    c.close()


def _leftovers(client: redis.Redis, namespace: str) -> tuple[list[str], list[str]]:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    indexes = [n for n in client.execute_command("FT._LIST") if n.startswith(f"{namespace}:")]
    return keys, indexes


def test_demo_on_redis_url_cleans_up_its_namespace(redis_server: str, client: redis.Redis) -> None:
    done = _run_demo(redis_url=redis_server)
    assert done.returncode == 0, done.stdout + done.stderr
    _check_tour(done.stdout)
    assert "Using the server of REDIS_URL" in done.stdout
    assert "5. Cleaning up" in done.stdout
    namespace = _namespace(done.stdout)
    assert re.search(r"Dropped 2 indexes and unlinked \d+ keys", done.stdout), done.stdout
    assert _leftovers(client, namespace) == ([], [])
    with pytest.raises(redis.ResponseError):
        client.execute_command("FT.INFO", f"{namespace}:session:idx")


def test_demo_keep_leaves_its_data(redis_server: str, client: redis.Redis) -> None:
    done = _run_demo("--keep", "--sessions", "40", "--executions", "50", redis_url=redis_server)
    assert done.returncode == 0, done.stdout + done.stderr
    namespace = _namespace(done.stdout)
    try:
        assert "5. Cleaning up" not in done.stdout
        assert f"Kept: namespace {namespace}" in done.stdout
        sessions = list(client.scan_iter(match=f"{namespace}:session:*", count=1000))
        executions = list(client.scan_iter(match=f"{namespace}:execution:*", count=1000))
        assert len(sessions) == 40  # the short-lived session expired
        assert len(executions) == 50
        assert len(_leftovers(client, namespace)[1]) == 2
    finally:
        for name in _leftovers(client, namespace)[1]:
            client.execute_command("FT.DROPINDEX", name)
        keys = _leftovers(client, namespace)[0]
        if keys:
            client.unlink(*keys)


def test_demo_without_redis_url_starts_and_stops_its_own_server() -> None:
    done = _run_demo(redis_url=None)
    assert done.returncode == 0, done.stdout + done.stderr
    _check_tour(done.stdout)
    match = re.search(r"Started an embedded Redis .* at redis://127\.0\.0\.1:(\d+)/0", done.stdout)
    assert match, done.stdout
    assert "Stopped the embedded server" in done.stdout
    with pytest.raises(OSError):  # nothing listens on its port any more
        socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=1).close()


def test_demo_with_an_unreachable_server_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _run_demo(redis_url=f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot reach Redis"), done.stderr
