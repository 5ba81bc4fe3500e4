"""The session and execution indexes, version 1, behind their aliases.

Creates ``{ns}:session:idx:v1`` and ``{ns}:execution:idx:v1`` and points the aliases
``{ns}:session:idx`` / ``{ns}:execution:idx`` at them. The specs below are frozen copies: a later
index change adds a new revision with a v2 spec instead of editing these.
"""

from __future__ import annotations

from flywheel_state.indexes import IndexField, IndexSpec
from flywheel_state.migrations import MigrationContext

revision = "0001"
down_revision = None
description = "Session and execution indexes (v1) behind their aliases"

SESSION_INDEX_V1 = IndexSpec(
    "session",
    1,
    (
        IndexField("backend", "TAG", sortable=True),
        IndexField("status", "TAG", sortable=True),
        IndexField("current_flow_id", "TAG", sortable=True),
        IndexField("user_id", "TAG"),
        IndexField("created_at", "NUMERIC", sortable=True),
        IndexField("last_active", "NUMERIC", sortable=True),
    ),
)
EXECUTION_INDEX_V1 = IndexSpec(
    "execution",
    1,
    (
        IndexField("session_id", "TAG"),
        IndexField("flow_id", "TAG", sortable=True),
        IndexField("backend", "TAG", sortable=True),
        IndexField("status", "TAG", sortable=True),
        IndexField("created_at", "NUMERIC", sortable=True),
        IndexField("duration_ms", "NUMERIC", sortable=True),
    ),
)


async def upgrade(ctx: MigrationContext) -> None:
    """Create both indexes and point their aliases at them."""
    for spec in (SESSION_INDEX_V1, EXECUTION_INDEX_V1):
        await ctx.ops.swap_index(spec)


async def downgrade(ctx: MigrationContext) -> None:
    """Drop both indexes and their aliases (the documents are kept)."""
    for spec in (SESSION_INDEX_V1, EXECUTION_INDEX_V1):
        await ctx.ops.drop_index(spec)
