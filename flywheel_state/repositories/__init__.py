"""TTL-aware repositories: the generic Repository, SessionRepository, ExecutionRepository."""

from flywheel_state.repositories.base import BATCH_SIZE, DEFAULT, Repository, TTLArg
from flywheel_state.repositories.executions import ExecutionRepository
from flywheel_state.repositories.query import MAX_PAGE_SIZE, OnCorrupt, Page
from flywheel_state.repositories.sessions import HistoryPage, SessionRepository

__all__ = [
    "BATCH_SIZE",
    "DEFAULT",
    "MAX_PAGE_SIZE",
    "ExecutionRepository",
    "HistoryPage",
    "OnCorrupt",
    "Page",
    "Repository",
    "SessionRepository",
    "TTLArg",
]
