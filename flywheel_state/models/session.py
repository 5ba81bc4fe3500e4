"""Session and HistoryEntry."""

from __future__ import annotations

from typing import Any, ClassVar

from aredis_om import Field
from pydantic import BaseModel, ConfigDict

from flywheel_state.models._base import Document
from flywheel_state.models._types import FiniteFloat, Id, Int64, TagStr, UtcDatetime, utcnow
from flywheel_state.models.enums import Backend, SessionStatus

__all__ = ["HistoryEntry", "Session"]


class HistoryEntry(BaseModel):
    """One turn of a session's conversation.

    Old history items were free-form dicts (``{"q": ..., "a": ...}`` as well as role/content):
    keys other than ``role``, ``content`` and ``timestamp`` are kept as they are.
    """

    model_config = ConfigDict(extra="allow")

    role: str | None = None
    content: Any = None
    timestamp: UtcDatetime | None = None


class Session(Document, index=True):
    """A conversation routed to a flow backend. Stored at ``{namespace}:session:{id}``.

    What is indexed is declared once, beside the repository (``SESSION_QUERIES``)."""

    KIND: ClassVar[str] = "session"
    FREE_FORM: ClassVar[tuple[str, ...]] = ("context", "metadata", "history")

    id: Id = Field(primary_key=True)
    backend: Backend
    backend_session_id: str | None = None
    status: SessionStatus = SessionStatus.PENDING
    current_flow_id: TagStr | None = None
    user_id: TagStr | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    history: list[HistoryEntry] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    last_active: UtcDatetime = Field(default_factory=utcnow)
    total_queries: Int64 = 0
    successful_queries: Int64 = 0
    total_response_time: FiniteFloat = 0.0
