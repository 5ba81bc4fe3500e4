"""The stored models: redis-om JsonModel declarations (pydantic v2).

Models do no I/O of their own; repositories (``store.sessions``, ``store.executions``) store them.
"""

from flywheel_state.models._base import Document
from flywheel_state.models._types import MAX_ID_LENGTH, validate_id
from flywheel_state.models._upgrades import UpgradeFn, register_upgrade
from flywheel_state.models.enums import Backend, ExecutionStatus, SessionStatus
from flywheel_state.models.execution import ExecutionResult
from flywheel_state.models.session import HistoryEntry, Session

__all__ = [
    "MAX_ID_LENGTH",
    "Backend",
    "Document",
    "ExecutionResult",
    "ExecutionStatus",
    "HistoryEntry",
    "Session",
    "SessionStatus",
    "UpgradeFn",
    "register_upgrade",
    "validate_id",
]
