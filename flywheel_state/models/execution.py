"""ExecutionResult: the cached outcome of one flow execution."""

from __future__ import annotations

from typing import Any, ClassVar

from aredis_om import Field

from flywheel_state.models._base import Document
from flywheel_state.models._types import FiniteFloat, Id, TagStr, UtcDatetime, utcnow
from flywheel_state.models.enums import Backend, ExecutionStatus

__all__ = ["ExecutionResult"]


class ExecutionResult(Document, index=True):
    """The result of running a flow. Stored at ``{namespace}:execution:{id}``.

    What is indexed is declared once, beside the repository (``EXECUTION_QUERIES``)."""

    KIND: ClassVar[str] = "execution"
    FREE_FORM: ClassVar[tuple[str, ...]] = ("result", "metadata")

    id: Id = Field(primary_key=True)
    session_id: TagStr | None = None
    flow_id: TagStr | None = None
    backend: Backend | None = None
    status: ExecutionStatus = ExecutionStatus.COMPLETED
    result: Any = None
    error: str | None = None
    duration_ms: FiniteFloat | None = None
    created_at: UtcDatetime = Field(default_factory=utcnow)
    metadata: dict[str, Any] = Field(default_factory=dict)
