"""MigrationContext: what a migration script's ``upgrade(ctx)`` / ``downgrade(ctx)`` receives."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flywheel_state._redis import Client
from flywheel_state.config import Settings
from flywheel_state.errors import MigrationError
from flywheel_state.migrations.engine import RewriteEngine
from flywheel_state.migrations.ops import Operations
from flywheel_state.migrations.report import (
    Direction,
    MigrationProblem,
    MigrationProgress,
    StepReport,
)

if TYPE_CHECKING:
    from flywheel_state.migrations._lock import MigrationLock

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MigrationContext",
    "ProgressCallback",
    "bookkeeping_prefix",
    "checkpoint_keys",
]

ProgressCallback = Callable[[MigrationProgress], None]
"""Called after each batch of a data operation (see :class:`MigrationProgress`)."""

DEFAULT_BATCH_SIZE = 500
"""Keys per batch (one pipelined round trip of reads and one of writes) in data operations."""


def bookkeeping_prefix(namespace: str, *, cluster: bool = False, chain: str | None = None) -> str:
    """Where a namespace's migration bookkeeping lives: ``{ns}:_migrations`` on one node.

    On a Redis Cluster the keys carry the namespace as a hash tag (``ns:_migrations:{ns}``), so
    the lock, the records and the checkpoints share one slot and the commit script can touch
    them together. Single-node names are unchanged (namespaces migrated before keep working);
    migrations never ran on a cluster before, so no cluster data uses other names.
    """
    base = namespace + ":_migrations"
    if chain is not None:  # an application's own chain of scripts: bookkeeping of its own
        base += ":" + chain
    return f"{base}:{{{namespace}}}" if cluster else base


def checkpoint_keys(
    namespace: str,
    revision: str,
    direction: Direction,
    *,
    cluster: bool = False,
    chain: str | None = None,
) -> tuple[str, str]:
    """The checkpoint hash and the problem list of one step (deleted when it is recorded)."""
    prefix = bookkeeping_prefix(namespace, cluster=cluster, chain=chain)
    checkpoint = ":".join((prefix, "checkpoint", revision, direction))
    return checkpoint, checkpoint + ":problems"


class MigrationContext:
    """The namespace, client and operations a migration script works with.

    Attributes:
        client: The Store's redis.asyncio client (bytes replies, RESP2).
        namespace: The namespace being migrated.
        settings: The Store's settings (default TTLs, ...).
        revision: The revision being applied or undone.
        direction: ``"upgrade"`` or ``"downgrade"``.
        dry_run: True when nothing may be written: operations only count and sample.
        report: What this step did; operations fill it in.
        ops: The library operations (:class:`~flywheel_state.migrations.ops.Operations`).
    """

    def __init__(
        self,
        *,
        client: Client,
        namespace: str,
        settings: Settings,
        revision: str,
        direction: Direction,
        dry_run: bool,
        report: StepReport,
        lock: MigrationLock | None,
        progress: ProgressCallback | None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cluster: bool = False,
        chain: str | None = None,
    ) -> None:
        self.client = client
        self.chain = chain
        self.namespace = namespace
        self.settings = settings
        self.revision = revision
        self.direction: Direction = direction
        self.dry_run = dry_run
        self.report = report
        self.batch_size = batch_size
        self.search = True
        """False when the Store was opened with ``search=False``: index operations refuse."""
        self.cluster = cluster
        """True on a Redis Cluster: rewrites walk every primary, one key per script call."""
        self.skip_index_ops = False
        """True on a cluster without a distributed query engine: index operations are not
        applicable there and are skipped (reported as such), data operations run."""
        engine = RewriteEngine(
            client=client,
            cluster=cluster,
            checkpoint_key=self.checkpoint_key,
            problems_key=self.problems_key,
            skip_prefix=self.key("_migrations") + ":",
            report=report,
            revision=revision,
            direction=direction,
            dry_run=dry_run,
            batch_size=batch_size,
            progress=progress,
            check_lock=None if lock is None else lock.check,
        )
        self.ops: Operations = Operations(self, engine)

    def key(self, *parts: str) -> str:
        """A key of this namespace: ``key("session", "abc")`` is ``{ns}:session:abc``."""
        return ":".join((self.namespace, *parts))

    @property
    def checkpoint_key(self) -> str:
        """The hash holding this step's checkpoints (deleted when the step is recorded)."""
        return checkpoint_keys(
            self.namespace, self.revision, self.direction, cluster=self.cluster, chain=self.chain
        )[0]

    @property
    def problems_key(self) -> str:
        """The list holding this step's problems until the step is recorded."""
        return checkpoint_keys(
            self.namespace, self.revision, self.direction, cluster=self.cluster, chain=self.chain
        )[1]

    def action(self, text: str) -> None:
        """Record a schema action in the report (``created index ...``)."""
        self.report.actions.append(("would " if self.dry_run else "") + text)

    def problem(
        self, key: str, message: str, *, field: str | None = None, value: object = None
    ) -> MigrationProblem:
        """Build a problem (a value that could not be mapped) to return from a transform."""
        return MigrationProblem(key=key, message=message, field=field, value=value)

    def irreversible(self, reason: str) -> MigrationError:
        """The error a downgrade that can't be undone raises: ``raise ctx.irreversible(why)``."""
        return MigrationError(f"revision {self.revision} is irreversible: {reason}")
