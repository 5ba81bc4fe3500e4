"""flywheel-state: async, TTL-aware persistence for AI-agent sessions on Redis.

Sessions and execution results are redis-om JsonModel documents stored through TTL-aware
repositories, queried through RediSearch indexes, and evolved by versioned migrations.
"""

from flywheel_state.compat import RedisConfig, RedisExecutionCache, RedisSessionManager
from flywheel_state.config import Settings
from flywheel_state.errors import (
    ConfigError,
    ConflictError,
    CorruptRecordError,
    FlywheelStateError,
    InvalidIdError,
    InvalidQueryError,
    MigrationError,
    MigrationLockedError,
    ModuleMissingError,
    NotFoundError,
    SchemaOutOfDateError,
    StoreUnavailableError,
)
from flywheel_state.models import (
    Backend,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    Session,
    SessionStatus,
)
from flywheel_state.repositories import DEFAULT
from flywheel_state.store import Store

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "Backend",
    "ConfigError",
    "ConflictError",
    "CorruptRecordError",
    "ExecutionResult",
    "ExecutionStatus",
    "FlywheelStateError",
    "HistoryEntry",
    "InvalidIdError",
    "InvalidQueryError",
    "MigrationError",
    "MigrationLockedError",
    "ModuleMissingError",
    "NotFoundError",
    "RedisConfig",
    "RedisExecutionCache",
    "RedisSessionManager",
    "SchemaOutOfDateError",
    "Session",
    "SessionStatus",
    "Settings",
    "Store",
    "StoreUnavailableError",
    "__version__",
]
