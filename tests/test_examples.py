"""Every script under examples/ runs as written, with only REDIS_URL set, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel_state import Settings, Store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(
    script: str, redis_url: str, namespace: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "FLYWHEEL_"))}
    env["REDIS_URL"] = redis_url
    env["REDIS_NAMESPACE"] = namespace
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _migrate(redis_url: str, namespace: str) -> None:
    async with Store(Settings(url=redis_url, namespace=namespace), auto_migrate=True):
        pass


def test_quickstart_refuses_an_unmigrated_namespace_then_migrates_itself(
    redis_url: str, namespace: str
) -> None:
    refused = _run("quickstart.py", redis_url, namespace)
    assert refused.returncode == 1
    assert "migrate up" in refused.stderr and "Traceback" not in refused.stderr
    done = _run("quickstart.py", redis_url, namespace, "--migrate")
    assert done.returncode == 0, done.stderr
    assert "history: 2 entries" in done.stdout
    assert "found 1 flowise session(s)" in done.stdout
    assert "executions of the session: 1" in done.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("agent_backend.py", "history now 4 entries"),
        ("fastapi_app.py", "GET /sessions/nope -> 404"),
        ("compat_api.py", "deleted: True"),
    ],
)
async def test_example_runs_against_a_migrated_server(
    script: str, expected: str, redis_url: str, namespace: str
) -> None:
    await _migrate(redis_url, namespace)
    result = _run(script, redis_url, namespace)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout


async def test_agent_backend_resumes_and_answers_from_the_cache(
    redis_url: str, namespace: str
) -> None:
    await _migrate(redis_url, namespace)
    assert _run("agent_backend.py", redis_url, namespace, "s1").returncode == 0
    again = _run("agent_backend.py", redis_url, namespace, "s1")
    assert again.returncode == 0, again.stderr
    assert "resumed session s1 (4 entries)" in again.stdout
    assert again.stdout.count("cache hit") == 2
