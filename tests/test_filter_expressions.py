"""Filter expressions (where=), the one declaration of what is indexed, typed stats.

The brute-force property over random expression trees is in test_properties.py
(test_filter_expressions_equal_brute_force).
"""

from __future__ import annotations

import importlib
from datetime import datetime, timezone
from typing import Any

import pytest

from flywheel_state import Backend, F, InvalidQueryError, Session, SessionStatus, Store
from flywheel_state.repositories import (
    ExecutionRepository,
    ExecutionStats,
    SessionRepository,
    SessionStats,
)
from flywheel_state.repositories._filters import compile_filters
from flywheel_state.repositories.executions import EXECUTION_QUERIES
from flywheel_state.repositories.sessions import SESSION_QUERIES

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def test_live_declaration_creates_exactly_the_index_of_migration_0001() -> None:
    # 0001 keeps frozen copies (a migration's schema is history); the live declaration must
    # still describe the index existing deployments have, field for field, flag for flag.
    m0001 = importlib.import_module("flywheel_state.migrations.versions.0001_initial")
    assert SESSION_QUERIES.index_spec("session", 1) == m0001.SESSION_INDEX_V1
    assert EXECUTION_QUERIES.index_spec("execution", 1) == m0001.EXECUTION_INDEX_V1
    assert SESSION_QUERIES.index_spec("session", 1).create_args("ns") == (
        m0001.SESSION_INDEX_V1.create_args("ns")
    )


def test_sort_lists_come_from_the_declaration() -> None:
    assert SessionRepository.sortable_fields == ("created_at", "last_active")
    assert ExecutionRepository.sortable_fields == ("created_at", "duration_ms")
    assert SESSION_QUERIES.sort_options[0] == "-last_active"
    assert set(SESSION_QUERIES.sort_options) == {
        "-last_active",
        "last_active",
        "-created_at",
        "created_at",
    }
    executions = importlib.import_module("flywheel_state.cli.executions")
    sessions = importlib.import_module("flywheel_state.cli.sessions")
    assert SESSION_QUERIES.sort_options == sessions._SORTS
    assert EXECUTION_QUERIES.sort_options == executions._SORTS


def test_keyword_filter_names_are_unchanged() -> None:
    assert set(SESSION_QUERIES.filters) == {
        "backend",
        "status",
        "flow_id",
        "user_id",
        "active_after",
        "active_before",
        "created_after",
        "created_before",
    }
    assert set(EXECUTION_QUERIES.filters) == {
        "session_id",
        "flow_id",
        "backend",
        "status",
        "created_after",
        "created_before",
        "min_duration_ms",
        "max_duration_ms",
    }


def compile(where: Any, **filters: Any) -> str | None:
    return compile_filters(SESSION_QUERIES, "Session", filters, where)


def test_expressions_compile_with_the_keyword_escaping() -> None:
    # Same text as the keyword filter: escaped ASCII punctuation, non-ASCII untouched, trimmed.
    assert (
        compile(F.user_id == " a|b-é ") == compile(None, user_id=" a|b-é ") == r"@user_id:{a\|b\-é}"
    )
    assert compile(F.flow_id == "x") == "@current_flow_id:{x}"
    assert compile(F.current_flow_id == "x") == "@current_flow_id:{x}"
    assert compile(F.user_id.is_in([])) is None  # nothing
    assert compile(~F.user_id.is_in([])) == "*"  # everything
    assert compile(F.user_id.is_in([]) | (F.user_id == "a")) == "@user_id:{a}"
    assert compile(F.created_at >= T0) == compile(None, created_after=T0)
    assert compile(F.last_active < T0) == compile(None, active_before=T0)


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (F.nope == "x", "nope"),
        (F.user_id >= "x", "user_id"),
        (F.backend == "nope", "backend"),
        (F.user_id == 3, "user_id"),
        (F.user_id == None, "user_id"),  # noqa: E711
        (F.last_active >= 5, "last_active"),
        (F.last_active.is_in([T0]), "last_active"),
        (F.user_id == "a\x1fb", "user_id"),
        ((F.user_id == "a") & (F.status == 1), "status"),
    ],
)
def test_expression_type_errors_name_the_field(where: Any, field: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile(where)
    assert field in str(info.value)


def test_expressions_have_no_truth_value() -> None:
    with pytest.raises(TypeError):
        bool(F.user_id == "a")
    with pytest.raises(InvalidQueryError):
        compile(F.user_id == "a")  # fine
        (F.user_id == "a") & "x"  # type: ignore[operator]
    with pytest.raises(InvalidQueryError):
        compile("@user_id:{a}")  # query text is not a filter


async def test_issue_example_and_options_never_collide(store: Store) -> None:
    repo = store.sessions
    await repo.save_many(
        [
            Session(id="a", backend=Backend.FLOWISE, status=SessionStatus.ACTIVE, user_id="u"),
            Session(id="b", backend=Backend.FLOWISE, status=SessionStatus.COMPLETED, user_id="u"),
            Session(id="c", backend=Backend.LANGFLOW, status=SessionStatus.COMPLETED),
            Session(id="d", backend=Backend.LANGFLOW, status=SessionStatus.ACTIVE, user_id="v"),
        ]
    )
    where = (F.backend == "flowise") & ~(F.status == "completed") | F.user_id.is_missing()
    assert sorted(await repo.ids(where=where)) == ["a", "c"]
    assert await repo.count(where=where) == 2
    # A filters mapping: keyword names that are also options (sort, limit) can't clash.
    assert sorted(await repo.ids(where={"user_id": "u"}, sort="created_at")) == ["a", "b"]
    assert await repo.count(where=F.user_id == "u", status="active") == 1  # ANDed
    stats = await repo.stats(where=F.backend == "langflow")
    assert isinstance(stats, SessionStats)
    assert stats.total == 2 and stats.status["completed"] == 1 and stats.backend["flowise"] == 0
    assert stats.as_dict()["total"] == {"all": 2}
    assert stats["status"] == stats.status  # the old dict reads still work
    ex = await store.executions.stats()
    assert isinstance(ex, ExecutionStats) and ex.total == 0 and ex.flow_id == {}
