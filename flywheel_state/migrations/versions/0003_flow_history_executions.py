"""Flow histories imported by an earlier 0002 as ExecutionResult documents (and back).

Before this revision, 0002 imported each ``{ns}:history:<session_id>:<flow_id>`` string as a JSON
document of the same fields, which no model, index or API reads. This revision converts each
such document into one ExecutionResult per execution (``session_id`` / ``flow_id`` set,
``result`` the execution record, ids ``history_<hash>_<position>``, the history key's TTL),
the documents the compat layer's ``cache_flow_history`` writes, so ``get_flow_history`` and
``store.executions.find(session_id=..., flow_id=...)`` read them. On a namespace whose 0002
ran after this revision existed there is nothing left to convert.

Downgrade: each history's documents back into one JSON record in 0002's shape. Both ways can
be interrupted and run again (see :mod:`flywheel_state.migrations.legacy_history`).
"""

from __future__ import annotations

from flywheel_state.migrations import MigrationContext
from flywheel_state.migrations.legacy_history import join_histories, split_histories

revision = "0003"
down_revision = "0002"
description = "Flow histories imported by 0002 as ExecutionResult documents"


async def upgrade(ctx: MigrationContext) -> None:
    """Split every flow history record into ExecutionResult documents."""
    await split_histories(ctx)


async def downgrade(ctx: MigrationContext) -> None:
    """Join each flow history's ExecutionResult documents back into one record."""
    await join_histories(ctx)
