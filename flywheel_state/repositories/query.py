"""Indexed queries over a repository's RediSearch index (filled in by the query work)."""

from __future__ import annotations

from typing import Generic, TypeVar

from flywheel_state.models._base import Document

__all__ = ["QueryMixin"]

M = TypeVar("M", bound=Document)


class QueryMixin(Generic[M]):
    """Query methods shared by repositories: find, count, ids, iterate, stats."""
