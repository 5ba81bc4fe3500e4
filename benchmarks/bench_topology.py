"""Topology benchmark: repository operations on one node, through Sentinel and on a 3-shard cluster.

Run from the repository root::

    python benchmarks/bench_topology.py            # full run with failovers (about a minute)
    python benchmarks/bench_topology.py --quick    # a few seconds, for CI (no failover)

It starts, from the embedded binaries, a single node, a Sentinel topology (a primary, a
replica, 3 sentinels) and a Redis Cluster of 3 primaries, and runs the same repository
operations on each, in the same run, with ``Store(..., search=False)`` everywhere (the cluster's
search module has no coordinator; no index means no indexing cost on any topology, so the
figures compare the topologies alone). Columns: ``single``; ``sentinel``; ``wait1`` (through
Sentinel with ``wait_replicas=1``: every write waits for the replica); ``cluster``. Ratios
are against ``single``. Single operations run one after the other on one connection
(latency-bound); the ``x50 tasks`` row runs 50 concurrent savers; batches are ``save_many`` /
``get_many`` of 500 (3 in a row). Every figure is the best of 3 rounds.

Then (full mode) the failover figures: concurrent writers (``save_many`` batches of 20) while the
primary is killed with ``kill -9``, a few times per mode; the killed node comes back as a
replica of the new primary meanwhile. For ``wait_replicas=0`` and ``=1`` it prints the time from
the kill to the first acknowledged write sent after it (min / median / max; with
``wait_replicas=1`` that includes the killed node's return, since a write needs a replica) and
how many acknowledged writes the new primary does not have.

With ``--check`` the exit status is 1 when a target is missed: sentinel/single >= 0.8 and
cluster/single >= 0.6 for save and get, and zero acknowledged writes lost with wait_replicas=1.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import Row, bench_parser, console, print_cells, print_table

from flywheel_state import Settings, Store
from flywheel_state.errors import StoreUnavailableError
from flywheel_state.models import Session
from flywheel_state.server import EmbeddedRedis
from flywheel_state.topology import LocalCluster, LocalSentinel

COLUMNS = ["single", "sentinel", "wait1", "cluster"]


def _session(i: int, tag: str) -> Session:
    return Session(
        id=f"{tag}-{i}",
        backend="flowise",
        user_id=f"u{i % 50}",
        context={"topic": "benchmark", "notes": "x" * 400},
        history=[{"role": "user", "content": f"question {j}"} for j in range(5)],
    )


async def _rate(n: int, call: Callable[[int], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    for i in range(n):
        await call(i)
    return n / (time.perf_counter() - start)


async def _measure(store: Store, n: int, batch: int) -> dict[str, float]:
    repo = store.sessions
    warm = [_session(i, "warm") for i in range(60)]
    await asyncio.gather(*(repo.save(m) for m in warm))  # connections, scripts loaded
    await repo.get_many([m.id for m in warm])
    await repo.delete_many([m.id for m in warm])
    tag = uuid.uuid4().hex[:6]
    models = [_session(i, tag) for i in range(n)]
    out: dict[str, float] = {}
    out["save"] = await _rate(n, lambda i: repo.save(models[i]))
    out["get"] = await _rate(n, lambda i: repo.get(f"{tag}-{i}"))
    out["update"] = await _rate(n, lambda i: repo.update(f"{tag}-{i}", user_id="v"))
    out["append_history"] = await _rate(
        n, lambda i: repo.append_history(f"{tag}-{i}", {"role": "assistant", "content": "a"})
    )
    many = [_session(i, tag + "m") for i in range(batch)]
    rounds = 3
    start = time.perf_counter()
    for _ in range(rounds):
        await repo.save_many(many)
    out["save_many"] = rounds * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(rounds):
        await repo.get_many([m.id for m in many])
    out["get_many"] = rounds * batch / (time.perf_counter() - start)
    tasks = [_session(i, tag + "t") for i in range(n)]
    start = time.perf_counter()
    sem = asyncio.Semaphore(50)

    async def one(model: Session) -> None:
        async with sem:
            await repo.save(model)

    await asyncio.gather(*(one(m) for m in tasks))
    out["save x50 tasks"] = n / (time.perf_counter() - start)
    await repo.delete_many([m.id for m in models + many + tasks])
    return out


async def _failover_run(topo: LocalSentinel, wait: int) -> tuple[float, int, int]:
    """One kill -9 under load: (recovery seconds, acknowledged writes, acknowledged lost)."""
    settings = Settings(
        url=topo.url,
        namespace=f"bench{uuid.uuid4().hex[:6]}",
        wait_replicas=wait,
        connect_timeout=1.0,
        command_timeout=2.0,
    )
    acked: list[str] = []
    stop = asyncio.Event()
    recovered = asyncio.Event()
    state: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    async with Store(settings, search=False) as store:

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                started = loop.time()
                batch = [
                    Session(id=f"w{w}-{i + k}", backend="flowise", context={"n": "x" * 200})
                    for k in range(20)
                ]
                i += 20
                try:
                    await store.sessions.save_many(batch)
                except StoreUnavailableError:
                    await asyncio.sleep(0.02)
                    continue
                acked.extend(m.id for m in batch)
                killed = state.get("killed")
                if killed is not None and started > killed and "recovered" not in state:
                    state["recovered"] = loop.time()
                    recovered.set()

        tasks = [asyncio.create_task(writer(w)) for w in range(6)]
        await asyncio.sleep(0.5)
        old = await asyncio.to_thread(topo.kill_primary)
        state["killed"] = loop.time()
        # The sentinels promote the replica; the killed node comes back as its replica.
        heal = asyncio.create_task(asyncio.to_thread(_recover, topo, old))
        await asyncio.wait_for(recovered.wait(), timeout=60)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)
        await heal
        found = await store.sessions.get_many(acked)
        lost = sum(1 for doc in found if doc is None)
        await store.sessions.delete_many(acked)
    return state["recovered"] - state["killed"], len(acked), lost


def _recover(topo: LocalSentinel, old: int) -> None:
    topo.wait_failover(old)
    topo.revive(old)
    topo.wait_healthy()


async def main(quick: bool, check: bool) -> int:
    n, batch = (150, 200) if quick else (1000, 500)
    repeat = 1 if quick else 3
    failovers = 0 if quick else 3
    results: dict[str, dict[str, float]] = {}
    single = EmbeddedRedis()
    sentinel = LocalSentinel(replicas=1, sentinels=3)
    cluster = LocalCluster(shards=3)
    # Started side by side (each waits for its own health), stopped by pid at the end.
    starts = [asyncio.to_thread(t.start) for t in (single, sentinel, cluster)]
    outcomes = await asyncio.gather(*starts, return_exceptions=True)
    try:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return await _run(single, sentinel, cluster, n, batch, repeat, failovers, check, results)
    finally:
        for topology in (cluster, sentinel, single):
            topology.stop()


async def _run(
    single: EmbeddedRedis,
    sentinel: LocalSentinel,
    cluster: LocalCluster,
    n: int,
    batch: int,
    repeat: int,
    failovers: int,
    check: bool,
    results: dict[str, dict[str, float]],
) -> int:
    if True:
        urls = {
            "single": (single.url, 0),
            "sentinel": (sentinel.url, 0),
            "wait1": (sentinel.url, 1),
            "cluster": (cluster.url, 0),
        }
        stores = {
            name: Store(
                Settings(url=url, namespace=f"bench{uuid.uuid4().hex[:6]}", wait_replicas=wait),
                search=False,
            )
            for name, (url, wait) in urls.items()
        }
        for store in stores.values():
            await store.connect()
        try:
            # Best of `repeat` rounds; each round visits the topologies in turn, so that load
            # from other processes hits them alike.
            for _ in range(repeat):
                for name, store in stores.items():
                    figures = await _measure(store, n, batch)
                    best = results.setdefault(name, figures)
                    for op, value in figures.items():
                        best[op] = max(best[op], value)
        finally:
            for store in stores.values():
                await store.close()
        rows = [Row(op, {col: results[col][op] for col in COLUMNS}) for op in results["single"]]
        print_table(
            f"repository operations per topology ({n} calls, batches of {batch})",
            COLUMNS,
            rows,
            unit="ops/s",
        )
        ratio_rows = [
            [op] + [f"{results[col][op] / results['single'][op]:.2f}" for col in COLUMNS[1:]]
            for op in results["single"]
        ]
        print_cells("ratio to single node", ["operation", *COLUMNS[1:]], ratio_rows)
        lost_wait1 = 0
        if failovers:
            figures: list[list[str]] = []
            for wait in (0, 1):
                runs = [await _failover_run(sentinel, wait) for _ in range(failovers)]
                times = [r[0] for r in runs]
                if wait == 1:
                    lost_wait1 = sum(r[2] for r in runs)
                figures.append(
                    [
                        f"wait={wait}",
                        str(len(runs)),
                        f"{min(times):.2f}",
                        f"{statistics.median(times):.2f}",
                        f"{max(times):.2f}",
                        str(sum(r[1] for r in runs)),
                        str(sum(r[2] for r in runs)),
                    ]
                )
            print_cells(
                "failover (kill -9 of the primary under 6 writers of save_many x20)",
                ["mode", "failovers", "recovery min s", "median s", "max s", "acked", "lost"],
                figures,
            )
        else:
            console.print("failover figures: skipped in --quick mode")
    misses = []
    for op in ("save", "get"):
        if results["sentinel"][op] / results["single"][op] < 0.8:
            misses.append(f"sentinel/single {op} < 0.8")
        if results["cluster"][op] / results["single"][op] < 0.6:
            misses.append(f"cluster/single {op} < 0.6")
    if lost_wait1:
        misses.append(f"{lost_wait1} acknowledged writes lost with wait_replicas=1")
    for miss in misses:
        console.print(f"[red]target missed:[/red] {miss}")
    return 1 if check and misses else 0


if __name__ == "__main__":
    args = bench_parser(__doc__).parse_args()
    sys.exit(asyncio.run(main(args.quick, args.check)))
