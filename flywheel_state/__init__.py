"""flywheel-state: async, TTL-aware persistence for AI-agent sessions on Redis.

Sessions and execution results are redis-om JsonModel documents stored through TTL-aware
repositories, queried through RediSearch indexes, and evolved by versioned migrations.

Names that need the Redis driver (Store, the models, DEFAULT) are imported on first use, so the
fail-safe compat API (``RedisSessionManager`` ...) can be imported, and disable itself with one
warning, on a machine where the ``redis`` package is missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flywheel_state.compat import RedisConfig, RedisExecutionCache, RedisSessionManager
from flywheel_state.config import Settings
from flywheel_state.errors import (
    AlreadyExistsError,
    AuthenticationFailedError,
    ConfigError,
    ConflictError,
    CorruptRecordError,
    EncryptionKeyError,
    FlywheelStateError,
    InvalidIdError,
    InvalidQueryError,
    MigrationError,
    MigrationLockedError,
    ModuleMissingError,
    NotConnectedError,
    NotFoundError,
    OutcomeUnknownError,
    SchemaOutOfDateError,
    SearchUnavailableError,
    StoreUnavailableError,
    VersionMismatchError,
)

if TYPE_CHECKING:
    from flywheel_state.models import (
        Backend,
        ExecutionResult,
        ExecutionStatus,
        HistoryEntry,
        Session,
        SessionStatus,
    )
    from flywheel_state.repositories import DEFAULT, F
    from flywheel_state.store import Store

__version__ = "0.1.0"

_LAZY = {
    "Backend": "flywheel_state.models",
    "ExecutionResult": "flywheel_state.models",
    "ExecutionStatus": "flywheel_state.models",
    "HistoryEntry": "flywheel_state.models",
    "Session": "flywheel_state.models",
    "SessionStatus": "flywheel_state.models",
    "DEFAULT": "flywheel_state.repositories",
    "F": "flywheel_state.repositories",
    "Store": "flywheel_state.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flywheel_state' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT",
    "AlreadyExistsError",
    "AuthenticationFailedError",
    "Backend",
    "ConfigError",
    "ConflictError",
    "CorruptRecordError",
    "EncryptionKeyError",
    "ExecutionResult",
    "ExecutionStatus",
    "F",
    "FlywheelStateError",
    "HistoryEntry",
    "InvalidIdError",
    "InvalidQueryError",
    "MigrationError",
    "MigrationLockedError",
    "ModuleMissingError",
    "NotConnectedError",
    "NotFoundError",
    "OutcomeUnknownError",
    "RedisConfig",
    "RedisExecutionCache",
    "RedisSessionManager",
    "SchemaOutOfDateError",
    "SearchUnavailableError",
    "Session",
    "SessionStatus",
    "Settings",
    "Store",
    "StoreUnavailableError",
    "VersionMismatchError",
    "__version__",
]
