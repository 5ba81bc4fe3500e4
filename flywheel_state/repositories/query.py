"""The query layer's public names, in three parts.

* :mod:`flywheel_state.repositories._filters`: the declaration of what a kind indexes
  (:class:`QuerySchema`, :class:`Indexed`), filter expressions (:data:`F`) and the compiler;
* :mod:`flywheel_state.repositories._paging`: the paging / cursor engine (:class:`QueryMixin`,
  :class:`Page`, :class:`Stats`);
* each kind's schema, declared next to its repository: ``SESSION_QUERIES`` in
  :mod:`flywheel_state.repositories.sessions`, ``EXECUTION_QUERIES`` in
  :mod:`flywheel_state.repositories.executions` (``Repository.query_schema``).
"""

from __future__ import annotations

from flywheel_state.repositories._filters import (
    Expr,
    F,
    FieldRef,
    Indexed,
    QuerySchema,
    RangeFilter,
    TagFilter,
    Where,
    compile_filters,
    parse_sort,
)
from flywheel_state.repositories._paging import (
    MAX_BATCH_SIZE,
    MAX_PAGE_SIZE,
    OnCorrupt,
    Page,
    QueryMixin,
    Stats,
)

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_PAGE_SIZE",
    "Expr",
    "F",
    "FieldRef",
    "Indexed",
    "OnCorrupt",
    "Page",
    "QueryMixin",
    "QuerySchema",
    "RangeFilter",
    "Stats",
    "TagFilter",
    "Where",
    "compile_filters",
    "parse_sort",
]
