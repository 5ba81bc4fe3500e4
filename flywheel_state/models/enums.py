"""Enumerations used by the models. Each accepts its string value."""

from __future__ import annotations

from enum import Enum

__all__ = ["Backend", "ExecutionStatus", "SessionStatus"]


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)


class Backend(_StrEnum):
    """The flow backend a session or execution runs on."""

    FLOWISE = "flowise"
    LANGFLOW = "langflow"
    CUSTOM = "custom"


class SessionStatus(_StrEnum):
    """Lifecycle state of a session."""

    PENDING = "pending"
    ACTIVE = "active"
    IDLE = "idle"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExecutionStatus(_StrEnum):
    """Lifecycle state of a flow execution."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
