"""Shared helpers of the admin commands: TTLs in one round trip, JSON forms, filters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

from flywheel_state.models import ExecutionResult, Session
from flywheel_state.models._base import Document
from flywheel_state.repositories import Page, Repository

__all__ = [
    "EXPIRED",
    "document_json",
    "filters",
    "find_with_ttls",
    "get_with_ttl",
    "to_jsonable",
    "ttl_seconds",
]

D = TypeVar("D", Session, ExecutionResult)

EXPIRED = timedelta(0)
"""The TTL reported for a key that vanished (expired or deleted) between a query and its PTTL."""


async def find_with_ttls(
    repo: Repository[D], **find_args: Any
) -> tuple[Page[D], list[timedelta | None]]:
    """``repo.find(**find_args)`` and the remaining TTL of each record of the page."""
    page = await repo.find(**find_args)
    return page, await repo.ttls([item.id for item in page.items])


async def get_with_ttl(repo: Repository[D], id: str) -> tuple[D, timedelta | None]:
    """``repo.get(id)`` and the record's remaining TTL."""
    item = await repo.get(id)
    ttls = await repo.ttls([id])
    return item, ttls[0]


def ttl_seconds(ttl: timedelta | None) -> float | None:
    """A TTL as seconds for JSON output (None: no expiry; 0: gone)."""
    return None if ttl is None else round(ttl.total_seconds(), 3)


def to_jsonable(value: Any) -> Any:
    """Convert a dumped model to plain JSON types: datetimes as ISO strings, enums as values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def document_json(model: Document, ttl: timedelta | None) -> dict[str, Any]:
    """A stored document as a JSON-able dict, with its remaining TTL as ``ttl_seconds``."""
    data: dict[str, Any] = to_jsonable(model.model_dump())
    data.pop("pk", None)
    data["ttl_seconds"] = ttl_seconds(ttl)
    return data


def filters(**options: Any) -> dict[str, Any]:
    """Query filters from CLI options: unset options are dropped, repeated ones become lists.

    A repeatable option given once is passed as its one value, several times as a list; an
    option not given (None or an empty tuple) is left out.
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, tuple):
            if not value:
                continue
            unique = list(dict.fromkeys(value))
            out[name] = unique[0] if len(unique) == 1 else unique
        else:
            out[name] = value
    return out
