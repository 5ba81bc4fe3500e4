"""Instruction counts of save / get / append_history, plain vs encrypted, under callgrind.

Wall-clock ratios (``bench_repository.py --crypto-only``) are noisy on a shared machine; the
instructions this process runs per call are not. Run it under callgrind with a dump at each
``getppid`` (this script calls ``os.getppid()`` between phases, nothing else here does), against
a server started outside valgrind::

    REDIS_URL=redis://127.0.0.1:6379/0 valgrind --tool=callgrind --dump-before=getppid \\
        --callgrind-out-file=/tmp/cg.out .venv/bin/python benchmarks/profile_crypto.py

Each dump ``/tmp/cg.out.N`` then holds one phase: the order is printed at the start (a warm-up
phase before each measured one). ``--summary`` reads the dumps and prints instructions per call
and the ratio encrypted / plain::

    .venv/bin/python benchmarks/profile_crypto.py --summary /tmp/cg.out

Without valgrind it runs the same calls (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import os
import re
import sys
from collections.abc import Awaitable, Callable

from _harness import drop_namespace, fresh_namespace, server_url
from bench_repository import make_result, make_session, session_ops
from redis.asyncio import Redis

from flywheel_state import Settings, Store
from flywheel_state.crypto import FieldCipher
from flywheel_state.models import ExecutionResult

CONFIGS = ("plain", "encrypted")
OPS = ("save", "get", "append", "save_result", "get_result")
KEYS = 20


def phases() -> list[tuple[str, str]]:
    return [(config, op) for op in OPS for config in CONFIGS]


async def run(url: str, n: int) -> None:
    key = bytes(range(32))
    ciphers = {
        "plain": None,
        "encrypted": FieldCipher({"k1": key}, "k1", compress_min_bytes=None),
    }
    stores = {
        name: await Store(
            Settings(url=url, namespace=fresh_namespace("profc"), cipher=cipher),
            auto_migrate=True,
        ).connect()
        for name, cipher in ciphers.items()
    }
    raw = Redis.from_url(url, protocol=2)
    try:
        ids = [f"s-{k}" for k in range(KEYS)]
        models = [make_session(sid, k) for k, sid in enumerate(ids)]
        results = [ExecutionResult(id=f"r-{k}", result=make_result(k, 50)) for k in range(KEYS)]
        for store in stores.values():
            await store.sessions.save_many(models)
            await store.executions.save_many(results)

        def ops(store: Store) -> dict[str, Callable[[int], Awaitable[object]]]:
            execs = store.executions

            async def save_result(i: int) -> object:
                return await execs.save(results[i % KEYS])

            async def get_result(i: int) -> object:
                return await execs.get(results[i % KEYS].id)

            return {
                **session_ops(store, models, ids),
                "save_result": save_result,
                "get_result": get_result,
            }

        table = {name: ops(store) for name, store in stores.items()}
        for config, op in phases():
            fn = table[config][op]
            if op == "append":  # every append phase starts from 20-entry sessions
                await stores[config].sessions.save_many(models)
            for i in range(n // 4):  # warm-up: caches, lazily built adapters
                await fn(i)
            gc.collect()
            os.getppid()  # dump: the warm-up
            for i in range(n):
                await fn(i)
            os.getppid()  # dump: the measured phase
    finally:
        for store in stores.values():
            await drop_namespace(raw, store.namespace)
            await store.close()
        await raw.aclose()


def summary(prefix: str, n: int) -> None:
    files = sorted(glob.glob(prefix + ".*"), key=lambda f: int(f.rsplit(".", 1)[1]))
    counts = []
    for path in files:
        with open(path) as f:
            text = f.read()
        match = re.search(r"^summary: (\d+)", text, re.M) or re.search(
            r"^totals: (\d+)", text, re.M
        )
        counts.append(int(match.group(1)) if match else 0)
    # Dumps: 1 = start-up up to the first warm-up's end, then measured, warm-up, measured...
    measured = counts[1::2]
    per: dict[tuple[str, str], float] = {}
    for (config, op), count in zip(phases(), measured, strict=False):
        per[(config, op)] = count / n
    print(f"{'op':<12} {'plain Ir/call':>14} {'encrypted Ir/call':>18} {'ratio':>6}")
    for op in OPS:
        p, e = per.get(("plain", op)), per.get(("encrypted", op))
        if p and e:
            print(f"{op:<12} {p:>14,.0f} {e:>18,.0f} {e / p:>6.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="calls per measured phase")
    parser.add_argument("--summary", metavar="PREFIX", help="read the callgrind dumps")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary, args.n)
        return 0
    print("phases (each after a warm-up):", ", ".join(f"{c}/{o}" for c, o in phases()))
    with server_url() as url:
        asyncio.run(run(url, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
