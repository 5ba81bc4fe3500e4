"""The plain redis-om baseline: a redis-om 1.2 JsonModel mirroring ``Session``.

Benchmarks that compare this library with plain redis-om use this one model, so that every
comparison runs against the same fields and the same index declarations.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from flywheel_state.models import Backend, Session, SessionStatus

__all__ = ["OmHistoryEntry", "om_model", "to_om"]


class OmHistoryEntry(BaseModel):
    """The history entry of the redis-om model (plain pydantic, free-form keys kept)."""

    model_config = ConfigDict(extra="allow")
    role: str | None = None
    content: Any = None
    timestamp: datetime | None = None


def om_model(client: Redis, namespace: str) -> Any:
    """A plain redis-om JsonModel with the Session's fields, bound to ``client``.

    Its keys are ``{namespace}:session:{id}``, the library's own, so both pay for the same
    RediSearch indexing.
    """
    from aredis_om import Field, JsonModel

    class OmSession(JsonModel, index=True):  # type: ignore[call-arg]
        id: str = Field(primary_key=True)
        backend: Backend = Field(index=True)
        backend_session_id: str | None = None
        status: SessionStatus = Field(default=SessionStatus.PENDING, index=True)
        current_flow_id: str | None = Field(default=None, index=True)
        user_id: str | None = Field(default=None, index=True)
        context: dict[str, Any] = Field(default_factory=dict)
        history: list[OmHistoryEntry] = Field(default_factory=list)
        metadata: dict[str, Any] = Field(default_factory=dict)
        created_at: datetime = Field(index=True, sortable=True)
        updated_at: datetime
        last_active: datetime = Field(index=True, sortable=True)
        total_queries: int = 0
        successful_queries: int = 0
        total_response_time: float = 0.0
        schema_version: int = 1
        version: int = 0

        class Meta:
            database = client
            global_key_prefix = namespace
            model_key_prefix = "session"

    return OmSession


def to_om(om: Any, session: Session, sid: str) -> Any:
    """``session`` as an instance of the redis-om model ``om``, under the id ``sid``."""
    data = json.loads(session.model_dump_json())
    data["id"] = sid
    for name in ("created_at", "updated_at", "last_active"):
        data[name] = datetime.fromtimestamp(data[name], timezone.utc)
    for entry in data["history"]:
        entry["timestamp"] = datetime.fromtimestamp(entry["timestamp"], timezone.utc)
    return om.model_validate(data)
