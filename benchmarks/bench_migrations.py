"""Data migration benchmark: importing legacy sessions with ``0002_import_legacy_strings``.

Run from the repository root::

    python benchmarks/bench_migrations.py              # 20k and 100k sessions (about a minute)
    python benchmarks/bench_migrations.py --quick      # 2k and 5k, for CI
    REDIS_URL=redis://host:6379/0 python benchmarks/bench_migrations.py

For each size it writes that many legacy session strings (the original code's shapes A and B
mixed 70/30, both datetime formats, history of 2-6 free-form items, 1% unknown statuses, TTLs of
1-7 days) with pipelined SET EX (what SETEX does) into a fresh namespace whose indexes exist
(revision 0001), then runs ``store.migrations.upgrade("0002")`` in a child process and prints
documents per second and the child's peak RSS (``ru_maxrss``), with its RSS before the
migration: the growth between the two sizes shows the runner's memory stays bounded (batches,
not the whole keyspace).

On the largest size it also times, on the same server in the same run, with the same
conversion function (the frozen mapping of 0002):

(b) ``redis-py``: a hand-written loop: SCAN, a pipeline of GET + PTTL per batch, the conversion,
    and one MULTI per batch of DEL + JSON.SET + PEXPIRE per key (no checkpoint, no lock, no
    compare-before-write);
(c) ``redis-om``: the same reads, then a redis-om 1.2 JsonModel per session, ``save()`` +
    ``expire()`` into a pipeline per batch (after DEL of the string).

With ``--check`` the exit status is 1 when the library imports fewer than 20,000 documents/s at
the largest size (issue 13's target, at 100k sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

from _baselines import om_model
from _harness import (
    Row,
    bench_parser,
    console,
    drop_namespace,
    fresh_namespace,
    print_cells,
    print_table,
    random_text,
    server_url,
)
from redis.asyncio import Redis

from flywheel_state import Store

TARGET_DOCS_PER_S = 20_000
BATCH = 500
STATUSES = ("running", "completed", "pending", "failed", "active", "cancelled")
_WORDS = (
    "structural",
    "tension",
    "creative",
    "orientation",
    "vision",
    "reality",
    "flow",
    "chart",
    "agent",
    "session",
)

legacy = importlib.import_module("flywheel_state.migrations.versions.0002_import_legacy_strings")


# ---------------------------------------------------------------------- legacy data


def _when(rng: random.Random, base: datetime, space: bool) -> str:
    value = base + timedelta(seconds=rng.randint(0, 86400), microseconds=rng.randint(0, 999999))
    return str(value) if space else value.isoformat()


def legacy_session(i: int, rng: random.Random) -> dict[str, Any]:
    """One session as the original code wrote it (shape A or B)."""
    base = datetime(2025, 11, 1) + timedelta(days=rng.randint(0, 20))
    history: list[dict[str, Any]] = []
    for j in range(rng.randint(2, 6)):
        if j % 3 == 2:
            history.append({"q": random_text(rng, 8, _WORDS), "a": random_text(rng, 20, _WORDS)})
        else:
            history.append(
                {
                    "role": "user" if j % 2 == 0 else "assistant",
                    "content": random_text(rng, rng.randint(5, 30), _WORDS),
                    "timestamp": _when(rng, base, False),
                }
            )
    status = "paused" if rng.random() < 0.01 else rng.choice(STATUSES)
    doc: dict[str, Any] = {
        "id": f"session_{i}",
        "backend": rng.choice(("flowise", "langflow", "custom")),
        "backend_session_id": f"backend_{i}",
        "status": status,
        "current_flow_id": rng.choice(("csv2507", "rise_framework", "structural_thinker")),
        "context": {"topic": random_text(rng, 3, _WORDS), "turn": rng.randint(1, 40)},
        "history": history,
        "metadata": {"source": "mcp"} if rng.random() < 0.5 else {},
    }
    created = _when(rng, base, space=rng.random() < 0.5)
    last_active = _when(rng, base, space=False)
    if rng.random() < 0.3:  # shape B
        doc = {"_schema_version": "1.0", **doc}
        doc["metadata"] = {**doc["metadata"], "created_at": created, "last_active": last_active}
    else:
        doc["created_at"] = created
        doc["last_active"] = last_active
    return doc


async def write_legacy(client: Redis, namespace: str, n: int, seed: int = 7) -> None:
    """Write ``n`` legacy session strings with pipelined SET EX (what SETEX does)."""
    rng = random.Random(seed)
    for start in range(0, n, 2000):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 2000)):
                ttl = rng.randint(86400, 7 * 86400)
                pipe.set(
                    f"{namespace}:session:session_{i}", json.dumps(legacy_session(i, rng)), ex=ttl
                )
            await pipe.execute()


async def prepare(url: str, n: int) -> str:
    """A fresh namespace at revision 0001 holding ``n`` legacy sessions."""
    namespace = fresh_namespace("mig")
    store = Store(url=url, namespace=namespace)
    try:
        await store.migrations.upgrade("0001")
        await write_legacy(store.client, namespace, n)
    finally:
        await store.close()
    return namespace


async def count_documents(client: Redis, namespace: str) -> int:
    """The JSON session documents in the namespace."""
    total, cursor = 0, 0
    while True:
        cursor, keys = await client.scan(
            cursor, match=f"{namespace}:session:*", count=5000, _type="ReJSON-RL"
        )
        total += len(keys)
        if cursor == 0:
            return total


# ---------------------------------------------------------------------- (a) the library, in a child


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def child(url: str, namespace: str) -> dict[str, Any]:
    """Run 0002 in this process; report time and memory."""
    store = Store(url=url, namespace=namespace)
    await store.migrations.status()  # imports and connection done before measuring
    rss_before = _rss_kb()
    start = time.perf_counter()
    report = await store.migrations.upgrade("0002")
    seconds = time.perf_counter() - start
    await store.close()
    return {
        "changed": report.documents_changed,
        "problems": report.steps[0].problem_count,
        "seconds": seconds,
        "rss_before_kb": rss_before,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_child(url: str, namespace: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, namespace],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------- (b) and (c): reading


async def converted_batches(
    client: Redis, namespace: str
) -> AsyncIterator[list[tuple[Any, str, int]]]:
    """The namespace's legacy strings as 0002 converts them, one SCAN batch at a time.

    Each batch is read with one pipeline of GET + PTTL and holds ``(key, document JSON, pttl)``
    for every string the frozen conversion of 0002 turns into a document (the others, and keys
    gone in between, are left out).
    """
    prefix = f"{namespace}:session:"
    now = time.time()
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=f"{prefix}*", count=1000, _type="string")
        if keys:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.pttl(key)
                values = await pipe.execute()
            batch = []
            for n, key in enumerate(keys):
                raw, pttl = values[2 * n], values[2 * n + 1]
                if raw is None:
                    continue
                text_key = key.decode() if isinstance(key, bytes) else key
                sid = text_key[len(prefix) :]
                converted = legacy.import_session(text_key, sid, json.loads(raw), now).value
                if converted is not None:
                    batch.append((key, converted, pttl))
            yield batch
        if cursor == 0:
            return


# ---------------------------------------------------------------------- (b) hand-written redis-py


async def redis_py_loop(url: str, namespace: str) -> int:
    done = 0
    async with Redis.from_url(url) as client:
        async for batch in converted_batches(client, namespace):
            async with client.pipeline(transaction=True) as pipe:
                for key, new, pttl in batch:
                    pipe.delete(key)
                    pipe.execute_command("JSON.SET", key, "$", new)
                    if pttl > 0:
                        pipe.pexpire(key, pttl)
                await pipe.execute()
            done += len(batch)
    return done


# ---------------------------------------------------------------------- (c) plain redis-om


async def redis_om_loop(url: str, namespace: str) -> int:
    done = 0
    async with Redis.from_url(url, decode_responses=True) as client:
        om = om_model(client, namespace)
        async for batch in converted_batches(client, namespace):
            async with client.pipeline(transaction=False) as pipe:
                for key, new, pttl in batch:
                    model = om.model_validate_json(new)
                    pipe.delete(key)
                    await model.save(pipeline=pipe)
                    if pttl > 0:
                        await model.expire(max(1, pttl // 1000), pipeline=pipe)
                await pipe.execute()
            done += len(batch)
    return done


# ---------------------------------------------------------------------- main


async def timed_baseline(
    url: str, admin: Redis, n: int, fn: Callable[[str, str], Any], name: str
) -> float:
    namespace = await prepare(url, n)
    try:
        start = time.perf_counter()
        done = await fn(url, namespace)
        seconds = time.perf_counter() - start
        converted = await count_documents(admin, namespace)
        if converted != n or done != n:
            console.print(f"[red]{name}: converted {converted} of {n}[/red]")
        return n / seconds
    finally:
        await drop_namespace(admin, namespace)


async def run(url: str, args: argparse.Namespace) -> int:
    async with Redis.from_url(url) as admin:
        rows: list[list[str]] = []
        rates: dict[int, float] = {}
        for n in args.sizes:
            namespace = await prepare(url, n)
            try:
                result = run_child(url, namespace)
                converted = await count_documents(admin, namespace)
            finally:
                await drop_namespace(admin, namespace)
            if converted != n or result["changed"] != n:
                console.print(
                    f"[red]{n:,}: rewrote {result['changed']:,}, found {converted:,}[/red]"
                )
            rate = n / result["seconds"]
            rates[n] = rate
            rows.append(
                [
                    f"{n:,}",
                    f"{result['changed']:,}",
                    f"{result['seconds']:.2f}",
                    f"{rate:,.0f}",
                    f"{result['rss_before_kb'] / 1024:.1f}",
                    f"{result['peak_rss_kb'] / 1024:.1f}",
                    f"{(result['peak_rss_kb'] - result['rss_before_kb']) / 1024:.1f}",
                ]
            )
        print_cells(
            "0002_import_legacy_strings (flywheel-state runner, child process)",
            [
                "sessions",
                "rewritten",
                "seconds",
                "docs/s",
                "RSS before MB",
                "peak RSS MB",
                "growth MB",
            ],
            rows,
        )

        largest = max(args.sizes)
        values = {"flywheel": rates[largest]}
        if not args.no_baselines:
            for name, loop in (("redis-py", redis_py_loop), ("redis-om", redis_om_loop)):
                values[name] = await timed_baseline(url, admin, largest, loop, name)
    print_table(
        f"legacy import of {largest:,} sessions, documents/s (same server, same run)",
        list(values),
        [Row("import 0002", values)],
        unit="docs/s",
        ratio=("flywheel", "redis-py") if "redis-py" in values else None,
        ratio_label="flywheel / redis-py",
    )
    if "redis-om" in values:
        console.print(f"flywheel / redis-om: {values['flywheel'] / values['redis-om']:.2f}")
    ok = rates[largest] >= TARGET_DOCS_PER_S
    console.print(
        f"target {TARGET_DOCS_PER_S:,} docs/s: "
        + ("[green]met[/green]" if ok else "[red]missed[/red]")
    )
    return 0 if ok or not args.check else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        __doc__, quick_help="2k and 5k sessions", check_help="exit 1 below the target"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--no-baselines", action="store_true", help="skip (b) and (c)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [2_000, 5_000]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with server_url() as url:
        return asyncio.run(run(url, args))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(child(sys.argv[2], sys.argv[3]))))
        sys.exit(0)
    sys.exit(main())
