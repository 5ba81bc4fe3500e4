"""ExecutionResult: the cached outcome of one flow execution."""

from __future__ import annotations

from typing import Any, ClassVar

from aredis_om import Field

from flywheel_state.models._base import Document
from flywheel_state.models._types import FiniteFloat, Id, TagStr, UtcDatetime, utcnow
from flywheel_state.models.enums import Backend, ExecutionStatus

__all__ = ["ExecutionResult"]


class ExecutionResult(Document, index=True):
    """The result of running a flow. Stored at ``{namespace}:execution:{id}``."""

    KIND: ClassVar[str] = "execution"
    FREE_FORM: ClassVar[tuple[str, ...]] = ("result", "metadata")

    id: Id = Field(primary_key=True)
    session_id: TagStr | None = Field(default=None, index=True)
    flow_id: TagStr | None = Field(default=None, index=True)
    backend: Backend | None = Field(default=None, index=True)
    status: ExecutionStatus = Field(default=ExecutionStatus.COMPLETED, index=True)
    result: Any = None
    error: str | None = None
    duration_ms: FiniteFloat | None = Field(default=None, index=True, sortable=True)
    created_at: UtcDatetime = Field(default_factory=utcnow, index=True, sortable=True)
    metadata: dict[str, Any] = Field(default_factory=dict)
