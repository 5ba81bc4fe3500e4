"""TTL-aware repositories: the generic Repository, SessionRepository, ExecutionRepository."""

from flywheel_state.repositories.base import BATCH_SIZE, DEFAULT, Repository, TTLArg
from flywheel_state.repositories.executions import ExecutionRepository, ExecutionStats
from flywheel_state.repositories.query import MAX_PAGE_SIZE, F, OnCorrupt, Page, Stats
from flywheel_state.repositories.sessions import HistoryPage, SessionRepository, SessionStats

__all__ = [
    "BATCH_SIZE",
    "DEFAULT",
    "MAX_PAGE_SIZE",
    "ExecutionRepository",
    "ExecutionStats",
    "F",
    "HistoryPage",
    "OnCorrupt",
    "Page",
    "Repository",
    "SessionRepository",
    "SessionStats",
    "Stats",
    "TTLArg",
]
