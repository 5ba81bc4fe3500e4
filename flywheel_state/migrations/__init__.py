"""Versioned migrations of index schemas and data, safe to run on live data.

Scripts live in ``flywheel_state/migrations/versions/NNNN_slug.py`` (Alembic's shape: module-level
``revision`` / ``down_revision`` / ``description`` and ``async def upgrade(ctx)`` /
``async def downgrade(ctx)``); the logic lives in library operations (``ctx.ops``). The runner
(``store.migrations``) applies them one at a time per namespace under a lock, records them in
Redis, resumes interrupted data migrations from checkpoints, and is what ``flywheel-state
migrate`` calls::

    status = await store.migrations.status()
    report = await store.migrations.upgrade()              # to head
    await store.migrations.upgrade(dry_run=True)          # what would change; writes nothing
    await store.migrations.downgrade("0001")
    await store.migrations.history()
    await store.migrations.stamp("0002")
"""

from flywheel_state.migrations.context import DEFAULT_BATCH_SIZE, MigrationContext, ProgressCallback
from flywheel_state.migrations.ops import Operations, Rewrite, RewriteResult
from flywheel_state.migrations.report import (
    MigrationProblem,
    MigrationProgress,
    MigrationRecord,
    MigrationReport,
    MigrationStatus,
    StepReport,
)
from flywheel_state.migrations.runner import MigrationRunner
from flywheel_state.migrations.script import BASE, HEAD, Script, ScriptDirectory, default_scripts

__all__ = [
    "BASE",
    "DEFAULT_BATCH_SIZE",
    "HEAD",
    "MigrationContext",
    "MigrationProblem",
    "MigrationProgress",
    "MigrationRecord",
    "MigrationReport",
    "MigrationRunner",
    "MigrationStatus",
    "Operations",
    "ProgressCallback",
    "Rewrite",
    "RewriteResult",
    "Script",
    "ScriptDirectory",
    "StepReport",
    "default_scripts",
]
