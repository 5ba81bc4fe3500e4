"""MigrationRunner: applies, undoes and records migration scripts for one Store's namespace.

Bookkeeping keys (all under ``{ns}:_migrations:``):

========================  =====================================================================
``revision``              string: the applied revision (absent: nothing applied)
``applied``               hash: revision -> JSON record of the upgrade that applied it
``log``                   list: JSON records of every upgrade, downgrade and stamp (last 1000)
``lock``                  string with expiry: the runner holding the namespace (JSON holder)
``running``               string: the step in progress (left behind by a killed run)
``checkpoint:{rev}:{dir}`` hash: cursors and counters of an unfinished step's data operations
``checkpoint:…:problems`` list: problems found so far by that step
========================  =====================================================================
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Protocol

from redis.commands.core import AsyncScript

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.config import Settings
from flywheel_state.errors import (
    FlywheelStateError,
    MigrationError,
    SchemaOutOfDateError,
    SearchUnavailableError,
)
from flywheel_state.migrations._lock import MigrationLock, parse_holder, parse_json_object
from flywheel_state.migrations._scripts import COMMIT_SCRIPT
from flywheel_state.migrations.context import (
    DEFAULT_BATCH_SIZE,
    MigrationContext,
    ProgressCallback,
    bookkeeping_prefix,
    checkpoint_keys,
)
from flywheel_state.migrations.report import (
    MAX_PROBLEMS_KEPT,
    Direction,
    MigrationProblem,
    MigrationRecord,
    MigrationReport,
    MigrationStatus,
    StepReport,
)
from flywheel_state.migrations.script import BASE, HEAD, Script, ScriptDirectory, default_scripts


class MigrationTarget(Protocol):
    """What a runner needs of the store it migrates (a :class:`~flywheel_state.Store` is one).

    The runner depends on this, not on the Store class, so ``store`` and ``migrations`` don't
    import each other.
    """

    @property
    def client(self) -> Client: ...

    @property
    def namespace(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def search(self) -> bool: ...

    @property
    def is_cluster(self) -> bool: ...

    async def has_distributed_search(self) -> bool: ...


@dataclass(frozen=True)
class ClientTarget:
    """A :class:`MigrationTarget` made of a client, a namespace and settings (no Store).

    ``MigrationRunner.for_client(client, namespace, settings)`` uses it.
    """

    client: Client
    namespace: str
    settings: Settings
    search: bool = True
    is_cluster: bool = False
    distributed_search: bool = False

    async def has_distributed_search(self) -> bool:
        return self.distributed_search


__all__ = ["ClientTarget", "MigrationRunner", "MigrationTarget"]

_COMMIT = AsyncScript(None, COMMIT_SCRIPT.encode())  # type: ignore[arg-type]
_LOG_CAP = 1000


class MigrationRunner:
    """Runs migration scripts against one namespace (``store.migrations``).

    Args:
        store: The Store whose client and namespace to use (it need not be connected: the
            ``migrate`` commands use a runner before the schema is current).
        scripts: The scripts to run (default: those shipped with flywheel-state).
        lock_ttl: Seconds the migration lock lives without renewal (a dead runner's lock
            expires after this long; a live runner renews it every third of it).
        batch_size: Keys per batch in data operations.
    """

    def __init__(
        self,
        store: MigrationTarget,
        *,
        scripts: ScriptDirectory | None = None,
        lock_ttl: float = 30.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self._store = store
        self.scripts = scripts or default_scripts()
        self.lock_ttl = lock_ttl
        self.batch_size = batch_size

    @classmethod
    def for_client(
        cls,
        client: Client,
        namespace: str,
        settings: Settings,
        *,
        search: bool = True,
        cluster: bool = False,
        distributed_search: bool = False,
        **options: Any,
    ) -> MigrationRunner:
        """A runner on ``client`` for ``namespace``, without a Store (``options`` as for the
        constructor: ``scripts``, ``lock_ttl``, ``batch_size``)."""
        target = ClientTarget(client, namespace, settings, search, cluster, distributed_search)
        return cls(target, **options)

    def __repr__(self) -> str:
        return f"MigrationRunner(namespace={self.namespace!r}, scripts={self.scripts!r})"

    @property
    def namespace(self) -> str:
        """The namespace this runner migrates."""
        return self._store.namespace

    @property
    def head(self) -> str | None:
        """The newest revision of the scripts."""
        return self.scripts.head

    @property
    def _client(self) -> Client:
        return self._store.client

    @property
    def _cluster(self) -> bool:
        return self._store.is_cluster

    def _key(self, *parts: str) -> str:
        # One lock per namespace, whatever the chain: the library's and the application's
        # migrations never run at the same time.
        chain = None if parts == ("lock",) else self.scripts.chain
        prefix = bookkeeping_prefix(self.namespace, cluster=self._cluster, chain=chain)
        return ":".join((prefix, *parts))

    # ------------------------------------------------------------------ reading state

    async def _read_state(
        self,
    ) -> tuple[str | None, dict[str, Any] | None, dict[str, MigrationRecord], bytes | None]:
        with translate_errors("reading the migration state"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._key("revision"))
                pipe.get(self._key("running"))
                pipe.hgetall(self._key("applied"))
                pipe.get(self._key("lock"))
                revision, running, applied, lock = await pipe.execute()
        records: dict[str, MigrationRecord] = {}
        for rev, raw in applied.items():
            try:
                records[as_str(rev)] = MigrationRecord.from_json(raw)
            except (ValueError, TypeError, KeyError):
                continue
        current = None if revision is None else as_str(revision)
        return current, parse_json_object(running), records, lock

    async def current(self) -> str | None:
        """The applied revision of the namespace (None: nothing applied yet)."""
        with translate_errors("reading the applied revision"):
            raw = await self._client.get(self._key("revision"))
        return None if raw is None else as_str(raw)

    async def status(self) -> MigrationStatus:
        """Where the namespace stands: applied revision, head, pending steps, lock holder."""
        current, running, records, lock = await self._read_state()
        known = current is None or self.scripts.knows(current)
        pending: tuple[str, ...] = ()
        if known:
            pending = tuple(s.revision for s in self._plan("upgrade", HEAD, current, running))
        applied = tuple(
            records[s.revision]
            for s in self.scripts.scripts[: self.scripts.index(current) + 1 if known else 0]
            if s.revision in records
        )
        return MigrationStatus(
            namespace=self.namespace,
            current=current,
            head=self.head,
            pending=pending,
            applied=applied,
            known=known,
            interrupted=running,
            lock_holder=parse_holder(lock),
            resolution=self.resolution(current, running),
            interrupted_script_missing=self._script_missing(running),
        )

    def _script_missing(self, running: dict[str, Any] | None) -> bool:
        return running is not None and not self.scripts.knows(str(running.get("revision")))

    def resolution(self, current: str | None, running: dict[str, Any] | None) -> str | None:
        """The commands that resolve an interrupted step (None when nothing is interrupted).

        ``migrate up`` finishes it and ``migrate down`` undoes it; when its script is missing
        (removed, or another migrations directory), only restoring it or ``migrate stamp``
        (after checking the data by hand) can.
        """
        if running is None:
            return None
        revision = str(running.get("revision"))
        back = current or BASE
        if self._script_missing(running):
            return (
                f"the script of revision {revision} is missing (removed, or another --directory):"
                f" restore it and run `flywheel-state migrate up`, or `flywheel-state migrate "
                f"stamp {back}` after checking the data by hand"
            )
        return (
            f"`flywheel-state migrate up` finishes it; `flywheel-state migrate down {back}` "
            "undoes it"
        )

    def _refuse_unresolved(
        self, plan: list[Script], current: str | None, running: dict[str, Any] | None
    ) -> None:
        """Never run past, or silently clear, an interrupted step that the plan doesn't resume."""
        if running is None:
            return
        revision = str(running.get("revision"))
        if self._script_missing(running) or all(s.revision != revision for s in plan):
            raise MigrationError(
                f"a {running.get('direction')} of revision {revision} was interrupted in "
                f"namespace {self.namespace!r} and this command would not resume it: "
                f"{self.resolution(current, running)}"
            )

    async def history(self) -> list[MigrationRecord]:
        """Every recorded upgrade, downgrade and stamp, oldest first (the last 1000)."""
        with translate_errors("reading the migration history"):
            raw = await self._client.lrange(self._key("log"), 0, -1)
        out: list[MigrationRecord] = []
        for item in raw:
            try:
                out.append(MigrationRecord.from_json(item))
            except (ValueError, TypeError, KeyError):
                continue
        return out

    # ------------------------------------------------------------------ planning

    def _ahead_error(self, current: str) -> SchemaOutOfDateError:
        return SchemaOutOfDateError(
            f"namespace {self.namespace!r} is at migration revision {current}, which this "
            f"version of flywheel-state does not know (its head is {self.head}): the data was "
            "migrated by newer code. Upgrade flywheel-state, or run `flywheel-state migrate "
            "down` with the newer version first."
        )

    def _plan(
        self, direction: Direction, target: str, current: str | None, running: dict[str, Any] | None
    ) -> list[Script]:
        scripts = self.scripts.scripts
        if current is not None and not self.scripts.knows(current):
            raise self._ahead_error(current)
        c = self.scripts.index(current)
        t = self.scripts.index(target)
        half_done = None if running is None else running.get("revision")
        half_direction = None if running is None else running.get("direction")
        if direction == "upgrade":
            if t < c:
                raise MigrationError(
                    f"target {target} is below the applied revision {current}: use downgrade"
                )
            plan = scripts[c + 1 : t + 1]
            # A killed downgrade of the applied revision left its data half undone: redo it.
            if c >= 0 and half_direction == "downgrade" and half_done == scripts[c].revision:
                plan = [scripts[c], *plan]
            return plan
        if t > c:
            raise MigrationError(
                f"target {target} is above the applied revision {current or BASE}: use upgrade"
            )
        plan = list(reversed(scripts[t + 1 : c + 1]))
        # A killed upgrade of the next revision left its data half done: undo that first.
        if (
            c + 1 < len(scripts)
            and half_direction == "upgrade"
            and half_done == scripts[c + 1].revision
        ):
            plan = [scripts[c + 1], *plan]
        return plan

    async def plan(self, direction: Direction, target: str) -> list[Script]:
        """The scripts an upgrade or downgrade to ``target`` would run now, in order.

        Raises:
            MigrationError: Unknown target, or one on the wrong side of the applied revision.
            SchemaOutOfDateError: The applied revision is unknown to this code.
        """
        self.scripts.index(target)
        current, running, _, _ = await self._read_state()
        return self._plan(direction, target, current, running)

    # ------------------------------------------------------------------ running

    async def upgrade(
        self,
        target: str = HEAD,
        *,
        dry_run: bool = False,
        wait: bool = False,
        wait_timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> MigrationReport:
        """Apply every revision up to ``target``, in order, each recorded as it finishes.

        Args:
            target: ``"head"``, or a revision (``"0002"`` or ``"0002_import_legacy_strings"``).
            dry_run: Only report what would change (revisions, documents counted, samples):
                nothing is written, not even the lock.
            wait: When another runner holds the lock, wait for it instead of failing.
            wait_timeout: With ``wait``, give up after this many seconds.
            progress: Called after each batch of a data operation, once its writes are
                acknowledged and before its checkpoint is saved. An exception it raises stops
                the run right there (as a crash would): the writes already sent stand, the
                checkpoint stays at the batch before, and the next run scans again from it,
                skipping what was rewritten. The exception is raised as a MigrationError.

        Returns:
            What each step did (or would do).

        Raises:
            MigrationLockedError: Another runner holds the lock (and ``wait`` is False).
            SchemaOutOfDateError: The applied revision is unknown to this code.
            MigrationError: The target is unknown or below the applied revision, or a step
                failed (the step stays unrecorded; run again to resume it).
        """
        return await self._run("upgrade", target, dry_run, wait, wait_timeout, progress)

    async def downgrade(
        self,
        target: str,
        *,
        dry_run: bool = False,
        wait: bool = False,
        wait_timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> MigrationReport:
        """Undo revisions, newest first, until ``target`` is the applied revision.

        Args:
            target: ``"base"`` (undo everything) or the revision to go back to.
            dry_run: Only report what would change; nothing is written.
            wait: When another runner holds the lock, wait for it instead of failing.
            wait_timeout: With ``wait``, give up after this many seconds.
            progress: As for :meth:`upgrade`.

        Raises:
            MigrationLockedError, SchemaOutOfDateError, MigrationError: as for :meth:`upgrade`;
            MigrationError also when a revision is irreversible.
        """
        return await self._run("downgrade", target, dry_run, wait, wait_timeout, progress)

    async def _run(
        self,
        direction: Direction,
        target: str,
        dry_run: bool,
        wait: bool,
        wait_timeout: float | None,
        progress: ProgressCallback | None,
    ) -> MigrationReport:
        self.scripts.index(target)  # unknown targets fail before anything else
        if dry_run:
            current, running, _, _ = await self._read_state()
            plan = self._plan(direction, target, current, running)
            self._refuse_unresolved(plan, current, running)
            return await self._execute(direction, plan, current, None, True, progress)
        lock = MigrationLock(
            self._client,
            self._key("lock"),
            purpose=f"{direction} to {target}",
            ttl=self.lock_ttl,
        )
        await lock.acquire(wait=wait, timeout=wait_timeout)
        try:
            # Read the state under the lock: a runner we waited for may have done the work.
            current, running, _, _ = await self._read_state()
            plan = self._plan(direction, target, current, running)
            self._refuse_unresolved(plan, current, running)
            return await self._execute(direction, plan, current, lock, False, progress)
        finally:
            await lock.release()

    async def _execute(
        self,
        direction: Direction,
        plan: list[Script],
        current: str | None,
        lock: MigrationLock | None,
        dry_run: bool,
        progress: ProgressCallback | None,
    ) -> MigrationReport:
        # A cluster without a distributed query engine can never hold indexes: there, index
        # operations are not applicable (skipped, reported) and data operations run. Elsewhere
        # a search=False Store refuses (the server may well have search: use it).
        no_engine = bool(plan) and self._cluster and not await self._store.has_distributed_search()
        if plan and not dry_run and not no_engine and not self._store.search:
            revisions = ", ".join(s.revision for s in plan)
            raise SearchUnavailableError(
                f"this Store was opened with search=False: migrations ({revisions}) "
                "create indexes or rely on the query engine, so none is run. Run them with a "
                "Store on a server with search (Redis 8, Redis Stack, Redis Software/Cloud)."
            )
        report = MigrationReport(
            direction=direction, from_revision=current, to_revision=current, dry_run=dry_run
        )
        for script in plan:
            step = StepReport(
                revision=script.revision,
                description=script.description,
                direction=direction,
                dry_run=dry_run,
            )
            report.steps.append(step)
            ctx = MigrationContext(
                client=self._client,
                namespace=self.namespace,
                settings=self._store.settings,
                revision=script.revision,
                direction=direction,
                dry_run=dry_run,
                report=step,
                lock=lock,
                progress=progress,
                batch_size=self.batch_size,
                cluster=self._cluster,
                chain=self.scripts.chain,
            )
            ctx.search = self._store.search  # index ops refuse without it
            ctx.skip_index_ops = no_engine
            after = script.revision if direction == "upgrade" else script.down_revision
            started = datetime.now(timezone.utc)
            t0 = time.perf_counter()
            if lock is not None:
                await self._mark_running(script, direction, started)
            fn = script.upgrade if direction == "upgrade" else script.downgrade
            try:
                await fn(ctx)
            except FlywheelStateError:
                raise
            except Exception as exc:
                raise MigrationError(
                    f"{direction} of revision {script.revision} ({script.name}) failed: "
                    f"{type(exc).__name__}: {exc}. Nothing after it ran; its finished batches "
                    "are kept, and running the migration again resumes it."
                ) from exc
            step.duration_s = time.perf_counter() - t0
            if lock is not None:
                await self._record(script, direction, step, started, current, after, lock)
            current = after
            report.to_revision = after
        return report

    async def _mark_running(self, script: Script, direction: Direction, started: datetime) -> None:
        marker = json.dumps(
            {
                "revision": script.revision,
                "direction": direction,
                "started_at": started.isoformat(timespec="seconds"),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
            separators=(",", ":"),
        )
        with translate_errors("marking the migration step as running"):
            await self._client.set(self._key("running"), marker)

    async def _gather_problems(
        self, revision: str, direction: Direction, step: StepReport
    ) -> tuple[int, list[MigrationProblem]]:
        checkpoint_key, problems_key = checkpoint_keys(
            self.namespace, revision, direction, cluster=self._cluster, chain=self.scripts.chain
        )
        with translate_errors("reading the step's problems"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(checkpoint_key)
                pipe.lrange(problems_key, 0, MAX_PROBLEMS_KEPT - 1)
                state, chunks = await pipe.execute()
        if not state and not chunks:
            return step.problem_count, list(step.problems)
        count = sum(int(v) for k, v in state.items() if as_str(k).endswith(":problems"))
        items = (item for chunk in chunks for item in json.loads(chunk))
        return count, [MigrationProblem(**item) for item in islice(items, MAX_PROBLEMS_KEPT)]

    def _step_keys(self, revision: str) -> list[str]:
        """The checkpoint keys of both directions of ``revision``."""
        chain = self.scripts.chain
        return [
            *checkpoint_keys(
                self.namespace, revision, "upgrade", cluster=self._cluster, chain=chain
            ),
            *checkpoint_keys(
                self.namespace, revision, "downgrade", cluster=self._cluster, chain=chain
            ),
        ]

    async def _record(
        self,
        script: Script,
        direction: Direction,
        step: StepReport,
        started: datetime,
        before: str | None,
        after: str | None,
        lock: MigrationLock,
    ) -> None:
        count, kept = await self._gather_problems(script.revision, direction, step)
        step.problem_count, step.problems = count, kept
        record = MigrationRecord(
            revision=script.revision,
            action=direction,
            description=script.description,
            from_revision=before,
            to_revision=after,
            started_at=started,
            duration_s=round(step.duration_s, 6),
            documents_changed=step.documents_changed,
            host=socket.gethostname(),
            pid=os.getpid(),
            problem_count=count,
            problems=tuple(kept),
        )
        raw = record.to_json()
        deleted = [script.revision] if direction == "downgrade" else []
        added = [(script.revision, raw)] if direction == "upgrade" else []
        await self._commit(lock, after, raw, deleted, added, self._step_keys(script.revision))

    async def _commit(
        self,
        lock: MigrationLock,
        revision: str | None,
        record: str,
        deleted: list[str],
        added: list[tuple[str, str]],
        extra_keys: list[str],
    ) -> None:
        keys = [
            lock.key,
            self._key("revision"),
            self._key("applied"),
            self._key("log"),
            self._key("running"),
            *extra_keys,
        ]
        args: list[Any] = [lock.value, revision or "", record, _LOG_CAP, len(deleted), *deleted]
        args.append(len(added))
        for field, value in added:
            args += [field, value]
        with translate_errors("recording the migration"):
            ok = await _COMMIT(keys=keys, args=args, client=self._client)
        if not ok:
            raise MigrationError(
                f"the migration lock of namespace {self.namespace!r} was lost before the step "
                "could be recorded (this runner was paused longer than the lock's TTL?). Its "
                "work is done but unrecorded: run the migration again to record it."
            )

    async def stamp(
        self, revision: str, *, wait: bool = False, wait_timeout: float | None = None
    ) -> MigrationRecord:
        """Record ``revision`` as applied without running anything.

        For data whose schema is known to be at ``revision`` already (restored from a backup,
        migrated by hand). Clears any interrupted step and its checkpoints.

        Args:
            revision: A revision, ``"head"`` or ``"base"``.
            wait: Wait for another runner instead of failing.
            wait_timeout: With ``wait``, give up after this many seconds.

        Returns:
            The history record written.

        Raises:
            MigrationError: Unknown revision.
            MigrationLockedError: Another runner holds the lock.
        """
        t = self.scripts.index(revision)
        scripts = self.scripts.scripts
        target = scripts[t].revision if t >= 0 else None
        lock = MigrationLock(
            self._client, self._key("lock"), purpose=f"stamp {revision}", ttl=self.lock_ttl
        )
        await lock.acquire(wait=wait, timeout=wait_timeout)
        try:
            current, _, records, _ = await self._read_state()
            now = datetime.now(timezone.utc)
            record = MigrationRecord(
                revision=target,
                action="stamp",
                description=scripts[t].description if t >= 0 else "no revision applied",
                from_revision=current,
                to_revision=target,
                started_at=now,
                duration_s=0.0,
                documents_changed=0,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            deleted = [s.revision for s in scripts[t + 1 :] if s.revision in records]
            deleted += [r for r in records if not self.scripts.knows(r)]
            added = [
                (s.revision, replace(record, revision=s.revision).to_json())
                for s in scripts[: t + 1]
                if s.revision not in records
            ]
            extra = [k for s in scripts for k in self._step_keys(s.revision)]
            await self._commit(lock, target, record.to_json(), deleted, added, extra)
            return record
        finally:
            await lock.release()

    # ------------------------------------------------------------------ at connect

    async def check_on_connect(self, *, auto_migrate: bool) -> None:
        """Compare the applied revision with the head (one round trip when current).

        Args:
            auto_migrate: Upgrade to head when behind (waiting for a runner already at work)
                instead of raising.

        Raises:
            SchemaOutOfDateError: Behind the head (without ``auto_migrate``), or at a revision
                this code does not know.
        """
        with translate_errors("reading the applied revision"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._key("revision"))
                pipe.get(self._key("running"))
                raw_current, raw_running = await pipe.execute()
        current = None if raw_current is None else as_str(raw_current)
        if current is not None and not self.scripts.knows(current):
            raise self._ahead_error(current)
        if current == self.head and raw_running is None:
            return
        if auto_migrate:
            await self.upgrade(HEAD, wait=True)
            return
        running = parse_json_object(raw_running)
        pending = [s.revision for s in self._plan("upgrade", HEAD, current, running)]
        if running is not None:
            raise SchemaOutOfDateError(
                f"namespace {self.namespace!r} is at migration revision {current or BASE}, and a "
                f"{running.get('direction')} of revision {running.get('revision')} was "
                f"interrupted: {self.resolution(current, running)}"
            )
        raise SchemaOutOfDateError(
            f"namespace {self.namespace!r} is at migration revision {current or BASE}; this "
            f"code needs {self.head} ({len(pending)} pending: {', '.join(pending)})."
            " Run `flywheel-state migrate up` (or connect with auto_migrate=True)."
        )
