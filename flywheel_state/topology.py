"""Local Sentinel and Cluster topologies from the embedded binaries (development and tests).

Every node is an :class:`~flywheel_state.server.EmbeddedRedis` with RedisJSON and RediSearch
loaded (sentinels run the same binary in sentinel mode, without modules), so each dies with the
Python process that started it (``PR_SET_PDEATHSIG`` + ``atexit``) unless detached. A detached
topology writes ``topology.json`` into its data directory; :func:`stop_topology` stops every
node by the pid file of its own data directory.

::

    with LocalSentinel(replicas=1, sentinels=3) as topo:
        store = Store(url=topo.url)   # redis+sentinel://127.0.0.1:P1,.../flywheel
        topo.kill_primary()           # kill -9 of the current primary, by pid

    with LocalCluster(shards=3) as cluster:
        store = Store(url=cluster.url, search=False)  # redis+cluster://127.0.0.1:P1,...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from flywheel_state.server import EmbeddedRedis, EmbeddedServerError, stop_by_data_dir

__all__ = [
    "TOPOLOGY_FILE",
    "LocalCluster",
    "LocalSentinel",
    "stop_topology",
    "topology_status",
]

TOPOLOGY_FILE = "topology.json"
"""The file a topology writes into its data directory: kind, URL and the nodes' data dirs."""

_SLOTS = 16384
_PROBE_KEY = "flywheel-topology:probe"  # written (10 s TTL) to check that replication works
_HOST = "127.0.0.1"


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _conf_quote(value: str) -> str:
    """A configuration-file string: double-quoted, with backslashes and quotes escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (both below 65536)."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 55000)
        ok = True
        for candidate in (port, port + 10000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((_HOST, candidate))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise EmbeddedServerError("no free port pair for a cluster node")


def _client(port: int, password: str | None = None) -> redis.Redis[str]:
    return redis.Redis(
        host=_HOST,
        port=port,
        password=password,
        socket_timeout=2,
        socket_connect_timeout=2,
        decode_responses=True,
    )


def _info(port: int, section: str, password: str | None = None) -> dict[str, Any]:
    client = _client(port, password)
    try:
        return dict(client.info(section))
    finally:
        client.close()


class _Topology:
    """Shared plumbing: a base directory, nodes, start/stop, the topology file."""

    kind = "topology"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None,
        startup_timeout: float,
        detach: bool,
    ) -> None:
        self._requested_dir = None if data_dir is None else Path(data_dir).absolute()
        self._base: Path | None = None
        self._temp = False
        self._startup_timeout = startup_timeout
        self._detach = detach
        self.nodes: list[EmbeddedRedis] = []
        """Every process started, in start order."""

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The base directory (one sub-directory per node)."""
        if self._base is None:
            raise EmbeddedServerError(f"this {type(self).__name__} was not started")
        return self._base

    @property
    def url(self) -> str:
        """The URL to give to a Store."""
        raise NotImplementedError

    def _prepare(self) -> Path:
        if self._requested_dir is None:
            self._base = Path(tempfile.mkdtemp(prefix=f"flywheel-{self.kind}-")).absolute()
            self._temp = True
        else:
            self._base = self._requested_dir
            self._base.mkdir(parents=True, exist_ok=True)
            if (self._base / TOPOLOGY_FILE).exists() and topology_status(self._base)["running"]:
                raise EmbeddedServerError(
                    f"a topology already runs on {self._base}; stop it first "
                    f"(`flywheel-state server stop --data-dir {self._base}`)"
                )
        return self._base

    def _node(
        self,
        name: str,
        *,
        port: int | None = None,
        args: list[str] | None = None,
        with_modules: bool = True,
        config_file: Path | None = None,
    ) -> EmbeddedRedis:
        node = EmbeddedRedis(
            port=port,
            data_dir=self.data_dir / name,
            with_modules=with_modules,
            host=_HOST,
            startup_timeout=self._startup_timeout,
            detach=self._detach,
            extra_args=args or [],
            config_file=config_file,
        )
        node.start()
        self.nodes.append(node)
        return node

    def start(self) -> Any:
        """Start every node and wait until the topology is healthy.

        Raises:
            EmbeddedServerError: A node did not start, or the topology did not become healthy
                within the startup timeout; everything started is stopped again.
        """
        self._prepare()
        try:
            self._start_nodes()
            self._write_file()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self) -> None:
        raise NotImplementedError

    def _write_file(self) -> None:
        info = {
            "kind": self.kind,
            "url": self.url,
            "nodes": [str(node.data_dir) for node in self.nodes],
        }
        (self.data_dir / TOPOLOGY_FILE).write_text(json.dumps(info, indent=2))

    def stop(self) -> None:
        """Stop every node (by pid) and remove a temporary data directory."""
        errors: list[str] = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except EmbeddedServerError as exc:
                errors.append(str(exc))
        self.nodes.clear()
        if self._base is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._base / TOPOLOGY_FILE).unlink()
            if self._temp:
                shutil.rmtree(self._base, ignore_errors=True)
                self._base = None
        if errors:
            raise EmbeddedServerError("; ".join(errors))

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """The pids of the nodes that run."""
        return [node.pid for node in self.nodes if node.pid is not None]


class LocalSentinel(_Topology):
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels on 127.0.0.1.

    Sentinels use ``down-after-milliseconds 1000`` and ``failover-timeout 3000`` (a kill -9 of
    the primary is followed by a promotion in about 2-3 s); data nodes use
    ``repl-diskless-sync-delay 0`` so that a replica syncs at once.

    Args:
        replicas: Replicas of the primary (>= 1 for a failover).
        sentinels: Sentinels (quorum: a majority of them).
        service_name: The sentinels' name of the primary.
        data_dir: Base directory (one sub-directory per node); None: a temporary one.
        startup_timeout: Seconds to wait for the topology to be healthy.
        detach: Let the processes outlive this one (stop with :func:`stop_topology`).
        password: Password of the data nodes (``requirepass``; replicas and sentinels use it
            to reach them). Not shown in :attr:`url`.
        sentinel_password: Password of the sentinels themselves (their ``requirepass``).
    """

    kind = "sentinel"

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        service_name: str = "flywheel",
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        detach: bool = False,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        if replicas < 0 or sentinels < 1:
            raise EmbeddedServerError("a sentinel topology needs replicas >= 0 and sentinels >= 1")
        super().__init__(data_dir=data_dir, startup_timeout=startup_timeout, detach=detach)
        self.replicas = replicas
        self.sentinel_count = sentinels
        self.service_name = service_name
        self.data_nodes: list[EmbeddedRedis] = []
        self.sentinels: list[EmbeddedRedis] = []
        self._password = password
        self._sentinel_password = sentinel_password

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,.../SERVICE``."""
        hosts = ",".join(f"{_HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service_name}"

    def _data_args(self, primary_port: int | None) -> list[str]:
        args = ["--repl-diskless-sync-delay", "0", "--repl-diskless-sync", "yes"]
        if self._password:
            args += ["--requirepass", self._password, "--masterauth", self._password]
        if primary_port is not None:
            args += ["--replicaof", _HOST, str(primary_port)]
        return args

    def _start_nodes(self) -> None:
        primary = self._node("primary", args=self._data_args(None))
        self.data_nodes.append(primary)
        for i in range(self.replicas):
            replica = self._node(f"replica-{i}", args=self._data_args(primary.port))
            self.data_nodes.append(replica)
        self._wait_replicas_linked(primary.port, self.replicas)
        quorum = self.sentinel_count // 2 + 1
        for i in range(self.sentinel_count):
            node_dir = self.data_dir / f"sentinel-{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            conf = node_dir / "sentinel.conf"
            name = self.service_name
            text = (
                f"sentinel monitor {name} {_HOST} {primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {name} 1000\n"
                f"sentinel failover-timeout {name} 3000\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
            if self._password:
                text += f"sentinel auth-pass {name} {_conf_quote(self._password)}\n"
            if self._sentinel_password:
                # The sentinels authenticate to each other with it too.
                secret = _conf_quote(self._sentinel_password)
                text += f"requirepass {secret}\nsentinel sentinel-pass {secret}\n"
            conf.write_text(text)
            conf.chmod(0o600)
            self.sentinels.append(
                self._node(
                    f"sentinel-{i}", args=["--sentinel"], with_modules=False, config_file=conf
                )
            )
        self.wait_healthy()

    def _wait_replicas_linked(self, primary_port: int, count: int) -> None:
        def linked() -> bool:
            info = _info(primary_port, "replication", self._password)
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return sum(1 for v in online if v.get("state") == "online") >= count

        _wait_for(linked, self._startup_timeout, f"{count} replica(s) linked to {primary_port}")

    def _sentinel_view(self, port: int) -> dict[str, Any]:
        client = _client(port, self._sentinel_password)
        try:
            masters = client.sentinel_masters()
        finally:
            client.close()
        state: dict[str, Any] = masters[self.service_name]
        return state

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError, KeyError):
                return int(self._sentinel_view(sentinel.port)["port"])
        raise EmbeddedServerError("no sentinel answers")

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until every sentinel names one live primary with its replicas and peers, and a
        probe write (key ``flywheel-topology:probe``, 10 s TTL) reaches every replica."""
        replicas = sum(1 for n in self.data_nodes if n.is_running()) - 1

        def healthy() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                state = self._sentinel_view(sentinel.port)
                if not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                    return False
                if int(state["num-other-sentinels"]) < self.sentinel_count - 1:
                    return False
                if int(state["num-slaves"]) < replicas:
                    return False
                ports.add(int(state["port"]))
            if len(ports) != 1:
                return False
            port = ports.pop()
            role = _info(port, "replication", self._password)
            if role.get("role") != "master":
                return False
            online = [v for k, v in role.items() if k.startswith("slave") and isinstance(v, dict)]
            if sum(1 for v in online if v.get("state") == "online") < replicas:
                return False
            if replicas == 0:
                return True
            # Replicating for real: a probe write is acknowledged by every replica.
            client = _client(port, self._password)
            try:
                client.set(_PROBE_KEY, "1", px=10_000)
                return int(client.wait(replicas, 500)) >= replicas
            finally:
                client.close()

        _wait_for(
            healthy, self._startup_timeout if timeout is None else timeout, "a healthy sentinel"
        )

    def node_on(self, port: int) -> EmbeddedRedis:
        """The data node listening on ``port``."""
        for node in self.data_nodes:
            if node.port == port and node.is_running():
                return node
        raise EmbeddedServerError(f"no running data node on port {port}")

    def kill_primary(self) -> int:
        """``kill -9`` the current primary (by its pid); returns its port."""
        port = self.primary_port()
        node = self.node_on(port)
        assert node.pid is not None
        os.kill(node.pid, signal.SIGKILL)
        _wait_for(lambda: not node.is_running(), 10, f"pid {node.pid} to die")
        return port

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels promoted another node than ``old_port``; its port."""
        found: list[int] = []

        def promoted() -> bool:
            port = self.primary_port()
            if port == old_port:
                return False
            if _info(port, "replication", self._password).get("role") != "master":
                return False
            found.append(port)
            return True

        _wait_for(promoted, timeout, f"a failover away from port {old_port}")
        return found[-1]

    def revive(self, port: int) -> EmbeddedRedis:
        """Start the dead node of ``port`` again, as a replica of the current primary."""
        old = next(n for n in self.data_nodes if n.port == port)
        with contextlib.suppress(EmbeddedServerError):
            old.stop()
        self.data_nodes.remove(old)
        with contextlib.suppress(ValueError):
            self.nodes.remove(old)
        name = old.data_dir.name
        node = self._node(name, port=port, args=self._data_args(self.primary_port()))
        self.data_nodes.append(node)
        return node


class LocalCluster(_Topology):
    """A Redis Cluster of ``shards`` primaries on 127.0.0.1, slots split evenly.

    Nodes run with ``--cluster-enabled yes --cluster-config-file nodes.conf``; slots are
    assigned with CLUSTER ADDSLOTSRANGE and the nodes joined with CLUSTER MEET; start() returns
    once every node reports ``cluster_state:ok`` and knows every other. The search module on
    these nodes has no coordinator: each shard's index would cover its own keys only.

    Args:
        shards: Primaries (>= 1).
        data_dir: Base directory (one sub-directory per node); None: a temporary one.
        startup_timeout: Seconds to wait for the cluster to be healthy.
        detach: Let the processes outlive this one (stop with :func:`stop_topology`).
    """

    kind = "cluster"

    def __init__(
        self,
        *,
        shards: int = 3,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        detach: bool = False,
    ) -> None:
        if shards < 1:
            raise EmbeddedServerError("a cluster needs at least 1 shard")
        super().__init__(data_dir=data_dir, startup_timeout=startup_timeout, detach=detach)
        self.shards = shards

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...``."""
        return "redis+cluster://" + ",".join(f"{_HOST}:{n.port}" for n in self.nodes)

    def _start_nodes(self) -> None:
        for i in range(self.shards):
            self._node(
                f"node-{i}",
                port=_cluster_port(),
                args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
        per = _SLOTS // self.shards
        for i, node in enumerate(self.nodes):
            first = i * per
            last = _SLOTS - 1 if i == self.shards - 1 else (i + 1) * per - 1
            client = _client(node.port)
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                if i > 0:
                    client.execute_command("CLUSTER", "MEET", _HOST, self.nodes[0].port)
            finally:
                client.close()
        self.wait_healthy()

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until every node reports ``cluster_state:ok`` and knows all nodes."""

        def healthy() -> bool:
            for node in self.nodes:
                client = _client(node.port)
                try:
                    info = client.execute_command("CLUSTER", "INFO")
                finally:
                    client.close()
                text = info if isinstance(info, str) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                if f"cluster_known_nodes:{self.shards}" not in text:
                    return False
            return True

        _wait_for(
            healthy, self._startup_timeout if timeout is None else timeout, "cluster_state:ok"
        )


def _read_topology(data_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((data_dir / TOPOLOGY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("nodes"), list) else None


def topology_status(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Whether a (detached) topology runs on ``data_dir``: kind, url, running node count."""
    from flywheel_state.server import server_status

    path = Path(data_dir).absolute()
    info = _read_topology(path)
    if info is None:
        return {"running": False, "kind": None, "url": None, "nodes": 0, "data_dir": str(path)}
    running = sum(1 for node in info["nodes"] if server_status(node)["running"])
    return {
        "running": running > 0,
        "kind": info.get("kind"),
        "url": info.get("url"),
        "nodes": running,
        "data_dir": str(path),
    }


def stop_topology(data_dir: str | os.PathLike[str]) -> int:
    """Stop every node of the topology on ``data_dir``, each by its own pid file.

    Returns:
        How many nodes were running and were stopped (0 when none / no topology).
    """
    path = Path(data_dir).absolute()
    info = _read_topology(path)
    if info is None:
        return 0
    stopped = 0
    for node in reversed(info["nodes"]):
        if stop_by_data_dir(node):
            stopped += 1
    with contextlib.suppress(FileNotFoundError):
        (path / TOPOLOGY_FILE).unlink()
    return stopped
