"""Versioned migrations (placeholder runner until the migrations work lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywheel_state.indexes import IndexField, IndexSpec, create_index, point_alias

if TYPE_CHECKING:
    from flywheel_state.store import Store

__all__ = ["MigrationRunner"]

SESSION_INDEX = IndexSpec(
    "session",
    1,
    (
        IndexField("backend", "TAG"),
        IndexField("status", "TAG"),
        IndexField("current_flow_id", "TAG"),
        IndexField("user_id", "TAG"),
        IndexField("created_at", "NUMERIC", sortable=True),
        IndexField("last_active", "NUMERIC", sortable=True),
    ),
)
EXECUTION_INDEX = IndexSpec(
    "execution",
    1,
    (
        IndexField("session_id", "TAG"),
        IndexField("flow_id", "TAG"),
        IndexField("backend", "TAG"),
        IndexField("status", "TAG"),
        IndexField("created_at", "NUMERIC", sortable=True),
        IndexField("duration_ms", "NUMERIC", sortable=True),
    ),
)


class MigrationRunner:
    """Applies migrations to one Store's namespace."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def check_on_connect(self, *, auto_migrate: bool) -> None:
        """Create the indexes when asked to migrate automatically."""
        if not auto_migrate:
            return
        client = self._store.client
        ns = self._store.namespace
        for spec in (SESSION_INDEX, EXECUTION_INDEX):
            name = await create_index(client, ns, spec)
            await point_alias(client, ns, spec.kind, name)
