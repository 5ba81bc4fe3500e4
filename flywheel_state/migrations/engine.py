"""The rewrite engine: batched, resumable, atomic key rewrites (SCAN, read, transform, write).

:meth:`RewriteEngine.rewrite_keys` walks keys with SCAN (filtered by type on the server; on a
Redis Cluster every primary in turn) in batches: one pipelined read and one pipelined write per
batch. Each key is rewritten by a Lua script that checks the key still holds what was read,
keeps its remaining TTL, and writes the new value atomically. A checkpoint (SCAN cursor and
counters) is saved after each batch, so a run killed halfway resumes where it stopped. Since a
rewritten key changes type (or schema version) it is recognisably done: a key SCAN returns
twice, or a batch redone after a crash between its writes and its checkpoint, is never
transformed twice.

The engine's collaborators are passed in explicitly (client, bookkeeping keys, report, progress
callback, lock check); it knows nothing of migration contexts, runners or stores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from redis import exceptions as redis_exc
from redis.commands.core import AsyncScript

from flywheel_state._redis import as_str, translate_errors
from flywheel_state.migrations._scripts import CHECKPOINT_SCRIPT, KEYS_PER_SCRIPT, REWRITE_SCRIPT
from flywheel_state.migrations.report import (
    MAX_SAMPLES,
    Direction,
    MigrationProblem,
    MigrationProgress,
    StepReport,
)

__all__ = ["KeyType", "Rewrite", "RewriteEngine", "RewriteResult", "Transform"]

KeyType = Literal["string", "ReJSON-RL"]
"""A key's Redis type as TYPE names it: a plain string, or a RedisJSON document."""

#: Full passes over the keyspace at most (a run resumed from a checkpoint is followed by a
#: pass from the start, catching keys created behind the checkpoint while it was stopped).
MAX_PASSES = 3
#: Attempts on a key that changes between its read and its write before reporting it.
MAX_ATTEMPTS = 3
_CHECKPOINT = AsyncScript(None, CHECKPOINT_SCRIPT.encode())  # type: ignore[arg-type]
_SAMPLE_CHARS = 2000


class Rewrite(NamedTuple):
    """What a transform returns for one key.

    Attributes:
        value: The new value (JSON text for a document), or None to leave the key as it is.
        problems: Values that could not be mapped as they were (reported, never dropped).
    """

    value: str | None
    problems: tuple[MigrationProblem, ...] = ()


Transform = Callable[[str, bytes], "Rewrite | str | None"]
"""``transform(key, value) -> Rewrite | new value | None`` (None: leave the key alone)."""


@dataclass(frozen=True)
class RewriteResult:
    """Counts of one :meth:`Operations.rewrite_keys` run (cumulative over resumed runs)."""

    scanned: int
    changed: int
    resumed: bool


def _as_rewrite(result: Rewrite | str | None) -> Rewrite:
    if type(result) is Rewrite:
        return result
    if result is None or isinstance(result, str):
        return Rewrite(result)
    return Rewrite(*result)


def _sample_text(raw: bytes | str) -> str:
    text = as_str(raw)
    return text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS] + "..."


class RewriteEngine:
    """Runs key rewrites for one migration step; every collaborator is given explicitly.

    Args:
        client: The redis.asyncio client (``Redis`` or ``RedisCluster``).
        cluster: True on a Redis Cluster: SCAN every primary, one key per script call, and
            checkpoints saved by a script (no MULTI there).
        checkpoint_key: The step's checkpoint hash.
        problems_key: The step's problem list.
        skip_prefix: Keys under this prefix (the runner's bookkeeping) are never rewritten.
        report: The step's report, filled in with counts and problems.
        revision: The revision being applied or undone (for progress events).
        direction: ``"upgrade"`` or ``"downgrade"``.
        dry_run: Read and transform only; nothing is written.
        batch_size: Keys per batch unless a call says otherwise.
        progress: Called after each batch (None: no progress, and no counting pass).
        check_lock: Called after each checkpoint; raises when the lock is no longer ours.
    """

    def __init__(
        self,
        *,
        client: Any,
        cluster: bool,
        checkpoint_key: str,
        problems_key: str,
        skip_prefix: str,
        report: StepReport,
        revision: str,
        direction: Direction,
        dry_run: bool,
        batch_size: int,
        progress: Callable[[MigrationProgress], None] | None = None,
        check_lock: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.checkpoint_key = checkpoint_key
        self.problems_key = problems_key
        self.skip_prefix = skip_prefix
        self.report = report
        self.revision = revision
        self.direction: Direction = direction
        self.dry_run = dry_run
        self.batch_size = batch_size
        self.progress = progress
        self._check_lock = check_lock
        self._rewrite_sha: str | None = None

    def problem(self, key: str, message: str) -> MigrationProblem:
        return MigrationProblem(key=key, message=message)

    def emit(self, event: MigrationProgress) -> None:
        if self.progress is not None:
            self.progress(event)

    def check_lock(self) -> None:
        if self._check_lock is not None:
            self._check_lock()

    async def rewrite_keys(
        self,
        *,
        step_field: str,
        match: str,
        from_type: KeyType,
        to_type: KeyType,
        transform: Transform,
        label: str,
        batch_size: int | None = None,
    ) -> RewriteResult:
        """Rewrite every key matching ``match`` whose type is ``from_type`` (see
        :meth:`flywheel_state.migrations.ops.Operations.rewrite_keys`); ``step_field``
        prefixes this operation's fields in the checkpoint (``"1:"``)."""
        run = _RewriteRun(
            engine=self,
            field=step_field,
            match=match,
            from_type=from_type,
            to_type=to_type,
            transform=transform,
            label=label,
            size=max(1, batch_size or self.batch_size),
        )
        return await run.run()

    def _account(self, scanned: int, changed: int) -> None:
        self.report.documents_scanned += scanned
        self.report.documents_changed += changed

    async def _count(self, match: str, key_type: KeyType) -> int:
        """How many keys match (an estimate for the progress bar: one SCAN pass)."""
        count = 0
        nodes = await _primaries(self.client) if self.cluster else None
        scanner = _Scanner(self.client, match, key_type, 5000, 0, "\0", nodes)
        while True:
            keys, _, ended = await scanner.next()
            count += len(keys)
            if ended:
                return count

    async def _load_script(self) -> str:
        if self._rewrite_sha is None:
            with translate_errors("loading the rewrite script"):
                self._rewrite_sha = as_str(await self.client.script_load(REWRITE_SCRIPT))
        return self._rewrite_sha

    async def _write(
        self,
        items: Sequence[tuple[str, bytes, Rewrite]],
        transform: Transform,
        from_type: KeyType,
        to_type: KeyType,
        field: str,
    ) -> tuple[int, list[MigrationProblem], list[MigrationProblem]]:
        """Rewrite ``items``; returns how many were written, problems of keys left alone, and
        (on a cluster, where the script can't record them) problems of rewritten keys that the
        checkpoint must record."""
        eng = self
        ok = 0
        left_alone: list[MigrationProblem] = []
        recorded: list[MigrationProblem] = []
        pending = list(items)
        attempt = 0
        # On a cluster each call holds one key (its own slot); the pipeline sends every call to
        # the primary of its slot, one round trip per node.
        per_script = 1 if eng.cluster else KEYS_PER_SCRIPT
        while pending:
            attempt += 1
            sha = await self._load_script()
            chunks = [pending[i : i + per_script] for i in range(0, len(pending), per_script)]
            with translate_errors(f"rewriting {len(pending)} keys"):
                async with eng.client.pipeline(transaction=False) as pipe:
                    for chunk in chunks:
                        pipe.execute_command(
                            *self._rewrite_call(sha, chunk, from_type, to_type, field)
                        )
                    replies = await pipe.execute(raise_on_error=False)
            retry: list[str] = []
            redo: list[tuple[str, bytes, Rewrite]] = []
            for chunk, reply in zip(chunks, replies, strict=True):
                if isinstance(reply, redis_exc.NoScriptError):
                    self._rewrite_sha = None  # the server lost its script cache: load again
                    redo += chunk
                    continue
                if isinstance(reply, Exception):
                    with translate_errors(f"rewriting {len(chunk)} keys"):
                        raise reply
                for (key, _, result), raw_status in zip(chunk, reply, strict=True):
                    status = as_str(raw_status)
                    if status == "ok":
                        ok += 1
                        for p in result.problems:
                            eng.report.add_problem(p)
                        if eng.cluster:
                            recorded.extend(result.problems)
                    elif status == "changed":
                        retry.append(key)
                    elif status.startswith("error:"):
                        left_alone.append(
                            eng.problem(
                                key,
                                f"the server refused the new value ({status[6:]}); left as it was",
                            )
                        )
                    # 'gone' (expired or deleted) and 'skip' (rewritten already) need nothing.
            pending = redo
            if retry:
                if attempt >= MAX_ATTEMPTS:
                    left_alone.extend(
                        eng.problem(k, "kept changing during the migration; left as it was")
                        for k in retry
                    )
                else:
                    pending += await self._reread(retry, transform, from_type, left_alone)
        return ok, left_alone, recorded

    def _rewrite_call(
        self,
        sha: str,
        chunk: Sequence[tuple[str, bytes, Rewrite]],
        from_type: KeyType,
        to_type: KeyType,
        field: str,
    ) -> list[Any]:
        """The EVALSHA of :data:`REWRITE_SCRIPT` for ``chunk`` (see its argument layout)."""
        eng = self
        if eng.cluster:
            args: list[Any] = ["EVALSHA", sha, 1]
        else:
            args = ["EVALSHA", sha, 2 + len(chunk), eng.checkpoint_key, eng.problems_key]
        args += [key for key, _, _ in chunk]
        args += [from_type, to_type, field + "changed", field + "problems"]
        for _, raw, result in chunk:
            problems = result.problems
            meta = f"{len(problems)}|{_problems_json(problems)}" if problems else ""
            args += [raw, meta, result.value]
        return args

    async def _read(self, keys: list[str], from_type: KeyType) -> list[bytes | None]:
        if self.cluster:
            # MGET / JSON.MGET must stay in one slot there: one GET per key, pipelined (one
            # round trip per node).
            get = "GET" if from_type == "string" else "JSON.GET"
            with translate_errors(f"reading {len(keys)} keys"):
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.execute_command(get, key)
                    replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception):
                    with translate_errors(f"reading {len(keys)} keys"):
                        raise reply
            return list(replies)
        if from_type == "string":
            command: list[Any] = ["MGET", *keys]
        else:
            command = ["JSON.MGET", *keys, "."]
        with translate_errors(f"reading {len(keys)} keys"):
            values: list[bytes | None] = await self.client.execute_command(*command)
        return values

    async def _reread(
        self,
        keys: list[str],
        transform: Transform,
        from_type: KeyType,
        left_alone: list[MigrationProblem],
    ) -> list[tuple[str, bytes, Rewrite]]:
        items, problems = _apply(transform, keys, await self._read(keys, from_type))
        left_alone.extend(problems)
        return items

    async def _save_checkpoint(
        self,
        field: str,
        *,
        cursor: int | None,
        pass_no: int,
        scanned: int,
        problems: list[MigrationProblem],
        done: bool,
        changed: int = 0,
    ) -> None:
        eng = self
        if eng.cluster:
            # No MULTI on a cluster: one script, atomic (both keys share the hash tag). The
            # rewrite counter and the rewritten keys' problems are recorded here.
            with translate_errors("saving the migration checkpoint"):
                await _CHECKPOINT(
                    keys=[eng.checkpoint_key, eng.problems_key],
                    args=[
                        field,
                        "" if cursor is None else cursor,
                        pass_no,
                        scanned,
                        changed,
                        1 if done else 0,
                        len(problems),
                        _problems_json(problems),
                    ],
                    client=eng.client,
                )
            return
        assert cursor is not None  # counters-only saves are for a cluster
        with translate_errors("saving the migration checkpoint"):
            async with eng.client.pipeline(transaction=True) as pipe:
                mapping: dict[str | bytes, bytes | float | int | str] = {
                    field + "cursor": cursor,
                    field + "pass": pass_no,
                }
                if done:
                    mapping[field + "done"] = 1
                pipe.hset(eng.checkpoint_key, mapping=mapping)
                pipe.hincrby(eng.checkpoint_key, field + "scanned", scanned)
                if problems:
                    pipe.rpush(eng.problems_key, _problems_json(problems))
                    pipe.hincrby(eng.checkpoint_key, field + "problems", len(problems))
                await pipe.execute()


class _Scanner:
    """SCAN in batches of ``size`` keys, each with the cursor a resumed run must start from.

    One SCAN call may return more keys than a batch takes; a batch that leaves some of them for
    the next one resumes from the cursor *before* that call (its rewritten keys are skipped
    then, by their type), so a checkpoint never jumps over keys not yet handled.
    """

    def __init__(
        self,
        client: Any,
        match: str,
        key_type: KeyType,
        size: int,
        cursor: int,
        skip: str,
        nodes: list[Any] | None = None,
    ) -> None:
        self._client = client
        self._nodes = nodes
        self._skip = skip
        self._match = match
        self._type = key_type
        self._size = size
        self._cursor = cursor
        self._finished = False
        self._chunks: deque[tuple[int, list[str]]] = deque()

    async def next(self) -> tuple[list[str], int, bool]:
        """The next batch of keys, the cursor to resume after it, and whether the pass ended."""
        while sum(len(k) for _, k in self._chunks) < self._size and not self._finished:
            before = self._cursor
            count = max(self._size, 1000)
            with translate_errors("scanning keys"):
                if self._nodes is None:
                    cursor, found = await self._client.scan(
                        before, match=self._match, count=count, _type=self._type
                    )
                    self._cursor = int(cursor)
                else:
                    self._cursor, found = await self._scan_node(before, count)
            # The runner's own bookkeeping is never rewritten, whatever the pattern.
            keys = [
                k for k in dict.fromkeys(as_str(k) for k in found) if not k.startswith(self._skip)
            ]
            if keys:
                self._chunks.append((before, keys))
            self._finished = self._cursor == 0
        batch: list[str] = []
        while self._chunks and len(batch) < self._size:
            start, keys = self._chunks[0]
            take = self._size - len(batch)
            batch += keys[:take]
            if len(keys) > take:
                self._chunks[0] = (start, keys[take:])
            else:
                self._chunks.popleft()
        resume = self._chunks[0][0] if self._chunks else self._cursor
        return batch, resume, self._finished and not self._chunks

    async def _scan_node(self, before: int, count: int) -> tuple[int, list[Any]]:
        """One SCAN on a cluster: the cursor is ``node index << 64 | that node's cursor``, so
        a checkpoint names both the primary being walked and where on it."""
        assert self._nodes is not None
        index, cursor = divmod(before, 1 << 64)
        if index >= len(self._nodes):  # the cluster has fewer primaries than when it stopped
            return 0, []
        reply, found = await self._client.scan(
            cursor,
            match=self._match,
            count=count,
            _type=self._type,
            target_nodes=self._nodes[index],
        )
        node_cursor = int(next(iter(reply.values())) if isinstance(reply, dict) else reply)
        if node_cursor != 0:
            return (index << 64) | node_cursor, list(found)
        if index + 1 < len(self._nodes):
            return (index + 1) << 64, list(found)
        return 0, list(found)


async def _primaries(client: Any) -> list[Any]:
    """Every primary of a cluster, in a stable order (by the lowest slot each serves), so a
    checkpoint's node index means the same node when the run resumes."""
    with translate_errors("listing the cluster's primaries"):
        await client.initialize()
        lowest: dict[str, int] = {}
        for slot, holders in client.nodes_manager.slots_cache.items():
            if holders:
                name = holders[0].name
                lowest[name] = min(slot, lowest.get(name, slot))
        primaries = list(client.get_primaries())
    return sorted(primaries, key=lambda node: (lowest.get(node.name, 1 << 20), node.name))


@dataclass
class _Fetched:
    """Keys of one batch, their values, and where a resumed run would start after it."""

    keys: list[str]
    values: list[bytes | None]
    resume: int
    ended: bool


@dataclass
class _Batch:
    """One transformed batch of a rewrite: its writes (pending) and its checkpoint."""

    cursor: int
    pass_no: int
    scanned: int
    untouched: list[MigrationProblem]
    items: list[tuple[str, bytes, Rewrite]] = field(default_factory=list)
    writes: asyncio.Task[tuple[int, list[MigrationProblem], list[MigrationProblem]]] | None = None
    #: On a cluster: rewrites and problems of rewritten keys the checkpoint records.
    changed: int = 0
    recorded: list[MigrationProblem] = field(default_factory=list)
    saved: bool = False


@dataclass
class _RewriteRun:
    """The state of one :meth:`Operations.rewrite_keys` call."""

    engine: RewriteEngine
    field: str
    match: str
    from_type: KeyType
    to_type: KeyType
    transform: Transform
    label: str
    size: int
    scanned: int = 0
    changed: int = 0
    total: int | None = None

    async def run(self) -> RewriteResult:
        ops = eng = self.engine
        field = self.field
        state: dict[str, str] = {}
        if not eng.dry_run:
            with translate_errors("reading the migration checkpoint"):
                raw_state = await eng.client.hgetall(eng.checkpoint_key)
            state = {as_str(k): as_str(v) for k, v in raw_state.items()}
        cursor = int(state.get(field + "cursor", 0))
        pass_no = int(state.get(field + "pass", 1))
        self.scanned = int(state.get(field + "scanned", 0))
        self.changed = int(state.get(field + "changed", 0))
        resumed = bool(state.get(field + "cursor") or state.get(field + "done"))
        eng.report.resumed = eng.report.resumed or resumed
        if state.get(field + "done"):
            ops._account(self.scanned, self.changed)
            return RewriteResult(self.scanned, self.changed, resumed=True)
        if eng.progress is not None and not eng.dry_run:
            self.total = self.scanned + await ops._count(self.match, self.from_type)

        pass_from_zero = cursor == 0
        skip = eng.skip_prefix
        nodes = await _primaries(eng.client) if eng.cluster else None
        scanner = _Scanner(eng.client, self.match, self.from_type, self.size, cursor, skip, nodes)
        fetched = await self._fetch(scanner)
        previous: _Batch | None = None
        batch: _Batch | None = None
        try:
            while True:
                batch = self._transform(fetched, pass_no)
                # Read the next batch before sending this one's writes, so that Redis runs
                # the writes while Python transforms the next batch.
                following = None if fetched.ended else await self._fetch(scanner)
                if batch.items and not eng.dry_run:
                    batch.writes = asyncio.create_task(
                        ops._write(
                            batch.items, self.transform, self.from_type, self.to_type, self.field
                        )
                    )
                    await asyncio.sleep(0)  # let the write pipeline go out now
                if previous is not None:
                    await self._finish(previous, last=False)
                previous = None
                if following is not None:
                    previous, batch, fetched = batch, None, following
                    continue
                # The pass is over: settle its last batch, then decide on another pass.
                await self._settle(batch)
                # A run resumed mid-pass did not see keys created behind its checkpoint while
                # it was stopped: one more full pass looks for them.
                next_pass = not eng.dry_run and not pass_from_zero and pass_no < MAX_PASSES
                await self._finish(batch, last=not next_pass, next_pass=next_pass)
                if not next_pass:
                    break
                pass_no += 1
                pass_from_zero = True
                scanner = _Scanner(
                    eng.client, self.match, self.from_type, self.size, 0, skip, nodes
                )
                fetched = await self._fetch(scanner)
        except BaseException:
            # An error stopped the run: let the writes in flight land (their checkpoint is not
            # saved; a rerun skips what they rewrote). Their own errors would hide this one.
            for pending in (previous, batch):
                if pending is not None and pending.writes is not None:
                    with contextlib.suppress(Exception):
                        await self._settle(pending)
            if eng.cluster and not eng.dry_run:
                # There the rewrite script can't count (other slot): record what landed, so the
                # totals stay exact. The cursor stays: a rerun skips those keys by their type.
                with contextlib.suppress(Exception):
                    await self._save_landed(previous, batch)
            raise
        ops._account(self.scanned, self.changed)
        return RewriteResult(self.scanned, self.changed, resumed)

    async def _save_landed(self, *batches: _Batch | None) -> None:
        changed = 0
        recorded: list[MigrationProblem] = []
        for pending in batches:
            if pending is not None and not pending.saved:
                changed += pending.changed
                recorded += pending.recorded
        if changed or recorded:
            await self.engine._save_checkpoint(
                self.field,
                cursor=None,
                pass_no=0,
                scanned=0,
                problems=recorded,
                done=False,
                changed=changed,
            )

    async def _fetch(self, scanner: _Scanner) -> _Fetched:
        keys, resume, ended = await scanner.next()
        values = await self.engine._read(keys, self.from_type) if keys else []
        return _Fetched(keys, values, resume, ended)

    def _transform(self, fetched: _Fetched, pass_no: int) -> _Batch:
        eng = self.engine
        items, untouched = _apply(self.transform, fetched.keys, fetched.values)
        first = pass_no == 1  # later passes only look for stragglers: nothing is counted twice
        batch = _Batch(
            cursor=fetched.resume,
            pass_no=pass_no,
            scanned=len(fetched.keys) if first else 0,
            untouched=untouched if first else [],
            items=items,
        )
        if eng.dry_run:
            self.changed += len(batch.items)
            for key, raw, result in batch.items:
                for p in result.problems:
                    eng.report.add_problem(p)
                if len(eng.report.samples) < MAX_SAMPLES:
                    eng.report.samples.append(
                        {
                            "key": key,
                            "before": _sample_text(raw),
                            "after": _sample_text(result.value or ""),
                        }
                    )
            batch.items = []
        return batch

    async def _settle(self, batch: _Batch) -> int:
        """Wait for the batch's writes; returns how many keys they rewrote."""
        if batch.writes is None:
            return 0
        ok, problems, recorded = await batch.writes
        batch.writes = None
        batch.untouched.extend(problems)
        batch.recorded.extend(recorded)
        batch.changed += ok
        self.changed += ok
        return ok

    async def _finish(self, batch: _Batch, *, last: bool, next_pass: bool = False) -> None:
        eng = self.engine
        await self._settle(batch)
        self.scanned += batch.scanned
        for p in batch.untouched:
            eng.report.add_problem(p)
        eng.emit(
            MigrationProgress(
                revision=eng.revision,
                direction=eng.direction,
                label=self.label,
                processed=self.scanned,
                changed=self.changed,
                total=None if self.total is None else max(self.total, self.scanned),
                done=last,
            )
        )
        if eng.dry_run:
            return
        await self.engine._save_checkpoint(
            self.field,
            cursor=batch.cursor,
            pass_no=batch.pass_no + 1 if next_pass else batch.pass_no,
            scanned=batch.scanned,
            problems=batch.untouched + batch.recorded if eng.cluster else batch.untouched,
            done=last,
            changed=batch.changed if eng.cluster else 0,
        )
        batch.saved = True
        eng.check_lock()


def _apply(
    transform: Transform, keys: Sequence[str], values: Sequence[bytes | None]
) -> tuple[list[tuple[str, bytes, Rewrite]], list[MigrationProblem]]:
    """Transform the keys still there: what to write, and the problems of keys left alone."""
    items: list[tuple[str, bytes, Rewrite]] = []
    left_alone: list[MigrationProblem] = []
    for key, raw in zip(keys, values, strict=True):
        if raw is None:
            continue
        result = _as_rewrite(transform(key, raw))
        if result.value is None:
            left_alone.extend(result.problems)
        else:
            items.append((key, raw, result))
    return items, left_alone


def _problems_json(problems: Sequence[MigrationProblem]) -> str:
    if not problems:
        return ""
    return "[" + ",".join(p.to_json() for p in problems) + "]"
