"""ExecutionRepository: cached flow execution results (default TTL 1 hour, not sliding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from flywheel_state.models.enums import Backend, ExecutionStatus
from flywheel_state.models.execution import ExecutionResult
from flywheel_state.repositories._filters import Indexed, QuerySchema
from flywheel_state.repositories._paging import Stats
from flywheel_state.repositories.base import Repository

__all__ = ["EXECUTION_QUERIES", "ExecutionRepository", "ExecutionStats"]


@dataclass(frozen=True)
class ExecutionStats(Stats):
    """``executions.stats()``: records per flow id (those in use) and per status (every member)."""

    flow_id: dict[str, int]
    status: dict[str, int]


EXECUTION_QUERIES = QuerySchema(
    fields=(
        Indexed("session_id", "TAG"),
        Indexed("flow_id", "TAG", sortable=True),
        Indexed("backend", "TAG", sortable=True, enum=Backend),
        Indexed("status", "TAG", sortable=True, enum=ExecutionStatus),
        Indexed("created_at", "NUMERIC", sortable=True, datetimes=True),
        Indexed("duration_ms", "NUMERIC", sortable=True),
    ),
    aliases={
        "created_after": ("created_at", ">="),
        "created_before": ("created_at", "<"),
        "min_duration_ms": ("duration_ms", ">="),
        "max_duration_ms": ("duration_ms", "<="),
    },
    default_sort="-created_at",
    stats_fields=("flow_id", "status"),
    stats_type=ExecutionStats,
)
"""What execution results are indexed by: the one declaration (index, filters, sorts, stats)."""


class ExecutionRepository(Repository[ExecutionResult]):
    """Execution results at ``{namespace}:execution:{id}``.

    ``save`` sets the TTL (default 1 hour); partial writes keep the remaining TTL unless a
    ``ttl`` is given; ``touch`` restarts it.
    """

    model = ExecutionResult
    query_schema: ClassVar[QuerySchema | None] = EXECUTION_QUERIES
    #: The fields ``sort`` may name (``-`` prefix: descending).
    sortable_fields: ClassVar[tuple[str, ...]] = EXECUTION_QUERIES.sort_fields
