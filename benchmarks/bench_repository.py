"""Repository benchmark: flywheel-state against hand-written redis-py and plain redis-om.

Run from the repository root::

    python benchmarks/bench_repository.py            # full run (about 1-2 minutes)
    python benchmarks/bench_repository.py --quick    # a few seconds, for CI
    REDIS_URL=redis://host:6379/0 python benchmarks/bench_repository.py

It prints one table of operations per second for a realistic session (a context of a few KB and
20 history entries) for three implementations on the same server, in the same run:

(a) ``flywheel``: this library (``store.sessions``);
(b) ``redis-py``: hand-written redis-py doing the Redis commands that give the same guarantees,
    with ``json.dumps`` / ``json.loads``: JSON.SET + PEXPIRE in one MULTI/EXEC for a save,
    JSON.GET for a get, JSON.SET on the paths (+ ``$.updated_at``) + PEXPIRE in a MULTI for an
    update, JSON.ARRAPPEND + JSON.SET ``$.last_active`` + PEXPIRE in a MULTI for an append, and
    pipelines of the same for the batch operations;
(c) ``redis-om``: plain redis-om 1.2 model methods on an equivalent JsonModel: ``save()`` +
    ``expire()`` (two round trips, not atomic), ``get()``, ``update()`` (rewrites the whole
    document, keeps the TTL), get + append + ``save()`` (no partial append), ``add()`` +
    ``expire()`` in a pipeline, and 50 concurrent ``get()`` calls (no batch get);

and the ratio (a)/(b). All keys live under the library's ``{ns}:session:`` prefix, so every
implementation pays for the same RediSearch indexing. Single operations run one after the other
on one connection (the latency-bound case); the ``x50 tasks`` rows run 50 concurrent tasks.
Every figure is the best of ``--repeat`` runs, and each run alternates between the
implementations every 250 calls so that load from other processes hits them alike. redis-om,
much slower, makes a quarter of the calls and its batches hold at most 2,000 records (run once);
its figures are per call all the same. The prepared inputs are frozen out of the garbage
collector's reach (``gc.freeze()``): what each implementation allocates is still collected;
``get_many`` runs on an unfrozen heap holding only the ids (see ``run``).
Then it times ``append_history`` on sessions holding 1,000 entries against sessions holding 10:
the time per append must not grow with the history (the document is never rewritten).

It also times ``history(id, last=20)`` on sessions of 1,000 entries against a whole ``get`` of
a 20-entry session (interleaved), and prints a concurrency table: 1, 10, 50 and 200 tasks
calling ``get`` and ``save``, throughput and p99 latency, library (its default pool: at most 50
connections, a call waits for a free one) against hand-written redis-py on a default
(non-blocking) pool of 200 connections (redis-py's default of 100 raises MaxConnectionsError at
200 tasks). ``--quick`` runs 1 and 10 tasks only.

Last, the cost of observability and of the change feed, as ratios against the plain library
in the same run (sequential calls on one connection, alternating every 250 calls): ``plain``
calls the repository methods without the OpenTelemetry wrapper (what runs when
opentelemetry-api is not installed); ``otel no-op`` the instrumented methods with no tracer
or meter provider set (the API's no-op); ``events=True`` the plain methods of a Store that
writes change events; then, once the SDK's providers are set (with an in-memory span exporter
and metric reader: every span and point is really recorded), ``otel SDK`` against ``plain``
again. Targets: no-op >= 0.97 of plain, events >= 0.85.

With ``--check`` the exit status is 1 when a target is missed: (a)/(b) >= 0.9 for the single
operations, >= 0.8 for save_many / get_many, append at 1,000 entries <= 1.5x the time at 10,
the last-20 read of a 1,000-entry session <= 1.2x a whole get of a 20-entry one, and the two
overhead targets above.
Last, the cost of encryption at rest (``Store(..., cipher=FieldCipher(...))``): save, get and
append_history of the same realistic sessions on a plain store, an encrypting one (compression
off, default plaintext cache: the values it sealed or opened before are not decrypted again), the
same with the cache off (``cache_bytes=0``: every read decrypts, as in a process that never saw
the session), and one that also compresses, cache off (threshold 1 KB, so the ~3 KB context is
compressed), each as a time ratio to the plain store in the same run (target: encryption
<= 1.3x, checked on the default configuration); then what compression saves on large execution
results (stored bytes, plain vs compressed + encrypted) and its cost on save / get of those
results. The synthetic prose repeats a small vocabulary, so it compresses better than most
real text: read the byte ratios as an upper bound.

With ``--check`` the exit status is 1 when a target is missed: (a)/(b) >= 0.8 for the single
operations and for save_many / get_many, append at 1,000 entries <= 1.5x the time at 10, and
encryption within 1.3x of the plain store on save, get and append_history.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from _baselines import OmHistoryEntry, om_model, to_om
from _harness import (
    PROSE_WORDS,
    Row,
    bench_parser,
    console,
    drop_namespace,
    fresh_namespace,
    print_cells,
    print_table,
    server_url,
)
from redis.asyncio import Redis

from flywheel_state import Settings, Store
from flywheel_state.crypto import FieldCipher
from flywheel_state.models import ExecutionResult, Session, SessionStatus
from flywheel_state.repositories.base import BATCH_SIZE, Repository
from flywheel_state.repositories.sessions import SessionRepository

TTL = timedelta(days=7)
TTL_MS = int(TTL.total_seconds() * 1000)
KEYS = 100  # single operations rotate over this many sessions per implementation
CONCURRENCY = 50
CHUNK = 250  # calls per implementation before switching to the next one
OM_BATCH = 2000  # redis-om's batch runs take seconds: it saves and reads at most this many
IMPLS = ("flywheel", "redis-py", "redis-om")
A, B, C = IMPLS

Op = Callable[[int], Awaitable[object]]


# ---------------------------------------------------------------------- realistic data


def _text(seed: int, length: int) -> str:
    """Deterministic prose of ``length`` characters: the same seed gives the same text."""
    out: list[str] = []
    i = seed
    while sum(len(w) + 1 for w in out) < length:
        out.append(PROSE_WORDS[i % len(PROSE_WORDS)])
        i = i * 7 + 3
    return " ".join(out)[:length]


def make_context(seed: int) -> dict[str, Any]:
    """A context of about 3 KB: retrieved documents, variables and flags."""
    return {
        "topic": "structural tension",
        "documents": [
            {
                "id": f"doc-{seed}-{j}",
                "title": _text(seed + j, 40),
                "snippet": _text(seed * 3 + j, 160),
                "score": round(0.9 - j * 0.05, 3),
            }
            for j in range(12)
        ],
        "variables": {f"var_{k}": k * seed % 97 for k in range(20)},
        "flags": {"streaming": True, "memory": "window", "temperature": 0.2},
    }


def make_history(seed: int, count: int, start: float) -> list[dict[str, Any]]:
    """``count`` alternating user/assistant turns, 80-300 characters each."""
    return [
        {
            "role": "user" if j % 2 == 0 else "assistant",
            "content": _text(seed + j, 80 if j % 2 == 0 else 300),
            "timestamp": start + j,
        }
        for j in range(count)
    ]


def make_session(sid: str, seed: int, history: int = 20) -> Session:
    now = time.time()
    return Session.model_validate(
        {
            "id": sid,
            "backend": "flowise",
            "backend_session_id": f"fw-{seed}",
            "status": "active",
            "current_flow_id": "csv2507",
            "user_id": f"user-{seed % 50}",
            "context": make_context(seed),
            "history": make_history(seed, history, now - 3600),
            "metadata": {"client": "mcp", "version": "2.1", "tags": ["beta", "eu"]},
            "created_at": now - 3600,
            "updated_at": now,
            "last_active": now,
            "total_queries": history // 2,
            "successful_queries": history // 2,
            "total_response_time": 12.5,
        }
    )


def make_entry(i: int) -> dict[str, Any]:
    return {"role": "user", "content": _text(i, 120)}


def session_ops(store: Store, models: list[Session], ids: list[str]) -> dict[str, Op]:
    """save / get / append_history on ``store``'s sessions, call ``i`` on record ``i % len``."""
    repo, n = store.sessions, len(ids)

    async def save(i: int) -> object:
        return await repo.save(models[i % n])

    async def get(i: int) -> object:
        return await repo.get(ids[i % n])

    async def append(i: int) -> object:
        return await repo.append_history(ids[i % n], make_entry(i))

    return {"save": save, "get": get, "append": append}


# ---------------------------------------------------------------------- the three implementations


class Bench:
    """Holds the clients and prepared data of one run."""

    def __init__(self, store: Store, raw: Redis, om_client: Redis, namespace: str) -> None:
        self.store = store
        self.repo = store.sessions
        self.raw = raw
        self.om = om_model(om_client, namespace)
        self.prefix = f"{namespace}:session:"
        self.ids = {impl: [f"{impl}-{k}" for k in range(KEYS)] for impl in IMPLS}
        self.models = [make_session(i, k) for k, i in enumerate(self.ids[A])]
        self.docs = [json.loads(m.model_dump_json()) for m in self.models]
        for doc, sid in zip(self.docs, self.ids[B], strict=True):
            doc["id"] = sid
        pairs = zip(self.models, self.ids[C], strict=True)
        self.om_models = [to_om(self.om, m, sid) for m, sid in pairs]

    # --- reset: every single-op phase starts from freshly saved 20-entry sessions

    async def reset(self) -> None:
        await self.repo.save_many([make_session(i, k) for k, i in enumerate(self.ids[A])])
        async with self.raw.pipeline(transaction=True) as pipe:
            for doc in self.docs:
                key = self.prefix + doc["id"]
                pipe.execute_command("JSON.SET", key, "$", json.dumps(doc))
                pipe.pexpire(key, TTL_MS)
            await pipe.execute()
        om_client = self.om._meta.database
        async with om_client.pipeline(transaction=False) as pipe:
            await self.om.add(self.om_models, pipeline=pipe)
            for m in self.om_models:
                await m.expire(int(TTL.total_seconds()), pipeline=pipe)
            await pipe.execute()

    # --- (a) flywheel-state

    def a_ops(self) -> dict[str, Op]:
        repo, ids, models = self.repo, self.ids[A], self.models
        statuses = [SessionStatus.RUNNING, SessionStatus.IDLE]

        async def save(i: int) -> object:
            return await repo.save(models[i % KEYS])

        async def get(i: int) -> object:
            return await repo.get(ids[i % KEYS])

        async def update1(i: int) -> object:
            return await repo.update(ids[i % KEYS], status=statuses[i & 1])

        async def update2(i: int) -> object:
            return await repo.update(
                ids[i % KEYS], status=statuses[i & 1], current_flow_id=f"flow-{i & 7}"
            )

        async def append(i: int) -> object:
            return await repo.append_history(ids[i % KEYS], make_entry(i))

        return {"save": save, "get": get, "update1": update1, "update2": update2, "append": append}

    # --- (b) hand-written redis-py

    def b_ops(self) -> dict[str, Op]:
        raw, docs, prefix = self.raw, self.docs, self.prefix
        keys = [prefix + d["id"] for d in docs]
        statuses = ["running", "idle"]

        async def save(i: int) -> object:
            doc = docs[i % KEYS]
            doc["updated_at"] = time.time()
            key = prefix + doc["id"]
            async with raw.pipeline(transaction=True) as pipe:
                pipe.execute_command("JSON.SET", key, "$", json.dumps(doc))
                pipe.pexpire(key, TTL_MS)
                return await pipe.execute()

        async def get(i: int) -> object:
            raw_doc = await raw.execute_command("JSON.GET", keys[i % KEYS])
            return json.loads(raw_doc)

        async def update1(i: int) -> object:
            key = keys[i % KEYS]
            async with raw.pipeline(transaction=True) as pipe:
                pipe.execute_command("JSON.SET", key, "$.status", json.dumps(statuses[i & 1]))
                pipe.execute_command("JSON.SET", key, "$.updated_at", json.dumps(time.time()))
                pipe.pexpire(key, TTL_MS)
                return await pipe.execute()

        async def update2(i: int) -> object:
            key = keys[i % KEYS]
            async with raw.pipeline(transaction=True) as pipe:
                pipe.execute_command("JSON.SET", key, "$.status", json.dumps(statuses[i & 1]))
                pipe.execute_command(
                    "JSON.SET", key, "$.current_flow_id", json.dumps(f"flow-{i & 7}")
                )
                pipe.execute_command("JSON.SET", key, "$.updated_at", json.dumps(time.time()))
                pipe.pexpire(key, TTL_MS)
                return await pipe.execute()

        async def append(i: int) -> object:
            key = keys[i % KEYS]
            now = time.time()
            entry = make_entry(i)
            entry["timestamp"] = now
            async with raw.pipeline(transaction=True) as pipe:
                pipe.execute_command("JSON.ARRAPPEND", key, "$.history", json.dumps(entry))
                pipe.execute_command("JSON.SET", key, "$.last_active", json.dumps(now))
                pipe.pexpire(key, TTL_MS)
                return await pipe.execute()

        return {"save": save, "get": get, "update1": update1, "update2": update2, "append": append}

    # --- (c) plain redis-om

    def c_ops(self) -> dict[str, Op]:
        om, models, ids = self.om, self.om_models, self.ids[C]
        ttl_s = int(TTL.total_seconds())
        statuses = [SessionStatus.RUNNING, SessionStatus.IDLE]

        async def save(i: int) -> object:
            m = models[i % KEYS]
            m.updated_at = datetime.now(timezone.utc)
            await m.save()
            return await m.expire(ttl_s)

        async def get(i: int) -> object:
            return await om.get(ids[i % KEYS])

        # update() on an instance the caller holds (redis-om rewrites the whole document)
        async def update1(i: int) -> object:
            m = models[i % KEYS]
            return await m.update(status=statuses[i & 1], updated_at=datetime.now(timezone.utc))

        async def update2(i: int) -> object:
            m = models[i % KEYS]
            return await m.update(
                status=statuses[i & 1],
                current_flow_id=f"flow-{i & 7}",
                updated_at=datetime.now(timezone.utc),
            )

        async def append(i: int) -> object:
            m = await om.get(ids[i % KEYS])
            now = datetime.now(timezone.utc)
            m.history.append(OmHistoryEntry(**make_entry(i), timestamp=now))
            m.last_active = now
            return await m.save()

        return {"save": save, "get": get, "update1": update1, "update2": update2, "append": append}

    # --- batches

    def batch_data(self, n: int) -> dict[str, Any]:
        sessions = [make_session(f"{A}-many-{k}", k) for k in range(n)]
        docs = []
        for k, s in enumerate(sessions):
            doc = json.loads(s.model_dump_json())
            doc["id"] = f"{B}-many-{k}"
            docs.append(doc)
        oms = [to_om(self.om, s, f"{C}-many-{k}") for k, s in enumerate(sessions[:OM_BATCH])]
        return {A: sessions, B: docs, C: oms}

    async def a_save_many(self, sessions: list[Session]) -> object:
        return await self.repo.save_many(sessions)

    async def a_get_many(self, ids: list[str]) -> object:
        return await self.repo.get_many(ids)

    async def b_save_many(self, docs: list[dict[str, Any]]) -> object:
        now = time.time()
        for start in range(0, len(docs), BATCH_SIZE):
            async with self.raw.pipeline(transaction=True) as pipe:
                for doc in docs[start : start + BATCH_SIZE]:
                    doc["updated_at"] = now
                    key = self.prefix + doc["id"]
                    pipe.execute_command("JSON.SET", key, "$", json.dumps(doc))
                    pipe.pexpire(key, TTL_MS)
                await pipe.execute()
        return docs

    async def b_get_many(self, ids: list[str]) -> object:
        out: list[Any] = []
        for start in range(0, len(ids), BATCH_SIZE):
            async with self.raw.pipeline(transaction=False) as pipe:
                for sid in ids[start : start + BATCH_SIZE]:
                    pipe.execute_command("JSON.GET", self.prefix + sid)
                replies = await pipe.execute()
            out.extend(None if r is None else json.loads(r) for r in replies)
        return out

    async def c_save_many(self, oms: list[Any]) -> object:
        ttl_s = int(TTL.total_seconds())
        om_client = self.om._meta.database
        for start in range(0, len(oms), BATCH_SIZE):
            batch = oms[start : start + BATCH_SIZE]
            async with om_client.pipeline(transaction=False) as pipe:
                await self.om.add(batch, pipeline=pipe)
                for m in batch:
                    await m.expire(ttl_s, pipeline=pipe)
                await pipe.execute()
        return oms

    async def c_get_many(self, ids: list[str]) -> object:
        # redis-om has no batch get: CONCURRENCY concurrent get() calls.
        out: list[Any] = [None] * len(ids)

        async def worker(w: int) -> None:
            for k in range(w, len(ids), CONCURRENCY):
                out[k] = await self.om.get(ids[k])

        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
        return out


# ---------------------------------------------------------------------- timing


async def spend(op: Op, start: int, count: int, tasks: int) -> float:
    """Seconds taken by calls ``start .. start + count - 1`` of ``op``, over ``tasks`` tasks."""
    began = time.perf_counter()
    if tasks == 1:
        for i in range(start, start + count):
            await op(i)
    else:

        async def worker(w: int) -> None:
            for i in range(start + w, start + count, tasks):
                await op(i)

        await asyncio.gather(*(worker(w) for w in range(tasks)))
    return time.perf_counter() - began


async def compare(
    ops: dict[str, Op], n: int, *, tasks: int, repeat: int, before_run: Callable[[], Any]
) -> dict[str, float]:
    """Best ops/s of ``repeat`` runs of ``n`` calls per implementation.

    Each run is cut into chunks that alternate between the implementations, so that a burst of
    load on the machine hits all of them alike. redis-om, much slower, makes a quarter of the
    calls of each chunk (its figure is still per call).
    """
    best = dict.fromkeys(ops, 0.0)
    for _ in range(repeat):
        await before_run()
        spent = dict.fromkeys(ops, 0.0)
        calls = dict.fromkeys(ops, 0)
        done = 0
        while done < n:
            size = min(CHUNK, n - done)
            order = list(ops) if (done // CHUNK) % 2 == 0 else list(reversed(ops))
            for impl in order:
                count = size if impl != C else max(tasks, size // 4)
                spent[impl] += await spend(ops[impl], done, count, tasks)
                calls[impl] += count
            done += size
        for impl in ops:
            best[impl] = max(best[impl], calls[impl] / spent[impl])
    return best


async def append_scaling(
    bench: Bench, n: int, repeat: int, sizes: tuple[int, int]
) -> dict[str, dict[int, float]]:
    """Microseconds per append on sessions holding ``sizes`` entries, for (a) and (b).

    Each run starts from fresh sessions of exactly those sizes and alternates between sizes and
    implementations round by round; about ``n`` appends per size and implementation.
    """
    per_size = 20
    rounds = max(1, n // per_size)
    ids = {size: [f"scale-{size}-{k}" for k in range(per_size)] for size in sizes}
    raw_keys = {size: [f"{bench.prefix}raw-scale-{size}-{k}" for k in ids[size]] for size in sizes}

    async def a_append(size: int, r: int) -> None:
        for sid in ids[size]:
            await bench.repo.append_history(sid, make_entry(r))

    async def b_append(size: int, r: int) -> None:
        for key in raw_keys[size]:
            now = time.time()
            entry = {**make_entry(r), "timestamp": now}
            async with bench.raw.pipeline(transaction=True) as pipe:
                pipe.execute_command("JSON.ARRAPPEND", key, "$.history", json.dumps(entry))
                pipe.execute_command("JSON.SET", key, "$.last_active", json.dumps(now))
                pipe.pexpire(key, TTL_MS)
                await pipe.execute()

    appenders = {A: a_append, B: b_append}
    best = {impl: dict.fromkeys(sizes, float("inf")) for impl in appenders}
    for _ in range(repeat):
        for size in sizes:
            sessions = [make_session(sid, k, history=size) for k, sid in enumerate(ids[size])]
            await bench.repo.save_many(sessions)
            async with bench.raw.pipeline(transaction=True) as pipe:
                for key, s in zip(raw_keys[size], sessions, strict=True):
                    pipe.execute_command("JSON.SET", key, "$", s.model_dump_json())
                    pipe.pexpire(key, TTL_MS)
                await pipe.execute()
        spent = {impl: dict.fromkeys(sizes, 0.0) for impl in appenders}
        for r in range(rounds):
            for size in sizes if r % 2 == 0 else tuple(reversed(sizes)):
                for impl, append in appenders.items():
                    began = time.perf_counter()
                    await append(size, r)
                    spent[impl][size] += time.perf_counter() - began
        for impl in appenders:
            for size in sizes:
                best[impl][size] = min(best[impl][size], spent[impl][size] / (rounds * per_size))
    keys = [bench.repo.key(i) for size in sizes for i in ids[size]]
    await bench.raw.delete(*keys, *(k for size in sizes for k in raw_keys[size]))
    return {impl: {size: t * 1e6 for size, t in times.items()} for impl, times in best.items()}


async def last_n_read(bench: Bench, n: int, repeat: int, big: int) -> tuple[float, float]:
    """Microseconds per ``history(id, last=20)`` at ``big`` entries and per whole 20-entry get.

    Best of ``repeat`` runs; each run alternates the two every 50 calls.
    """
    ids = [f"lastn-{k}" for k in range(10)]
    await bench.repo.save_many([make_session(i, k, history=big) for k, i in enumerate(ids)])
    await bench.reset()
    small = bench.ids[A]
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        spent = [0.0, 0.0]
        for start in range(0, n, 50):
            began = time.perf_counter()
            for i in range(start, start + 50):
                await bench.repo.history(ids[i % 10], last=20)
            spent[0] += time.perf_counter() - began
            began = time.perf_counter()
            for i in range(start, start + 50):
                await bench.repo.get(small[i % KEYS])
            spent[1] += time.perf_counter() - began
        calls = len(range(0, n, 50)) * 50
        best = [min(b, t / calls) for b, t in zip(best, spent, strict=True)]
    await bench.repo.delete_many(ids)
    return best[0] * 1e6, best[1] * 1e6


CONCURRENCY_LEVELS = (1, 10, 50, 200)


async def latencies(op: Op, count: int, tasks: int) -> tuple[float, list[float]]:
    """(seconds in all, per-call seconds) of ``count`` calls of ``op`` over ``tasks`` tasks."""
    out: list[float] = []

    async def worker(w: int) -> None:
        for i in range(w, count, tasks):
            began = time.perf_counter()
            await op(i)
            out.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(tasks)))
    return time.perf_counter() - began, out


async def concurrency_table(
    impl_ops: dict[str, dict[str, Op]], n: int, repeat: int, levels: tuple[int, ...]
) -> list[list[str]]:
    """Rows of (operation, tasks, ops/s and p99 ms for (a) and (b), ratio of ops/s)."""
    rows: list[list[str]] = []
    for op in ("get", "save"):
        for tasks in levels:
            count = max(n, tasks * 10)
            rate = {A: 0.0, B: 0.0}
            p99 = {A: float("inf"), B: float("inf")}
            for r in range(repeat):
                for impl in (A, B) if r % 2 == 0 else (B, A):
                    spent, lat = await latencies(impl_ops[impl][op], count, tasks)
                    rate[impl] = max(rate[impl], count / spent)
                    p99[impl] = min(p99[impl], statistics.quantiles(lat, n=100)[98] * 1000)
            rows.append(
                [
                    op,
                    str(tasks),
                    f"{rate[A]:,.0f}",
                    f"{p99[A]:.2f}",
                    f"{rate[B]:,.0f}",
                    f"{p99[B]:.2f}",
                    f"{rate[A] / rate[B]:.2f}",
                ]
            )
    return rows


async def no_op() -> None:
    return None


# ---------------------------------------------------------------------- observability and events

PLAIN, NOOP, SDK, EVENTS = "plain", "otel no-op", "otel SDK", "events=True"
OVERHEAD_OPS = ("save", "update1", "append")
NOOP_TARGET, EVENTS_TARGET = 0.97, 0.85
PAIR_CHUNK = 50  # calls per implementation before the next one (finer than CHUNK: the ratios
# wanted here are within a few percent, so load bursts must hit every implementation alike)


async def paired(
    ops: dict[str, Op], n: int, repeat: int, before_run: Callable[[], Any]
) -> dict[str, float]:
    """Ops/s per implementation: ``n`` calls each, in chunks whose order rotates.

    Each implementation takes every position in the rotation equally often. The figure kept
    per implementation is from the run whose ratio to the first implementation is the median.
    """
    impls = list(ops)
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        await before_run()
        spent = dict.fromkeys(impls, 0.0)
        done = 0
        turn = 0
        while done < n:
            size = min(PAIR_CHUNK, n - done)
            order = impls[turn % len(impls) :] + impls[: turn % len(impls)]
            for impl in order:
                spent[impl] += await spend(ops[impl], done, size, 1)
            done += size
            turn += 1
        runs.append({impl: n / spent[impl] for impl in impls})
    base = impls[0]
    out: dict[str, float] = {base: sorted(r[base] for r in runs)[len(runs) // 2]}
    for impl in impls[1:]:
        ratios = sorted(r[impl] / r[base] for r in runs)
        out[impl] = out[base] * ratios[len(ratios) // 2]
    return out


def _plain(method: Any) -> Any:
    """The method without the OpenTelemetry wrapper (itself when the API is not installed)."""
    return getattr(method, "__wrapped__", method)


class Overhead:
    """Sessions per implementation of the overhead table, and their operations."""

    def __init__(self, plain: Store, events: Store) -> None:
        self.stores = {PLAIN: plain, NOOP: plain, SDK: plain, EVENTS: events}
        self.ids = {
            impl: [f"ovh-{n}-{k}" for k in range(KEYS)] for n, impl in enumerate(self.stores)
        }

    async def reset(self) -> None:
        for impl, store in self.stores.items():
            models = [make_session(sid, k) for k, sid in enumerate(self.ids[impl])]
            await store.sessions.save_many(models)

    def ops(self, impl: str) -> dict[str, Op]:
        repo = self.stores[impl].sessions
        ids = self.ids[impl]
        models = [make_session(sid, k) for k, sid in enumerate(ids)]
        wrapped = impl in (NOOP, SDK)
        save = Repository.save if wrapped else _plain(Repository.save)
        update = Repository.update if wrapped else _plain(Repository.update)
        append = (
            SessionRepository.append_history
            if wrapped
            else _plain(SessionRepository.append_history)
        )
        statuses = [SessionStatus.RUNNING, SessionStatus.IDLE]

        async def save_op(i: int) -> object:
            return await save(repo, models[i % KEYS])

        async def update_op(i: int) -> object:
            return await update(repo, ids[i % KEYS], status=statuses[i & 1])

        async def append_op(i: int) -> object:
            return await append(repo, ids[i % KEYS], make_entry(i))

        return {"save": save_op, "update1": update_op, "append": append_op}


async def wrapper_cost_us(calls: int = 100_000) -> float | None:
    """Microseconds the no-op wrapper adds to one call (around an empty coroutine), or None.

    The ratio rows carry the machine's noise (a few percent between runs on a loaded machine);
    this figure is the wrapper's cost itself, to set against a call's time.
    """
    from flywheel_state import observability

    if not observability.AVAILABLE:
        return None

    class Probe:
        namespace = "probe"

        async def save(self, value: int) -> int:
            return value

    observability.instrument(
        Probe,
        prefix=lambda _: "probe",
        scope=lambda _: observability.Scope({}),
        operations={"save": observability.OpSpec(id_from="model")},
    )
    probe = Probe()
    best = {"plain": float("inf"), "wrapped": float("inf")}
    for _ in range(5):
        for name, method in (("plain", _plain(Probe.save)), ("wrapped", Probe.save)):
            began = time.perf_counter()
            for i in range(calls // 5):
                await method(probe, i)
            best[name] = min(best[name], (time.perf_counter() - began) / (calls // 5))
    return (best["wrapped"] - best["plain"]) * 1e6


def _install_sdk() -> bool:
    """Set the SDK's global providers (in-memory exporter and reader); False without the SDK."""
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        return False
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    _SDK_EXPORTER.append(exporter)
    return True


_SDK_EXPORTER: list[Any] = []


async def overhead_rows(url: str, args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """The overhead table's rows (ops/s per implementation) and the columns measured."""
    namespace = fresh_namespace("bench-ovh")
    settings = Settings(url=url, namespace=namespace)
    plain = await Store(settings, auto_migrate=True).connect()
    events = await Store(settings.replace(events=True)).connect()
    raw = Redis.from_url(url, **settings.client_kwargs())
    rows: dict[str, Row] = {}
    columns = [PLAIN, NOOP, EVENTS]
    cost = await wrapper_cost_us(20_000 if args.quick else 200_000)
    try:
        bench = Overhead(plain, events)
        await bench.reset()
        for phase in ((PLAIN, NOOP, EVENTS), (PLAIN, SDK)):
            if SDK in phase:
                # Set only now: the global providers can't be unset, and until here the
                # instrumented calls must meet the API's no-op.
                if not _install_sdk():
                    break
                columns.append(SDK)
            for op in OVERHEAD_OPS:
                ops = {impl: bench.ops(impl)[op] for impl in phase}
                before_run = bench.reset if op == "append" else no_op
                best = await paired(ops, args.n, args.repeat, before_run)
                row = rows.setdefault(op, Row(LABELS[op], {}))
                if PLAIN in row.values:  # the SDK phase: its own plain figure is the base
                    best[SDK] = best[SDK] * row.values[PLAIN] / best[PLAIN]
                    del best[PLAIN]
                row.values.update(best)
                progress(row)
                for exporter in _SDK_EXPORTER:
                    exporter.clear()
            await bench.reset()
    finally:
        await drop_namespace(raw, namespace)
        await raw.aclose()
        await events.close()
        await plain.close()
    if cost is not None and "save" in rows:
        share = cost * rows["save"].values[PLAIN] / 1e6
        console.print(
            f"otel no-op wrapper: {cost:.2f} us a call, {share:.2%} of a plain save here "
            "(measured around an empty coroutine, best of 5)"
        )
    return list(rows.values()), columns


def print_overhead(rows: list[Row], columns: list[str]) -> list[str]:
    """Print the overhead table; returns the targets missed."""
    others = [c for c in columns if c != PLAIN]
    table_rows = []
    missed = []
    for row in rows:
        cells = [row.name, f"{row.values[PLAIN]:,.0f}"]
        for col in others:
            ratio = row.values[col] / row.values[PLAIN]
            cells.append(f"{row.values[col]:,.0f} ({ratio:.3f})")
            target = {NOOP: NOOP_TARGET, EVENTS: EVENTS_TARGET}.get(col)
            if target is not None and ratio < target:
                missed.append(f"{row.name} with {col}: {ratio:.3f} of plain < {target}")
        table_rows.append(cells)
    print_cells(
        "Observability and events: ops/s (ratio to plain, same run; the SDK row's ratio is "
        "against the plain figure of its own phase)",
        ["operation", "plain", *others],
        table_rows,
    )
    return missed


# ---------------------------------------------------------------------- encryption at rest

PLAIN, ENC, COLD, ZSTD = "plain", "encrypted", "no cache", "zstd, no cache"
CRYPTO_TARGET = 1.3


def make_result(seed: int, rows: int) -> dict[str, Any]:
    """A large flow result: retrieved rows of prose with scores and metadata."""
    return {
        "answer": _text(seed, 600),
        "rows": [
            {
                "id": f"row-{seed}-{j}",
                "text": _text(seed * 5 + j, 240),
                "score": round(1 / (j + 1), 6),
                "source": {"doc": f"doc-{j % 17}", "page": j % 40},
            }
            for j in range(rows)
        ],
        "usage": {"prompt_tokens": 1200 + seed, "completion_tokens": 300},
    }


async def crypto_costs(url: str, args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    """Rows of the encryption table, and the targets it missed."""
    key = bytes(range(32))
    ciphers = {
        PLAIN: None,
        ENC: FieldCipher({"k1": key}, "k1", compress_min_bytes=None),
        COLD: FieldCipher({"k1": key}, "k1", compress_min_bytes=None, cache_bytes=0),
        ZSTD: FieldCipher({"k1": key}, "k1", compress_min_bytes=1024, cache_bytes=0),
    }
    stores: dict[str, Store] = {}
    raw = Redis.from_url(url, protocol=2)
    try:
        for name, cipher in ciphers.items():
            settings = Settings(url=url, namespace=fresh_namespace("benchc"), cipher=cipher)
            stores[name] = await Store(settings, auto_migrate=True).connect()
        ids = [f"s-{k}" for k in range(KEYS)]
        models = [make_session(sid, k) for k, sid in enumerate(ids)]

        async def reset() -> None:
            for store in stores.values():
                await store.sessions.save_many(models)

        await reset()

        per_store = {name: session_ops(store, models, ids) for name, store in stores.items()}
        out: list[list[str]] = []
        missed: list[str] = []
        for op in ("save", "get", "append"):
            best = await compare(
                {name: per_store[name][op] for name in stores},
                args.n,
                tasks=1,
                repeat=args.repeat,
                before_run=reset if op == "append" else no_op,
            )
            cost_enc = best[PLAIN] / best[ENC]
            cost_zstd = best[PLAIN] / best[ZSTD]
            out.append(
                [
                    LABELS[op],
                    f"{best[PLAIN]:,.0f}",
                    f"{best[ENC]:,.0f}",
                    f"{best[COLD]:,.0f}",
                    f"{best[ZSTD]:,.0f}",
                    f"{cost_enc:.2f}x",
                    f"{best[PLAIN] / best[COLD]:.2f}x",
                    f"{cost_zstd:.2f}x",
                ]
            )
            if cost_enc > CRYPTO_TARGET:
                missed.append(f"encryption costs {cost_enc:.2f}x on {op} (> {CRYPTO_TARGET}x)")

        # Large execution results: what compression saves, and its cost.
        n_results = max(5, args.n // 30)
        for rows_per_result in (50, 500):
            results = [
                ExecutionResult(
                    id=f"r-{rows_per_result}-{k}", result=make_result(k, rows_per_result)
                )
                for k in range(n_results)
            ]
            sizes: dict[str, int] = {}
            rates = {name: {"save": 0.0, "get": 0.0} for name in stores}
            # Best of repeat runs, alternating between the stores (load hits them alike).
            for _ in range(max(3, args.repeat)):
                for name, store in stores.items():
                    repo = store.executions
                    began = time.perf_counter()
                    for r in results:
                        await repo.save(r)
                    rate = len(results) / (time.perf_counter() - began)
                    rates[name]["save"] = max(rates[name]["save"], rate)
                    began = time.perf_counter()
                    for r in results:
                        await repo.get(r.id)
                    rate = len(results) / (time.perf_counter() - began)
                    rates[name]["get"] = max(rates[name]["get"], rate)
            for name, store in stores.items():
                total = 0
                for r in results:
                    text = await raw.execute_command("JSON.GET", store.executions.key(r.id))
                    total += len(text)
                sizes[name] = total // len(results)
            label = f"{rows_per_result}-row result"
            for op in ("save", "get"):
                out.append(
                    [
                        f"{op}, {label}",
                        f"{rates[PLAIN][op]:,.0f}",
                        f"{rates[ENC][op]:,.0f}",
                        f"{rates[COLD][op]:,.0f}",
                        f"{rates[ZSTD][op]:,.0f}",
                        f"{rates[PLAIN][op] / rates[ENC][op]:.2f}x",
                        f"{rates[PLAIN][op] / rates[COLD][op]:.2f}x",
                        f"{rates[PLAIN][op] / rates[ZSTD][op]:.2f}x",
                    ]
                )
            out.append(
                [
                    f"bytes, {label}",
                    f"{sizes[PLAIN]:,}",
                    f"{sizes[ENC]:,}",
                    f"{sizes[COLD]:,}",
                    f"{sizes[ZSTD]:,}",
                    f"{sizes[ENC] / sizes[PLAIN]:.2f}x",
                    f"{sizes[COLD] / sizes[PLAIN]:.2f}x",
                    f"{sizes[ZSTD] / sizes[PLAIN]:.2f}x",
                ]
            )
    finally:
        for store in stores.values():
            await drop_namespace(raw, store.namespace)
            await store.close()
        await raw.aclose()
    return out, missed


_STARTED = time.perf_counter()


def progress(row: Row) -> None:
    cells = ", ".join(f"{k} {v:,.0f}/s" for k, v in row.values.items())
    elapsed = time.perf_counter() - _STARTED
    console.print(f"  [{elapsed:5.0f} s] {row.name}: {cells}", style="dim")


LABELS = {
    "save": "save",
    "get": "get",
    "update1": "update (1 field)",
    "update2": "update (2 fields)",
    "append": "append_history",
}
CONCURRENT_OPS = ("save", "get", "append")


def print_crypto(rows: list[list[str]], args: argparse.Namespace) -> None:
    print_cells(
        f"Encryption at rest: ops/s (bytes: stored per record), one connection, best of "
        f"{args.repeat}; cost = time ratio to the plain store (target: encrypted <= "
        f"{CRYPTO_TARGET}x)",
        ["operation", PLAIN, ENC, COLD, ZSTD, "cost", "cost, no cache", "cost, zstd"],
        rows,
    )


async def run(url: str, args: argparse.Namespace) -> int:
    if args.overhead_only:
        missed = print_overhead(*await overhead_rows(url, args))
        for line in missed:
            console.print(f"target missed: {line}", style="bold red")
        return 1 if missed and args.check else 0
    if args.crypto_only:
        crypto_rows, crypto_missed = await crypto_costs(url, args)
        print_crypto(crypto_rows, args)
        for line in crypto_missed:
            console.print(f"target missed: {line}", style="bold red")
        return 1 if crypto_missed and args.check else 0
    namespace = fresh_namespace("bench")
    settings = Settings(url=url, namespace=namespace)
    store = Store(settings, auto_migrate=True)
    await store.connect()
    raw = Redis.from_url(url, **settings.client_kwargs())
    om_client = Redis.from_url(url, decode_responses=True, max_connections=None)
    rows: list[Row] = []
    try:
        bench = Bench(store, raw, om_client, namespace)
        impl_ops = {A: bench.a_ops(), B: bench.b_ops(), C: bench.c_ops()}
        impls = [i for i in IMPLS if not (args.no_redis_om and i == C)]

        # The prepared inputs are not part of what is measured: keep the collector from
        # walking them again and again (it still walks whatever each implementation creates).
        gc.collect()
        gc.freeze()

        # Single operations, sequential on one connection; then CONCURRENCY tasks. redis-om,
        # much slower, runs a quarter of the calls (its rate is still per call).
        for tasks in (1, CONCURRENCY):
            if tasks > 1 and args.no_concurrent:
                continue
            for op in LABELS if tasks == 1 else CONCURRENT_OPS:
                # append makes the sessions grow: each run starts again from 20 entries.
                before_run = bench.reset if op == "append" else no_op
                ops = {impl: impl_ops[impl][op] for impl in impls}
                best = await compare(
                    ops, args.n, tasks=tasks, repeat=args.repeat, before_run=before_run
                )
                suffix = "" if tasks == 1 else f" x{tasks} tasks"
                rows.append(Row(LABELS[op] + suffix, best))
                progress(rows[-1])
            await bench.reset()

        # Batches (redis-om once, on at most OM_BATCH records: it takes seconds per run).
        data = bench.batch_data(args.batch)
        gc.collect()
        gc.freeze()
        many = {
            "save_many": {A: bench.a_save_many, B: bench.b_save_many, C: bench.c_save_many},
            "get_many": {A: bench.a_get_many, B: bench.b_get_many, C: bench.c_get_many},
        }
        for op, fns in many.items():
            if op == "get_many":
                # Reads need only the ids. The prepared records are let go and the heap
                # unfrozen first: an application's heap, not one emptied by gc.freeze() (after
                # which every threshold of the oldest generation makes a full collection).
                data = {
                    A: [m.id for m in data[A]],
                    B: [d["id"] for d in data[B]],
                    C: [m.id for m in data[C]],
                }
                gc.unfreeze()
                gc.collect()
            best = {impl: 0.0 for impl in impls}
            for rep in range(args.repeat):
                for impl in impls:
                    if impl == C and rep > 0:
                        continue
                    start = time.perf_counter()
                    await fns[impl](data[impl])
                    rate = len(data[impl]) / (time.perf_counter() - start)
                    best[impl] = max(best[impl], rate)
            rows.append(Row(f"{op} ({args.batch:,})", best))
            progress(rows[-1])
        del data

        # The concurrency table: get and save at 1 to 200 tasks.
        # Hand-written: redis-py's default (non-blocking) pool, sized for 200 tasks (its default
        # of 100 raises MaxConnectionsError beyond); the library keeps its 50 blocking ones.
        default_client = Redis.from_url(url, protocol=2, max_connections=max(CONCURRENCY_LEVELS))
        bench.raw, kept = default_client, bench.raw
        conc_ops = {A: impl_ops[A], B: bench.b_ops()}
        bench.raw = kept
        try:
            levels = CONCURRENCY_LEVELS[:2] if args.quick else CONCURRENCY_LEVELS
            conc_rows = await concurrency_table(conc_ops, args.n, args.repeat, levels)
        finally:
            await default_client.aclose()
        await bench.reset()
        lastn_us, get20_us = await last_n_read(bench, args.n, args.repeat, args.big)

        # append_history against the length of the history.
        small, big = 10, args.big
        scaling = await append_scaling(bench, args.n_scale, args.repeat, (small, big))
        for size in (small, big):
            rows.append(
                Row(
                    f"append_history @{size:,} entries",
                    {impl: 1e6 / scaling[impl][size] for impl in (A, B)},
                )
            )
    finally:
        await drop_namespace(raw, namespace)
        await raw.aclose()
        await om_client.aclose()
        await store.close()

    title = (
        f"Session repository, ops/s (best of {args.repeat}; single ops: {args.n:,} sequential "
        f"calls on one connection; x{CONCURRENCY}: {CONCURRENCY} concurrent tasks)"
    )
    print_table(title, list(impls), rows, unit="ops/s", ratio=(A, B), ratio_label="(a)/(b)")
    print_cells(
        f"Concurrency (best of {args.repeat}): throughput and p99 latency per call",
        ["operation", "tasks", "flywheel ops/s", "p99 ms", "redis-py ops/s", "p99 ms", "(a)/(b)"],
        conc_rows,
    )
    lastn_ratio = lastn_us / get20_us
    console.print(
        f"history(last=20) of a {args.big:,}-entry session: {lastn_us:.0f} us; whole get of a "
        f"20-entry session: {get20_us:.0f} us: {lastn_ratio:.2f}x (target <= 1.2x)"
    )
    growth = scaling[A][big] / scaling[A][small]
    console.print(
        f"append_history time per call: {scaling[A][small]:.0f} us at {small} entries, "
        f"{scaling[A][big]:.0f} us at {big:,} entries: {growth:.2f}x "
        f"(redis-py: {scaling[B][big] / scaling[B][small]:.2f}x)"
    )
    crypto_rows, crypto_missed = await crypto_costs(url, args)
    print_crypto(crypto_rows, args)
    if args.markdown:
        print_markdown(rows, impls)

    missed = print_overhead(*await overhead_rows(url, args))
    for row in rows:
        if " x" in row.name or "@" in row.name:
            continue
        ratio = row.values[A] / row.values[B]
        target = 0.8 if "_many" in row.name else 0.9
        if ratio < target:
            missed.append(f"{row.name}: (a)/(b) = {ratio:.2f} < {target}")
    if lastn_ratio > 1.2:
        missed.append(f"history(last=20) is {lastn_ratio:.2f}x a whole 20-entry get (> 1.2)")
    if growth > 1.5:
        missed.append(f"append_history at {big} entries is {growth:.2f}x the time at {small}")
    missed += crypto_missed
    for line in missed:
        console.print(f"target missed: {line}", style="bold red")
    if not missed:
        console.print("all targets met", style="bold green")
    return 1 if missed and args.check else 0


def print_markdown(rows: list[Row], impls: list[str]) -> None:
    head = "| operation | " + " | ".join(f"{i} (ops/s)" for i in impls) + " | (a)/(b) |"
    print(head)
    print("|" + "---|" * (len(impls) + 2))
    for row in rows:
        cells = [f"{row.values[i]:,.0f}" if i in row.values else "-" for i in impls]
        print(f"| {row.name} | " + " | ".join(cells) + f" | {row.values[A] / row.values[B]:.2f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, repeat=3, repeat_help="runs per figure (best is kept)")
    parser.add_argument("--n", type=int, default=3000, help="calls per single-op run")
    parser.add_argument("--batch", type=int, default=10_000, help="records per save_many/get_many")
    parser.add_argument("--big", type=int, default=1000, help="history length of the big session")
    parser.add_argument("--n-scale", type=int, default=1000, help="appends per scaling run")
    parser.add_argument("--no-redis-om", action="store_true", help="skip (c)")
    parser.add_argument("--no-concurrent", action="store_true", help="skip the x50 rows")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument(
        "--overhead-only", action="store_true", help="only the observability/events table"
    )
    parser.add_argument(
        "--crypto-only", action="store_true", help="only the encryption at rest table"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batch, args.n_scale, args.repeat = 100, 500, 100, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console.width = max(console.width, 120)
    started = time.perf_counter()
    with server_url() as url:
        status = asyncio.run(run(url, args))
    console.print(f"({time.perf_counter() - started:.0f} s)", style="dim")
    return status


if __name__ == "__main__":
    sys.exit(main())
