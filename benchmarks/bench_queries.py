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

- ``hand``: hand-written redis-py sending the same FT.SEARCH / FT.AGGREGATE the library sends
  for that shape (a page of 50 sorted on ``last_active``, ``LIMIT 0 0`` for a count, the stats
  GROUPBY in a MULTI with the total) and validating the documents with
  ``Session.model_validate_json``; it has no tie handling (its pages may be out of order on
  tied timestamps), so it is the floor the library is held to.

Each figure is the median of ``--repeat`` runs (``--scan-repeat`` for the slow scan), the
implementations interleaved. It prints one table per N, the ratios hand/indexed (target >= 0.9:
the library costs at most 1/0.9 of the same hand-written command) and scan/indexed, and the
growth of every indexed query between consecutive N. ``--ties`` adds a data set whose
timestamps are whole minutes (every sort value shared by several sessions) and times pages at
offset 0 and deep in it; the page of the original code's exact path (FT.AGGREGATE sorting every
match) is shown next to it. Targets: at 100,000 sessions the indexed page query is at least
100x faster than the scan, it grows less than 2x from 10,000 to 100,000, and every shape is at
least 0.9x of the hand-written command. With ``--check`` the exit status is 1 when a target is
missed. ``--scan-max N`` skips the (slow) scan baseline above N.

``--million`` adds N = 1,000,000 (run it alone: it takes minutes and gigabytes): the data is
written with ``store.sessions.save_many`` (its throughput is printed), and it prints the memory
per session in Redis: ``MEMORY USAGE`` of sampled keys plus the index's share (FT.INFO sizes
over ``num_docs``), against the same sessions stored as the original code stored them (a
plain string of JSON, SET). The namespace is removed after each N.
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

from flywheel_state import F, Settings, Store
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


def make_session(i: int, rnd: random.Random, resolution: int = 1) -> Session:
    """One realistic session document; its timestamps are multiples of ``resolution`` s."""
    created = NOW - timedelta(seconds=rnd.randrange(30 * 86400) // resolution * resolution)
    active = created + timedelta(seconds=rnd.randrange(86400) // resolution * resolution)
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


async def fill(client: Redis, namespace: str, n: int, resolution: int = 1) -> None:
    """N sessions, written as pipelined JSON.SET + PEXPIRE of ``model_dump_json()``."""
    rnd = random.Random(n)
    prefix = f"{namespace}:session:"
    for start in range(0, n, FILL_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + FILL_BATCH)):
                s = make_session(i, rnd, resolution)
                pipe.execute_command("JSON.SET", prefix + s.id, "$", s.model_dump_json())
                pipe.pexpire(prefix + s.id, FILL_TTL_MS)
            await pipe.execute()


async def fill_with_library(store: Store, n: int) -> float:
    """N sessions written by ``store.sessions.save_many``; returns sessions per second."""
    rnd = random.Random(n)
    spent = 0.0
    for start in range(0, n, 10_000):
        batch = [make_session(i, rnd) for i in range(start, min(n, start + 10_000))]
        began = time.perf_counter()
        await store.sessions.save_many(batch, ttl=FILL_TTL_MS / 1000)
        spent += time.perf_counter() - began
    return n / spent


# ---------------------------------------------------------------------- hand-written FT.*

SORT = ("SORTBY", "last_active", "DESC")


def _escape(value: str) -> str:
    return "".join("\\" + ch if ch.isascii() and not ch.isalnum() else ch for ch in value)


FILTERED = (
    f"@backend:{{{QUERY['backend']}}} @status:{{{QUERY['status']}}} "
    f"@current_flow_id:{{{_escape(QUERY['flow_id'])}}}"
)
BY_USER = f"@user_id:{{{_escape(USER)}}}"
WHERE = (F.backend == "custom") & ~(F.status == "completed") | (F.user_id == USER)
"""An expression shape (OR across fields, NOT): ``WHERE_TEXT`` is the same query by hand."""
WHERE_TEXT = f"((@backend:{{custom}} -(@status:{{completed}})) | ({BY_USER}))"


class Hand:
    """The same FT.* commands written by hand, with the documents validated."""

    def __init__(self, raw: Redis, alias: str, tail: list[Any]) -> None:
        self.raw, self.alias, self.tail = raw, alias, tail

    async def page(self, query: str, offset: int = 0) -> tuple[int, list[Session]]:
        reply = await self.raw.execute_command(
            "FT.SEARCH", self.alias, query, *SORT, "LIMIT", offset, PAGE, "RETURN", 1, "$",
            *self.tail,
        )  # fmt: skip
        docs = [Session.model_validate_json(reply[i + 1][1]) for i in range(1, len(reply), 2)]
        return int(reply[0]), docs

    async def count(self, query: str) -> int:
        reply = await self.raw.execute_command(
            "FT.SEARCH", self.alias, query, "LIMIT", 0, 0, *self.tail
        )
        return int(reply[0])

    async def stats(self) -> dict[str, dict[str, int]]:
        async with self.raw.pipeline(transaction=True) as pipe:
            pipe.execute_command("FT.SEARCH", self.alias, "*", "LIMIT", 0, 0, *self.tail)
            pipe.execute_command(
                "FT.AGGREGATE", self.alias, "*", "GROUPBY", 2, "@backend", "@status",
                "REDUCE", "COUNT", 0, "AS", "n", *self.tail,
            )  # fmt: skip
            total, groups = await pipe.execute()
        out: dict[str, dict[str, int]] = {"backend": {}, "status": {}}
        for row in groups[1:]:
            fields = dict(zip(row[::2], row[1::2], strict=True))
            n = int(fields[b"n"])
            for label in ("backend", "status"):
                value = fields.get(label.encode())
                if value is not None:
                    key = value.decode()
                    out[label][key] = out[label].get(key, 0) + n
        out["total"] = {"all": int(total[0])}
        return out


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

    def __init__(
        self, url: str, n: int, *, resolution: int = 1, library_fill: bool = False
    ) -> None:
        self.n = n
        self.resolution = resolution
        self.library_fill = library_fill
        self.save_many_rate: float | None = None
        self.namespace = fresh_namespace("benchq")
        # Generous timeouts: the scan of 1M keys and stats over 1M documents are slow.
        settings = Settings(url=url, namespace=self.namespace, command_timeout=120.0)
        self.store = Store(settings, auto_migrate=True)
        self.raw = Redis.from_url(url, protocol=2, socket_timeout=120.0)
        self.hand = Hand(self.raw, self.store.sessions.index_alias, [])  # tail: after connect

    @property
    def label(self) -> str:
        ties = f", timestamps in whole {self.resolution} s" if self.resolution > 1 else ""
        return f"{self.n:,} sessions{ties}"

    async def open(self) -> None:
        await self.store.connect()
        self.hand.tail = self.store.sessions._tail()
        start = time.perf_counter()
        if self.library_fill:
            self.save_many_rate = await fill_with_library(self.store, self.n)
        else:
            await fill(self.raw, self.namespace, self.n, self.resolution)
        console.print(f"filled {self.label} in {time.perf_counter() - start:.1f} s")

    async def close(self) -> None:
        await drop_namespace(self.raw, self.namespace)
        await self.raw.aclose()
        await self.store.close()

    def ops(self) -> dict[str, tuple[Op, Op, Op]]:
        """Operation name to (indexed, hand-written FT.*, scan)."""
        repo, raw, ns, hand = self.store.sessions, self.raw, self.namespace, self.hand
        return {
            PAGE_OP: (
                lambda: repo.find(**QUERY, limit=PAGE),
                lambda: hand.page(FILTERED),
                lambda: scan_find(raw, ns),
            ),
            "count(backend, status, flow_id)": (
                lambda: repo.count(**QUERY),
                lambda: hand.count(FILTERED),
                lambda: scan_count(raw, ns),
            ),
            "find(user_id) page of 50 (few matches)": (
                lambda: repo.find(user_id=USER, limit=PAGE),
                lambda: hand.page(BY_USER),
                lambda: scan_find_user(raw, ns),
            ),
            "stats()": (repo.stats, hand.stats, lambda: scan_stats(raw, ns)),
            "count(where=custom & ~completed | user_id)": (
                lambda: repo.count(where=WHERE),
                lambda: hand.count(WHERE_TEXT),
                lambda: scan_count(raw, ns),  # not timed: no scan baseline for this shape
            ),
            f"find() no filter, page of {PAGE}": (
                lambda: repo.find(limit=PAGE),
                lambda: hand.page("*"),
                lambda: scan_find_all(raw, ns),
            ),
            f"find() no filter, page of {PAGE} at offset 1,000": (
                lambda: repo.find(limit=PAGE, offset=1000),
                lambda: hand.page("*", 1000),
                lambda: scan_find_all(raw, ns),
            ),
        }

    def tie_ops(self) -> dict[str, tuple[Op, Op, Op]]:
        """Pages over tied timestamps: (indexed, hand-written FT.SEARCH, the old exact path)."""
        repo, hand = self.store.sessions, self.hand

        def old_exact(query: str, offset: int) -> Op:
            return lambda: repo._page_by_aggregate(query, "last_active", True, offset, PAGE, True)

        return {
            f"find() no filter, page of {PAGE}": (
                lambda: repo.find(limit=PAGE),
                lambda: hand.page("*"),
                old_exact("*", 0),
            ),
            f"find() no filter, page of {PAGE} at offset 1,000": (
                lambda: repo.find(limit=PAGE, offset=1000),
                lambda: hand.page("*", 1000),
                old_exact("*", 1000),
            ),
            PAGE_OP: (
                lambda: repo.find(**QUERY, limit=PAGE),
                lambda: hand.page(FILTERED),
                old_exact(FILTERED, 0),
            ),
        }

    async def memory(self, samples: int = 1000) -> dict[str, float]:
        """Bytes per session: the key, the index's share, and the original plain string."""
        repo = self.store.sessions
        ids = [f"session_{i:07d}" for i in random.Random(3).sample(range(self.n), samples)]
        key_bytes = 0
        plain_bytes = 0
        probe = f"{self.namespace}:plain-probe"
        for sid in ids:
            key_bytes += int(await self.raw.execute_command("MEMORY", "USAGE", repo.key(sid)))
            # The same session as the original code stored it: json.dumps text, SET.
            doc = await self.raw.execute_command("JSON.GET", repo.key(sid))
            await self.raw.set(probe, json.dumps(json.loads(doc)))
            plain_bytes += int(await self.raw.execute_command("MEMORY", "USAGE", probe))
        await self.raw.delete(probe)
        info = await self.raw.execute_command("FT.INFO", repo.index_alias)
        fields = dict(zip(info[::2], info[1::2], strict=False))
        index_mb = 0.0
        for name in (
            b"inverted_sz_mb", b"offset_vectors_sz_mb", b"doc_table_size_mb",
            b"sortable_values_size_mb", b"key_table_size_mb", b"tag_overhead_sz_mb",
            b"text_overhead_sz_mb", b"geoshapes_sz_mb",
        ):  # fmt: skip
            value = fields.get(name)
            if value is not None:
                index_mb += float(value)
        docs = max(1, int(fields.get(b"num_docs", 1)))
        return {
            "key": key_bytes / samples,
            "index": index_mb * 1024 * 1024 / docs,
            "plain": plain_bytes / samples,
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
        assert await repo.count(where=WHERE) == await self.hand.count(WHERE_TEXT), "where"


async def interleaved_medians(fns: list[Op], repeat: int) -> list[float]:
    """Median milliseconds of ``repeat`` runs of each of ``fns`` (after one warm-up run each).

    The functions run in turn, so that they all see the same load, in a new (seeded) order
    each repetition: in a fixed order each function always runs right after the same one, and
    a call right after a heavy query (the 100,000-session one) is systematically slower.
    """
    for fn in fns:
        await fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    shuffler = random.Random(len(fns))
    for _ in range(repeat):
        shuffler.shuffle(order)
        for i in order:
            start = time.perf_counter()
            await fns[i]()
            times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


async def run(url: str, args: argparse.Namespace) -> int:
    sizes = sorted(args.sizes)
    datasets = [Dataset(url, n, library_fill=n >= 1_000_000) for n in sizes]
    tie_n = min(max(n for n in sizes if n <= 100_000), 100_000) if args.ties else None
    tied = Dataset(url, tie_n, resolution=60) if tie_n else None
    results: dict[int, dict[str, Row]] = {n: {} for n in sizes}
    tie_rows: list[Row] = []
    memory: dict[str, float] | None = None
    failed: list[str] = []
    try:
        for ds in datasets:
            await ds.open()
        scanned = [ds for ds in datasets if args.scan_max is None or ds.n <= args.scan_max]
        for ds in scanned:
            await ds.check()
        # Indexed and hand-written figures: every size and both implementations in turn within
        # each repetition, so a burst of load on this shared machine hits all alike.
        for op in datasets[0].ops():
            fns = [f for ds in datasets for f in ds.ops()[op][:2]]
            medians = await interleaved_medians(fns, args.repeat)
            for k, ds in enumerate(datasets):
                indexed, hand = medians[2 * k], medians[2 * k + 1]
                results[ds.n][op] = Row(op, {"indexed": indexed, "hand": hand})
        for ds in scanned:
            for op, (_, _, scan) in ds.ops().items():
                if "offset" in op or "where" in op:
                    continue  # the scan sorts everything either way / no scan of this shape
                [ms] = await interleaved_medians([scan], args.scan_repeat)
                results[ds.n][op].values["scan"] = ms
        big = datasets[-1]
        if big.n >= 1_000_000:
            memory = await big.memory()
        if tied is not None:
            await tied.open()
            for op, fns in tied.tie_ops().items():
                indexed, hand, old = await interleaved_medians(list(fns), args.repeat)
                tie_rows.append(Row(op, {"indexed": indexed, "hand": hand, "old exact": old}))
            await tied.close()
    finally:
        for ds in datasets:
            await ds.close()

    for n in sizes:
        rows = list(results[n].values())
        print_table(
            f"{n:,} sessions (median ms; hand/indexed: >= 0.9 is the target)",
            ["indexed", "hand", "scan"],
            rows,
            unit="ms",
            ratio=("hand", "indexed"),
            ratio_label="hand/indexed",
        )
        for row in rows:
            ratio = row.values["hand"] / row.values["indexed"]
            if ratio < 0.9:
                failed.append(f"N={n:,} {row.name}: hand/indexed {ratio:.2f} < 0.9")
    if tied is not None:
        print_table(
            f"{tied.label} (median ms; old exact = the FT.AGGREGATE path that sorts every match)",
            ["indexed", "hand", "old exact"],
            tie_rows,
            unit="ms",
            ratio=("hand", "indexed"),
            ratio_label="hand/indexed",
        )
        for row in tie_rows:
            ratio = row.values["hand"] / row.values["indexed"]
            if ratio < 0.9:
                failed.append(f"ties {row.name}: hand/indexed {ratio:.2f} < 0.9")
    for n in sizes:
        row = results[n][PAGE_OP].values
        if "scan" not in row:
            console.print(f"N={n:>9,}: indexed page {row['indexed']:8.2f} ms (scan skipped)")
            continue
        speedup = row["scan"] / row["indexed"]
        console.print(f"N={n:>9,}: indexed page {row['indexed']:8.2f} ms, speed-up {speedup:,.0f}x")
        if n >= 100_000 and speedup < 100:
            failed.append(f"N={n:,}: page speed-up over the scan {speedup:.0f}x < 100x")
    for small, large in itertools.pairwise(sizes):
        for op in results[small]:
            growth = results[large][op].values["indexed"] / results[small][op].values["indexed"]
            console.print(f"growth of indexed {op}, {small:,} -> {large:,}: {growth:.2f}x")
            if op == PAGE_OP and (small, large) == (10_000, 100_000) and growth >= 2.0:
                failed.append(f"page growth 10k -> 100k {growth:.2f}x >= 2x")
    for ds in datasets:
        if ds.save_many_rate is not None:
            console.print(f"save_many while filling {ds.n:,}: {ds.save_many_rate:,.0f} sessions/s")
    if memory is not None:
        total = memory["key"] + memory["index"]
        console.print(
            f"memory per session at {sizes[-1]:,}: key {memory['key']:,.0f} B + index "
            f"{memory['index']:,.0f} B = {total:,.0f} B; the original plain string "
            f"{memory['plain']:,.0f} B ({total / memory['plain']:.2f}x)"
        )
    for line in failed:
        console.print(f"target missed: {line}", style="bold red")
    if args.check and failed:
        return 1
    return 0


def parse_sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, repeat=15, repeat_help="runs per indexed figure")
    parser.add_argument("--sizes", type=parse_sizes, default=[10_000, 100_000])
    parser.add_argument("--million", action="store_true", help="also run N = 1,000,000")
    parser.add_argument(
        "--ties", action="store_true", help="also time pages over whole-minute timestamps"
    )
    parser.add_argument("--scan-repeat", type=int, default=3, help="runs per scan figure")
    parser.add_argument(
        "--scan-max", type=int, default=None, help="skip the scan baseline above this N"
    )
    args = parser.parse_args(argv)
    if args.million and 1_000_000 not in args.sizes:
        args.sizes.append(1_000_000)
    if args.quick:
        args.sizes, args.repeat, args.scan_repeat = [1_000, 4_000], 5, 1
        args.ties = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with server_url() as url:
        return asyncio.run(run(url, args))


if __name__ == "__main__":
    sys.exit(main())
