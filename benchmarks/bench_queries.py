"""Query benchmark: indexed queries against the original SCAN-and-filter approach.

Run from the repository root::

    python benchmarks/bench_queries.py                      # N = 10,000 and 100,000
    python benchmarks/bench_queries.py --sizes 10000,100000 --million   # and 1,000,000
    python benchmarks/bench_queries.py --quick              # a few seconds, for CI
    REDIS_URL=redis://host:6379/0 python benchmarks/bench_queries.py

For each N it fills a fresh namespace with N realistic sessions (a context of about 0.5 KB and
four history turns; backends, statuses and flows spread with skewed weights, as in production:
most sessions on Flowise, a few hot flows), then times on the same data, in the same run:

- ``indexed``: this library, ``store.sessions.find(backend, status, flow_id)`` (a page of 50,
  documents loaded; its match count grows with N), ``count`` with the same filters,
  ``find(user_id)`` (a handful of matches at any N), ``stats()``, and ``find`` with no filter;
- ``scan``: the original approach: SCAN over ``{ns}:session:*``, JSON.GET of every key
  (pipelined per SCAN batch, which is kinder than the original one GET per round trip),
  ``json.loads`` and a Python filter; the page is sorted and its 50 documents validated.

Each figure is the median of ``--repeat`` runs (``--scan-repeat`` for the slow scan). It prints
one table per N, the ratio scan/indexed, and the growth of the indexed page query between the
smallest and the largest N. Targets: at 100,000 sessions the indexed page query is at least
100x faster than the scan, and it grows less than 2x from 10,000 to 100,000. With ``--check``
the exit status is 1 when a target is missed. ``--scan-max N`` skips the (slow) scan baseline
above N, e.g. for the 1,000,000 run. The namespace is removed after each N.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from _harness import (
    Row,
    bench_parser,
    console,
    drop_namespace,
    fresh_namespace,
    print_table,
    random_text,
    server_url,
)
from redis.asyncio import Redis

from flywheel_state import Settings, Store
from flywheel_state.models import Backend, Session, SessionStatus

FILL_BATCH = 2_000
FILL_TTL_MS = 2 * 3600 * 1000  # leftovers of an interrupted run expire by themselves
PAGE = 50
FLOWS = [f"flow-{k:02d}" for k in range(40)]
FLOW_WEIGHTS = [1.0 / (k + 1) for k in range(len(FLOWS))]  # a few hot flows (Zipf-like)
BACKEND_WEIGHTS = {Backend.FLOWISE: 0.6, Backend.LANGFLOW: 0.3, Backend.CUSTOM: 0.1}
STATUS_WEIGHTS = {
    SessionStatus.ACTIVE: 0.30,
    SessionStatus.IDLE: 0.20,
    SessionStatus.COMPLETED: 0.35,
    SessionStatus.RUNNING: 0.05,
    SessionStatus.PENDING: 0.04,
    SessionStatus.FAILED: 0.04,
    SessionStatus.CANCELLED: 0.02,
}
QUERY: dict[str, Any] = {"backend": "flowise", "status": "active", "flow_id": FLOWS[0]}
USER = "user-42"  # one of 5,000 users: its match count stays small at every N
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def make_session(i: int, rnd: random.Random) -> Session:
    """One realistic session document."""
    created = NOW - timedelta(seconds=rnd.randrange(30 * 86400))
    active = created + timedelta(seconds=rnd.randrange(86400))
    return Session.model_validate(
        {
            "id": f"session_{i:07d}",
            "backend": rnd.choices(list(BACKEND_WEIGHTS), list(BACKEND_WEIGHTS.values()))[0],
            "backend_session_id": f"bk-{i}",
            "status": rnd.choices(list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values()))[0],
            "current_flow_id": rnd.choices(FLOWS, FLOW_WEIGHTS)[0],
            "user_id": f"user-{rnd.randrange(5000)}",
            "context": {
                "topic": random_text(rnd, 4),
                "documents": [
                    {"id": f"doc-{i}-{j}", "snippet": random_text(rnd, 12)} for j in range(3)
                ],
                "variables": {"lang": "en", "depth": rnd.randrange(5)},
            },
            "history": [
                {"role": "user" if j % 2 == 0 else "assistant", "content": random_text(rnd, 15)}
                for j in range(4)
            ],
            "metadata": {"client": "mcp"},
            "created_at": created,
            "updated_at": active,
            "last_active": active,
            "total_queries": 2,
            "successful_queries": 2,
        }
    )


async def fill(client: Redis, namespace: str, n: int) -> None:
    """N sessions, written as pipelined JSON.SET + PEXPIRE of ``model_dump_json()``."""
    rnd = random.Random(n)
    prefix = f"{namespace}:session:"
    for start in range(0, n, FILL_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + FILL_BATCH)):
                s = make_session(i, rnd)
                pipe.execute_command("JSON.SET", prefix + s.id, "$", s.model_dump_json())
                pipe.pexpire(prefix + s.id, FILL_TTL_MS)
            await pipe.execute()


# ---------------------------------------------------------------------- the original approach


async def scan_documents(client: Redis, namespace: str) -> list[dict[str, Any]]:
    """Every session document: SCAN the key pattern, JSON.GET each key, json.loads."""
    docs: list[dict[str, Any]] = []
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=f"{namespace}:session:*", count=1000)
        if keys:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.execute_command("JSON.GET", key)
                raws = await pipe.execute()
            docs.extend(json.loads(raw) for raw in raws if raw is not None)
        if cursor == 0:
            return docs


def scan_matches(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d.get("backend") == QUERY["backend"]
        and d.get("status") == QUERY["status"]
        and d.get("current_flow_id") == QUERY["flow_id"]
    ]


async def scan_find(client: Redis, namespace: str) -> list[Session]:
    matches = scan_matches(await scan_documents(client, namespace))
    matches.sort(key=lambda d: (-d["last_active"], d["id"]))
    return [Session.model_validate(d) for d in matches[:PAGE]]


async def scan_find_user(client: Redis, namespace: str) -> list[Session]:
    docs = await scan_documents(client, namespace)
    matches = [d for d in docs if d.get("user_id") == USER]
    matches.sort(key=lambda d: (-d["last_active"], d["id"]))
    return [Session.model_validate(d) for d in matches[:PAGE]]


async def scan_count(client: Redis, namespace: str) -> int:
    return len(scan_matches(await scan_documents(client, namespace)))


async def scan_stats(client: Redis, namespace: str) -> dict[str, dict[str, int]]:
    docs = await scan_documents(client, namespace)
    return {
        "backend": dict(Counter(d.get("backend") for d in docs)),
        "status": dict(Counter(d.get("status") for d in docs)),
        "total": {"all": len(docs)},
    }


async def scan_find_all(client: Redis, namespace: str) -> list[Session]:
    docs = await scan_documents(client, namespace)
    docs.sort(key=lambda d: (-d["last_active"], d["id"]))
    return [Session.model_validate(d) for d in docs[:PAGE]]


# ---------------------------------------------------------------------- timing


Op = Callable[[], Awaitable[object]]
PAGE_OP = f"find(backend, status, flow_id) page of {PAGE}"


class Dataset:
    """One namespace filled with N sessions, and the operations timed on it."""

    def __init__(self, url: str, n: int) -> None:
        self.n = n
        self.namespace = fresh_namespace("benchq")
        # Generous timeouts: the scan of 1M keys and stats over 1M documents are slow.
        settings = Settings(url=url, namespace=self.namespace, command_timeout=120.0)
        self.store = Store(settings, auto_migrate=True)
        self.raw = Redis.from_url(url, protocol=2, socket_timeout=120.0)

    async def open(self) -> None:
        await self.store.connect()
        start = time.perf_counter()
        await fill(self.raw, self.namespace, self.n)
        console.print(f"filled {self.n:,} sessions in {time.perf_counter() - start:.1f} s")

    async def close(self) -> None:
        await drop_namespace(self.raw, self.namespace)
        await self.raw.aclose()
        await self.store.close()

    def ops(self) -> dict[str, tuple[Op, Op]]:
        """Operation name to (indexed, scan)."""
        repo, raw, ns = self.store.sessions, self.raw, self.namespace
        return {
            PAGE_OP: (lambda: repo.find(**QUERY, limit=PAGE), lambda: scan_find(raw, ns)),
            "count(backend, status, flow_id)": (
                lambda: repo.count(**QUERY),
                lambda: scan_count(raw, ns),
            ),
            "find(user_id) page of 50 (few matches)": (
                lambda: repo.find(user_id=USER, limit=PAGE),
                lambda: scan_find_user(raw, ns),
            ),
            "stats()": (repo.stats, lambda: scan_stats(raw, ns)),
            f"find() no filter, page of {PAGE}": (
                lambda: repo.find(limit=PAGE),
                lambda: scan_find_all(raw, ns),
            ),
        }

    async def check(self) -> None:
        """Both approaches give the same answers (run before anything is timed)."""
        repo = self.store.sessions
        page = await repo.find(**QUERY, limit=PAGE)
        console.print(f"  N={self.n:,}: {QUERY} matches {page.total:,} sessions")
        scanned = await scan_find(self.raw, self.namespace)
        assert [s.id for s in page.items] == [s.id for s in scanned], "page mismatch"
        assert page.total == await scan_count(self.raw, self.namespace), "count mismatch"
        stats = await repo.stats()
        want = await scan_stats(self.raw, self.namespace)
        assert stats["total"] == want["total"], "stats mismatch"
        assert {k: v for k, v in stats["backend"].items() if v} == want["backend"]
        assert {k: v for k, v in stats["status"].items() if v} == want["status"]


async def interleaved_medians(fns: list[Op], repeat: int) -> list[float]:
    """Median milliseconds of ``repeat`` runs of each of ``fns`` (after one warm-up run each).

    The functions run in turn, so that they all see the same load.
    """
    for fn in fns:
        await fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            await fn()
            times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


async def run(url: str, args: argparse.Namespace) -> int:
    sizes = sorted(args.sizes)
    datasets = [Dataset(url, n) for n in sizes]
    results: dict[int, dict[str, Row]] = {n: {} for n in sizes}
    try:
        for ds in datasets:
            await ds.open()
        scanned = [ds for ds in datasets if args.scan_max is None or ds.n <= args.scan_max]
        for ds in scanned:
            await ds.check()
        # Indexed figures: every size in turn within each repetition, so a burst of load on
        # this shared machine hits all sizes alike and the growth ratios stay meaningful.
        for op in datasets[0].ops():
            medians = await interleaved_medians([ds.ops()[op][0] for ds in datasets], args.repeat)
            for ds, ms in zip(datasets, medians, strict=True):
                results[ds.n][op] = Row(op, {"indexed": ms})
        for ds in scanned:
            for op, (_, scan) in ds.ops().items():
                [ms] = await interleaved_medians([scan], args.scan_repeat)
                results[ds.n][op].values["scan"] = ms
    finally:
        for ds in datasets:
            await ds.close()

    for n in sizes:
        print_table(
            f"{n:,} sessions (median ms; scan/indexed = speed-up)",
            ["indexed", "scan"],
            list(results[n].values()),
            unit="ms",
            ratio=("scan", "indexed"),
            ratio_label="scan/indexed",
        )
    failed = False
    for n in sizes:
        row = results[n][PAGE_OP].values
        if "scan" not in row:
            console.print(f"N={n:>9,}: indexed page {row['indexed']:8.2f} ms (scan skipped)")
            continue
        speedup = row["scan"] / row["indexed"]
        console.print(f"N={n:>9,}: indexed page {row['indexed']:8.2f} ms, speed-up {speedup:,.0f}x")
        if n >= 100_000 and speedup < 100:
            failed = True
    for small, large in itertools.pairwise(sizes):
        for op in results[small]:
            growth = results[large][op].values["indexed"] / results[small][op].values["indexed"]
            console.print(f"growth of indexed {op}, {small:,} -> {large:,}: {growth:.2f}x")
            if op == PAGE_OP and (small, large) == (10_000, 100_000) and growth >= 2.0:
                failed = True
    if args.check and failed:
        console.print("[bold red]a target was missed[/]")
        return 1
    return 0


def parse_sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, repeat=15, repeat_help="runs per indexed figure")
    parser.add_argument("--sizes", type=parse_sizes, default=[10_000, 100_000])
    parser.add_argument("--million", action="store_true", help="also run N = 1,000,000")
    parser.add_argument("--scan-repeat", type=int, default=3, help="runs per scan figure")
    parser.add_argument(
        "--scan-max", type=int, default=None, help="skip the scan baseline above this N"
    )
    args = parser.parse_args(argv)
    if args.million and 1_000_000 not in args.sizes:
        args.sizes.append(1_000_000)
    if args.quick:
        args.sizes, args.repeat, args.scan_repeat = [2_000, 10_000], 5, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with server_url() as url:
        return asyncio.run(run(url, args))


if __name__ == "__main__":
    sys.exit(main())
