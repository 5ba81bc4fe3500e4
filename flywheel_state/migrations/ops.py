"""Operations migration scripts call: index swaps behind aliases and batched key rewrites.

Scripts stay small (``await ctx.ops.swap_index(SPEC)``); the safety lives here:

- :meth:`Operations.swap_index` builds the new index beside the old one, waits until its
  background indexing is done and its document count matches the old index, moves the alias
  (FT.ALIASUPDATE, atomic) and only then drops the old version. Queries through the alias never
  see a partial index.
- :meth:`Operations.rewrite_keys` walks keys with SCAN (filtered by type on the server) in
  batches: one pipelined read and one pipelined write per batch. Each key is rewritten by a Lua
  script that checks the key still holds what was read, keeps its remaining TTL, and writes the
  new value atomically. A checkpoint (SCAN cursor and counters) is saved after each batch, so a
  run killed halfway resumes where it stopped. Since a rewritten key changes type (or schema
  version) it is recognisably done: a key SCAN returns twice, or a batch redone after a crash
  between its writes and its checkpoint, is never transformed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import ValidationError
from redis import exceptions as redis_exc
from redis.commands.core import AsyncScript

from flywheel_state._redis import as_str, translate_errors
from flywheel_state.errors import FlywheelStateError, MigrationError, SearchUnavailableError
from flywheel_state.indexes import (
    IndexSpec,
    alias_name,
    alias_target,
    create_index,
    drop_index,
    index_info,
    index_name,
    point_alias,
    wait_until_indexed,
)
from flywheel_state.migrations._scripts import (
    CHECKPOINT_SCRIPT,
    JSON_TYPE,
    KEYS_PER_SCRIPT,
    REWRITE_SCRIPT,
)
from flywheel_state.migrations.report import MAX_SAMPLES, MigrationProblem, MigrationProgress

if TYPE_CHECKING:
    from flywheel_state.migrations.context import MigrationContext
    from flywheel_state.models._base import Document

__all__ = ["KeyType", "Operations", "Rewrite", "RewriteResult", "Transform"]

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


class Operations:
    """The operations available to a migration script as ``ctx.ops``."""

    def __init__(self, ctx: MigrationContext) -> None:
        self._ctx = ctx
        self._rewrite_sha: str | None = None

    def _need_search(self, what: str) -> None:
        """Refuse an index operation on a Store opened with ``search=False``."""
        if not getattr(self._ctx, "search", True):
            raise SearchUnavailableError(
                f"migration {self._ctx.revision} {what}: it needs the query engine, and this "
                "Store was opened with search=False. Run it where search is available."
            )

    def _not_applicable(self, what: str) -> bool:
        """On a cluster without a distributed query engine an index step does not apply."""
        if not getattr(self._ctx, "skip_index_ops", False):
            return False
        self._ctx.report.actions.append(
            f"skipped {what}: not applicable on a cluster without a distributed query engine"
        )
        return True

    # ------------------------------------------------------------------ indexes

    async def swap_index(self, spec: IndexSpec, *, timeout: float = 600.0) -> str:
        """Make the ``spec.kind`` alias point at the index of ``spec``, without downtime.

        Creates ``{ns}:{kind}:idx:v{N}`` (unless it exists), waits until its background
        indexing has finished and, when the alias pointed at another version, until both
        indexes hold the same number of documents; then moves the alias (atomic) and drops
        every other version of that kind (documents are kept). Safe to run again.

        Args:
            spec: The index version to serve queries from (a frozen copy in the script).
            timeout: Seconds to wait for indexing.

        Returns:
            The name of the index the alias points at.

        Raises:
            MigrationError: Indexing did not finish in time, or the new index holds a different
                number of documents than the old one (the alias is left where it was).
        """
        ctx = self._ctx
        client = ctx.client
        ns = ctx.namespace
        name = index_name(ns, spec.kind, spec.version)
        if self._not_applicable(f"index {name}"):
            return name
        self._need_search("creates an index")
        alias = alias_name(ns, spec.kind)
        old = await alias_target(client, ns, spec.kind)
        stale = [n for n in await self._versions(spec.kind) if n != name]
        if ctx.dry_run:
            if await index_info(client, name) is None:
                ctx.action(f"create index {name}")
            if old != name:
                ctx.action(f"point alias {alias} at {name}")
            for other in stale:
                ctx.action(f"drop index {other}")
            return name
        if await index_info(client, name) is None:
            await create_index(client, ns, spec)
            ctx.action(f"created index {name}")
        count = await wait_until_indexed(client, name, timeout=timeout)
        if old is not None and old != name:
            count = await self._matching_count(name, old, timeout=timeout)
        if old != name:
            await point_alias(client, ns, spec.kind, name)
            ctx.action(f"pointed alias {alias} at {name} ({count} documents)")
        for other in stale:
            if await drop_index(client, other):
                ctx.action(f"dropped index {other}")
        return name

    async def _versions(self, kind: str) -> list[str]:
        """Every versioned index of ``kind`` in this namespace."""
        pattern = re.compile(re.escape(f"{self._ctx.namespace}:{kind}:idx:v") + r"\d+$")
        with translate_errors("listing indexes"):
            names = await self._ctx.client.execute_command("FT._LIST")
        return sorted(n for n in (as_str(x) for x in names) if pattern.match(n))

    async def _matching_count(self, new: str, old: str, *, timeout: float) -> int:
        # Both indexes follow writes synchronously once the new one has caught up, so their
        # counts, read in one transaction, are equal unless the new schema rejects documents.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, 5.0)
        while True:
            with translate_errors(f"comparing indexes {new} and {old}"):
                async with self._ctx.client.pipeline(transaction=True) as pipe:
                    pipe.execute_command("FT.INFO", new)
                    pipe.execute_command("FT.INFO", old)
                    new_raw, old_raw = await pipe.execute()
            new_info = _info_dict(new_raw)
            old_info = _info_dict(old_raw)
            n_new = int(as_str(new_info.get("num_docs", b"0")))
            n_old = int(as_str(old_info.get("num_docs", b"0")))
            if n_new == n_old:
                return n_new
            if loop.time() > deadline:
                failures = as_str(new_info.get("hash_indexing_failures", b"?"))
                raise MigrationError(
                    f"index {new} holds {n_new} documents but {old} holds {n_old} "
                    f"({failures} indexing failures): the alias still points at {old}. "
                    f"Fix the spec, FT.DROPINDEX {new}, and run the migration again."
                )
            await asyncio.sleep(0.05)

    async def drop_index(self, spec: IndexSpec) -> None:
        """Drop the index of ``spec`` (documents are kept), and its alias if it points there.

        Safe to run again: an absent index or alias is not an error.
        """
        ctx = self._ctx
        name = index_name(ctx.namespace, spec.kind, spec.version)
        if self._not_applicable(f"dropping index {name}"):
            return
        self._need_search("drops an index")
        alias = alias_name(ctx.namespace, spec.kind)
        points_here = await alias_target(ctx.client, ctx.namespace, spec.kind) == name
        exists = await index_info(ctx.client, name) is not None
        if ctx.dry_run:
            if points_here:
                ctx.action(f"delete alias {alias}")
            if exists:
                ctx.action(f"drop index {name}")
            return
        if points_here:
            with translate_errors(f"deleting alias {alias}"):
                try:
                    await ctx.client.execute_command("FT.ALIASDEL", alias)
                    ctx.action(f"deleted alias {alias}")
                except redis_exc.ResponseError as exc:
                    if "not exist" not in str(exc).lower():
                        raise
        if exists and await drop_index(ctx.client, name):
            ctx.action(f"dropped index {name}")

    # ------------------------------------------------------------------ data

    async def upgrade_documents(
        self, model: type[Document], *, label: str | None = None
    ) -> RewriteResult:
        """Rewrite the stored ``model`` documents of an older ``schema_version`` in the current one.

        Each document is read through the model (which applies the registered upgrade
        functions, see ``flywheel_state.models._upgrades``) and written back with the model's
        encoding, keeping its TTL and its ``version``. Documents already current are skipped;
        ones the model can't read are reported and left as they are. Encrypted fields are
        decrypted for the upgrade and sealed again with the store's cipher (without the key,
        such documents are reported and left as they are).
        """
        ctx = self._ctx
        target = model.SCHEMA_VERSION
        opener, sealer = _crypto_hooks(ctx, model)

        def transform(key: str, raw: bytes) -> Rewrite | None:
            try:
                data = json.loads(raw)
            except ValueError:
                return Rewrite(None, (ctx.problem(key, "not valid JSON; left as it is"),))
            if not isinstance(data, dict) or data.get("schema_version") == target:
                return None
            try:
                if opener is not None:
                    data = json.loads(opener(key, raw))
                doc = model.model_validate(data)
                return Rewrite(doc.model_dump_json() if sealer is None else sealer(key, doc))
            except (ValidationError, FlywheelStateError, ValueError) as exc:
                msg = f"can't be read as {model.__name__}: {exc}; left as it is"
                return Rewrite(None, (ctx.problem(key, msg.replace("\n", " ")),))

        return await self.rewrite_keys(
            match=f"{ctx.namespace}:{model.KIND}:*",
            from_type=JSON_TYPE,
            to_type=JSON_TYPE,
            transform=transform,
            label=label or f"{model.KIND} documents -> schema v{target}",
        )

    async def rewrite_keys(
        self,
        *,
        match: str,
        from_type: KeyType,
        to_type: KeyType,
        transform: Transform,
        label: str,
        batch_size: int | None = None,
    ) -> RewriteResult:
        """Rewrite every key matching ``match`` whose type is ``from_type``, in batches.

        For each batch: SCAN (MATCH ``match`` TYPE ``from_type``), one read (MGET or
        JSON.MGET), ``transform(key, value)`` in Python, then one pipelined round of Lua
        script calls that write each new value as ``to_type`` only if the key still holds what
        was read, with the key's remaining TTL, atomically (a key changed by a writer in
        between is read and transformed again). Then the progress callback, the checkpoint
        (cursor and counters), and a check that the lock is still ours. The writes of one batch
        overlap the reading and transforming of the next.

        In a dry run nothing is written: keys are read and transformed, counted, and the first
        few are kept as samples in the report.

        Args:
            match: SCAN pattern (``{ns}:session:*``).
            from_type: The type of the keys to rewrite (``string`` or ``ReJSON-RL``).
            to_type: The type to write them as.
            transform: ``(key, value) -> Rewrite | str | None``; must be a pure function of
                its input (it may run again for a key whose write was not acknowledged).
            label: What this does, for progress and reports.
            batch_size: Keys per batch (default: the runner's).

        Returns:
            The counts, including those of an interrupted earlier run of this step.
        """
        ctx = self._ctx
        run = _RewriteRun(
            ops=self,
            field=f"{ctx._next_op()}:",
            match=match,
            from_type=from_type,
            to_type=to_type,
            transform=transform,
            label=label,
            size=max(1, batch_size or ctx.batch_size),
        )
        return await run.run()

    def _account(self, scanned: int, changed: int) -> None:
        self._ctx.report.documents_scanned += scanned
        self._ctx.report.documents_changed += changed

    async def _count(self, match: str, key_type: KeyType) -> int:
        """How many keys match (an estimate for the progress bar: one SCAN pass)."""
        count = 0
        nodes = await _primaries(self._ctx.client) if self._ctx.cluster else None
        scanner = _Scanner(self._ctx.client, match, key_type, 5000, 0, "\0", nodes)
        while True:
            keys, _, ended = await scanner.next()
            count += len(keys)
            if ended:
                return count

    async def _load_script(self) -> str:
        if self._rewrite_sha is None:
            with translate_errors("loading the rewrite script"):
                self._rewrite_sha = as_str(await self._ctx.client.script_load(REWRITE_SCRIPT))
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
        ctx = self._ctx
        ok = 0
        left_alone: list[MigrationProblem] = []
        recorded: list[MigrationProblem] = []
        pending = list(items)
        attempt = 0
        # On a cluster each call holds one key (its own slot); the pipeline sends every call to
        # the primary of its slot, one round trip per node.
        per_script = 1 if ctx.cluster else KEYS_PER_SCRIPT
        while pending:
            attempt += 1
            sha = await self._load_script()
            chunks = [pending[i : i + per_script] for i in range(0, len(pending), per_script)]
            with translate_errors(f"rewriting {len(pending)} keys"):
                async with ctx.client.pipeline(transaction=False) as pipe:
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
                            ctx.report.add_problem(p)
                        if ctx.cluster:
                            recorded.extend(result.problems)
                    elif status == "changed":
                        retry.append(key)
                    elif status.startswith("error:"):
                        left_alone.append(
                            ctx.problem(
                                key,
                                f"the server refused the new value ({status[6:]}); left as it was",
                            )
                        )
                    # 'gone' (expired or deleted) and 'skip' (rewritten already) need nothing.
            pending = redo
            if retry:
                if attempt >= MAX_ATTEMPTS:
                    left_alone.extend(
                        ctx.problem(k, "kept changing during the migration; left as it was")
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
        ctx = self._ctx
        if ctx.cluster:
            args: list[Any] = ["EVALSHA", sha, 1]
        else:
            args = ["EVALSHA", sha, 2 + len(chunk), ctx.checkpoint_key, ctx.problems_key]
        args += [key for key, _, _ in chunk]
        args += [from_type, to_type, field + "changed", field + "problems"]
        for _, raw, result in chunk:
            meta = hashlib.sha1(raw).hexdigest()
            if result.problems:
                meta += f"{len(result.problems)}|{_problems_json(result.problems)}"
            args += [meta, result.value]
        return args

    async def _read(self, keys: list[str], from_type: KeyType) -> list[bytes | None]:
        if self._ctx.cluster:
            # MGET / JSON.MGET must stay in one slot there: one GET per key, pipelined (one
            # round trip per node).
            get = "GET" if from_type == "string" else "JSON.GET"
            with translate_errors(f"reading {len(keys)} keys"):
                async with self._ctx.client.pipeline(transaction=False) as pipe:
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
            values: list[bytes | None] = await self._ctx.client.execute_command(*command)
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
        ctx = self._ctx
        if ctx.cluster:
            # No MULTI on a cluster: one script, atomic (both keys share the hash tag). The
            # rewrite counter and the rewritten keys' problems are recorded here.
            with translate_errors("saving the migration checkpoint"):
                await _CHECKPOINT(
                    keys=[ctx.checkpoint_key, ctx.problems_key],
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
                    client=ctx.client,
                )
            return
        assert cursor is not None  # counters-only saves are for a cluster
        with translate_errors("saving the migration checkpoint"):
            async with ctx.client.pipeline(transaction=True) as pipe:
                mapping: dict[str | bytes, bytes | float | int | str] = {
                    field + "cursor": cursor,
                    field + "pass": pass_no,
                }
                if done:
                    mapping[field + "done"] = 1
                pipe.hset(ctx.checkpoint_key, mapping=mapping)
                pipe.hincrby(ctx.checkpoint_key, field + "scanned", scanned)
                if problems:
                    pipe.rpush(ctx.problems_key, _problems_json(problems))
                    pipe.hincrby(ctx.checkpoint_key, field + "problems", len(problems))
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

    ops: Operations
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
        ops, ctx, field = self.ops, self.ops._ctx, self.field
        state: dict[str, str] = {}
        if not ctx.dry_run:
            with translate_errors("reading the migration checkpoint"):
                raw_state = await ctx.client.hgetall(ctx.checkpoint_key)
            state = {as_str(k): as_str(v) for k, v in raw_state.items()}
        cursor = int(state.get(field + "cursor", 0))
        pass_no = int(state.get(field + "pass", 1))
        self.scanned = int(state.get(field + "scanned", 0))
        self.changed = int(state.get(field + "changed", 0))
        resumed = bool(state.get(field + "cursor") or state.get(field + "done"))
        ctx.report.resumed = ctx.report.resumed or resumed
        if state.get(field + "done"):
            ops._account(self.scanned, self.changed)
            return RewriteResult(self.scanned, self.changed, resumed=True)
        if ctx._progress is not None and not ctx.dry_run:
            self.total = self.scanned + await ops._count(self.match, self.from_type)

        pass_from_zero = cursor == 0
        skip = ctx.key("_migrations") + ":"
        nodes = await _primaries(ctx.client) if ctx.cluster else None
        scanner = _Scanner(ctx.client, self.match, self.from_type, self.size, cursor, skip, nodes)
        fetched = await self._fetch(scanner)
        previous: _Batch | None = None
        batch: _Batch | None = None
        try:
            while True:
                batch = self._transform(fetched, pass_no)
                # Read the next batch before sending this one's writes, so that Redis runs
                # the writes while Python transforms the next batch.
                following = None if fetched.ended else await self._fetch(scanner)
                if batch.items and not ctx.dry_run:
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
                next_pass = not ctx.dry_run and not pass_from_zero and pass_no < MAX_PASSES
                await self._finish(batch, last=not next_pass, next_pass=next_pass)
                if not next_pass:
                    break
                pass_no += 1
                pass_from_zero = True
                scanner = _Scanner(
                    ctx.client, self.match, self.from_type, self.size, 0, skip, nodes
                )
                fetched = await self._fetch(scanner)
        except BaseException:
            # An error stopped the run: let the writes in flight land (their checkpoint is not
            # saved; a rerun skips what they rewrote). Their own errors would hide this one.
            for pending in (previous, batch):
                if pending is not None and pending.writes is not None:
                    with contextlib.suppress(Exception):
                        await self._settle(pending)
            if ctx.cluster and not ctx.dry_run:
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
            await self.ops._save_checkpoint(
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
        values = await self.ops._read(keys, self.from_type) if keys else []
        return _Fetched(keys, values, resume, ended)

    def _transform(self, fetched: _Fetched, pass_no: int) -> _Batch:
        ctx = self.ops._ctx
        items, untouched = _apply(self.transform, fetched.keys, fetched.values)
        first = pass_no == 1  # later passes only look for stragglers: nothing is counted twice
        batch = _Batch(
            cursor=fetched.resume,
            pass_no=pass_no,
            scanned=len(fetched.keys) if first else 0,
            untouched=untouched if first else [],
            items=items,
        )
        if ctx.dry_run:
            self.changed += len(batch.items)
            for key, raw, result in batch.items:
                for p in result.problems:
                    ctx.report.add_problem(p)
                if len(ctx.report.samples) < MAX_SAMPLES:
                    ctx.report.samples.append(
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
        ctx = self.ops._ctx
        await self._settle(batch)
        self.scanned += batch.scanned
        for p in batch.untouched:
            ctx.report.add_problem(p)
        ctx._emit(
            MigrationProgress(
                revision=ctx.revision,
                direction=ctx.direction,
                label=self.label,
                processed=self.scanned,
                changed=self.changed,
                total=None if self.total is None else max(self.total, self.scanned),
                done=last,
            )
        )
        if ctx.dry_run:
            return
        await self.ops._save_checkpoint(
            self.field,
            cursor=batch.cursor,
            pass_no=batch.pass_no + 1 if next_pass else batch.pass_no,
            scanned=batch.scanned,
            problems=batch.untouched + batch.recorded if ctx.cluster else batch.untouched,
            done=last,
            changed=batch.changed if ctx.cluster else 0,
        )
        batch.saved = True
        ctx._check_lock()


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


def _crypto_hooks(
    ctx: MigrationContext, model: type[Document]
) -> tuple[Callable[[str, bytes], bytes | str] | None, Callable[[str, Document], str] | None]:
    """How :meth:`Operations.upgrade_documents` opens and seals encrypted documents of
    ``model`` (``(None, None)``: the kind has no encrypted fields)."""
    from flywheel_state.crypto import ENCRYPTED_FIELDS, RecordCodec, has_envelope_marker
    from flywheel_state.repositories.base import _MAX_JSON_DEPTH, check_nesting, encode_json

    if model.KIND not in ENCRYPTED_FIELDS:
        return None, None
    cipher = ctx.settings.cipher
    codec = RecordCodec(cipher, ctx.namespace, model)
    if cipher is None:
        # No key: a document holding envelopes is refused (EncryptionKeyError), not rewritten.
        def detect(key: str, raw: bytes) -> bytes | str:
            return codec.open_document(key, raw) if has_envelope_marker(raw) else raw

        return detect, None

    def seal(key: str, doc: Document) -> str:
        return codec.seal_document(
            doc, encode_json, key=key, check=check_nesting, max_depth=_MAX_JSON_DEPTH
        )

    return codec.open_document, seal


def _problems_json(problems: Sequence[MigrationProblem]) -> str:
    if not problems:
        return ""
    return "[" + ",".join(p.to_json() for p in problems) + "]"


def _info_dict(raw: Any) -> dict[str, Any]:
    items = list(raw)
    return {as_str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
