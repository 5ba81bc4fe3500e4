"""Instruction counts per call of every bench_queries shape: the library against the same
FT.* command written by hand (what ``bench_queries.py`` times, but repeatable under load).

Run from the repository root, against a server that stays up between runs::

    REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/profile_queries.py fill
    REDIS_URL=... valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p.out \\
        python benchmarks/profile_queries.py measure          # instructions per call
    REDIS_URL=... python benchmarks/profile_queries.py cprofile "find(user_id)"

``fill`` writes two fixed namespaces (10,000 sessions, and 100,000 with timestamps in whole
minutes, as ``bench_queries --ties``), kept for two hours. ``measure`` runs each shape
``--calls`` times for the library and for the hand-written command, asking callgrind (through
``callgrind_control``) to dump its counters after each run, and prints the instructions per
call of both and their difference (the library's own cost). The garbage collector is off
while counting (``--gc`` leaves it on): collections land on some calls and not others.
Outside callgrind it prints microseconds instead (noisy). The server's work is not counted: it
runs in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import glob
import os
import pstats
import subprocess
import time
from collections.abc import Awaitable, Callable

from bench_queries import BY_USER, FILTERED, PAGE, QUERY, USER, WHERE, WHERE_TEXT, Hand, fill
from redis.asyncio import Redis

from flywheel_state import Settings, Store

NAMESPACE = "profq"
TIED = "profqties"
N = 10_000
TIED_N = 100_000  # what bench_queries --ties uses

Op = Callable[[], Awaitable[object]]


def shapes(store: Store, tied: Store, hand: Hand, tied_hand: Hand) -> dict[str, tuple[Op, Op]]:
    repo, trepo = store.sessions, tied.sessions
    return {
        "find(backend, status, flow_id)": (
            lambda: repo.find(**QUERY, limit=PAGE),
            lambda: hand.page(FILTERED),
        ),
        "count(backend, status, flow_id)": (
            lambda: repo.count(**QUERY),
            lambda: hand.count(FILTERED),
        ),
        "find(user_id)": (
            lambda: repo.find(user_id=USER, limit=PAGE),
            lambda: hand.page(BY_USER),
        ),
        "stats()": (repo.stats, hand.stats),
        "count(where)": (lambda: repo.count(where=WHERE), lambda: hand.count(WHERE_TEXT)),
        "find()": (lambda: repo.find(limit=PAGE), lambda: hand.page("*")),
        "find() offset 1000": (
            lambda: repo.find(limit=PAGE, offset=1000),
            lambda: hand.page("*", 1000),
        ),
        "ties find()": (lambda: trepo.find(limit=PAGE), lambda: tied_hand.page("*")),
        "ties find() offset 1000": (
            lambda: trepo.find(limit=PAGE, offset=1000),
            lambda: tied_hand.page("*", 1000),
        ),
        "ties find(backend, status, flow_id)": (
            lambda: trepo.find(**QUERY, limit=PAGE),
            lambda: tied_hand.page(FILTERED),
        ),
    }


async def _nothing() -> None:
    return None


class Dumper:
    """Callgrind dumps on demand; each dump holds the instructions since the previous one."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.out = os.environ.get("PROFILE_CG_OUT", "")
        self.seen = 0
        self.under_callgrind = bool(self.out)

    def dump(self) -> int:
        """Dump now and return the instructions counted since the last dump."""
        self.seen += 1
        subprocess.run(["callgrind_control", "-d", str(self.pid)], capture_output=True, check=True)
        pattern = self.out.replace("%p", str(self.pid)) + f".{self.seen}"
        while not glob.glob(pattern):
            time.sleep(0.05)
        time.sleep(0.1)
        with open(pattern) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        raise RuntimeError(f"no totals in {pattern}")


async def open_stores(url: str) -> tuple[Store, Store, Redis]:
    store = Store(Settings(url=url, namespace=NAMESPACE, command_timeout=120.0), auto_migrate=True)
    tied = Store(Settings(url=url, namespace=TIED, command_timeout=120.0), auto_migrate=True)
    await store.connect()
    await tied.connect()
    raw = Redis.from_url(url, protocol=2, socket_timeout=120.0)
    return store, tied, raw


async def main_async(args: argparse.Namespace) -> None:
    url = os.environ["REDIS_URL"]
    store, tied, raw = await open_stores(url)
    try:
        if args.command == "fill":
            if not args.only or "plain" in args.only:
                await fill(raw, NAMESPACE, N)
            if not args.only or "ties" in args.only:
                await fill(raw, TIED, TIED_N, resolution=60)
            print("filled")
            return
        hand = Hand(raw, store.sessions.index_alias, store.sessions._tail())
        tied_hand = Hand(raw, tied.sessions.index_alias, tied.sessions._tail())
        ops = shapes(store, tied, hand, tied_hand)
        wanted = [s for s in ops if not args.only or any(w in s for w in args.only)]
        if args.command == "cprofile":
            for name in wanted:
                lib, _ = ops[name]
                for _ in range(20):
                    await lib()
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.calls):
                    await lib()
                prof.disable()
                print(f"===== {name}")
                pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
            return
        dumper = Dumper()
        for name in wanted:
            for fn in ops[name]:
                for _ in range(3):
                    await fn()  # warm: caches, pooled connection, first-call imports
        if not args.gc:
            # Collections fire after a count of allocations, so they land on some calls and
            # not others: without them the counts repeat to the instruction.
            gc.collect()
            gc.disable()
        if dumper.under_callgrind:
            dumper.dump()
        overhead = 0.0
        if dumper.under_callgrind:
            # What a run costs besides its calls (the loop, the previous dump's tail): taken off
            # both columns, so that hand/library is the ratio of the calls themselves.
            for _ in range(args.calls):
                await _nothing()
            overhead = dumper.dump() / args.calls
        print(f"{'shape':40} {'library':>10} {'hand':>10} {'lib-hand':>10} {'hand/lib':>8}")
        for name in wanted:
            counts = []
            for fn in ops[name]:
                if not dumper.under_callgrind:
                    start = time.perf_counter()
                for _ in range(args.calls):
                    await fn()
                if dumper.under_callgrind:
                    counts.append(dumper.dump() / args.calls - overhead)
                else:
                    counts.append((time.perf_counter() - start) / args.calls * 1e6)
            lib, hnd = counts
            print(
                f"{name:40} {lib:10,.0f} {hnd:10,.0f} {lib - hnd:10,.0f} {hnd / lib:8.3f}",
                flush=True,
            )
    finally:
        await raw.aclose()
        await store.close()
        await tied.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fill", "measure", "cprofile"])
    parser.add_argument("only", nargs="*", help="shapes whose name contains one of these")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--gc", action="store_true", help="leave the garbage collector on")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
