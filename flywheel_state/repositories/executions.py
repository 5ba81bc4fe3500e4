"""ExecutionRepository: cached flow execution results (default TTL 1 hour, not sliding)."""

from __future__ import annotations

from typing import ClassVar

from flywheel_state.models._base import Document
from flywheel_state.models.execution import ExecutionResult
from flywheel_state.repositories.base import Repository

__all__ = ["ExecutionRepository"]


class ExecutionRepository(Repository[ExecutionResult]):
    """Execution results at ``{namespace}:execution:{id}``.

    ``save`` sets the TTL (default 1 hour); partial writes keep the remaining TTL unless a
    ``ttl`` is given; ``touch`` restarts it.
    """

    model: ClassVar[type[Document]] = ExecutionResult
