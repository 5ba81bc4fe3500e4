"""The demo's generated data: sessions, histories and executions, from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from flywheel_state.models import (
    Backend,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    Session,
    SessionStatus,
)

if TYPE_CHECKING:
    pass


__all__ = ["DemoData", "generate"]

# ------------------------------------------------------------------------------ the data

_FLOWS: dict[Backend, tuple[str, ...]] = {
    Backend.FLOWISE: ("csv2507", "structural-tension", "rag-docs"),
    Backend.LANGFLOW: ("triage", "rag-docs", "summarize-ticket"),
    Backend.CUSTOM: ("structural-tension", "code-review", "triage"),
}
_FLOW_MS = {  # typical run time of each flow, in milliseconds
    "csv2507": 1400.0,
    "structural-tension": 3200.0,
    "rag-docs": 2100.0,
    "triage": 650.0,
    "summarize-ticket": 1800.0,
    "code-review": 5200.0,
}
_USERS = (
    "alice", "bob", "carol", "dmitri", "esme", "farid", "grace", "hiro", "ines", "jun",
    "kofi", "lena",
)  # fmt: skip
_TOPICS = (
    "structural tension",
    "quarterly csv import",
    "onboarding docs",
    "incident triage",
    "pricing page rewrite",
    "flaky CI job",
    "customer churn analysis",
    "API rate limits",
)
_QUESTIONS = (
    "What is the current reality versus the desired outcome?",
    "Summarize the last import run.",
    "Which docs cover SSO setup?",
    "Is this ticket a duplicate?",
    "Draft a reply to the customer.",
    "Why did the nightly job fail?",
    "List the columns with missing values.",
    "What changed since yesterday?",
)
_ANSWERS = (
    "Here is what I found in the knowledge base.",
    "The import finished with 3 warnings; details below.",
    "Two documents match; the second is more recent.",
    "Likely a duplicate of an issue opened last week.",
    "Done: the draft is in the context under 'reply'.",
    "The job hit the API rate limit at 02:13 UTC.",
)
_SESSION_STATUS_WEIGHTS = {
    SessionStatus.ACTIVE: 30,
    SessionStatus.IDLE: 25,
    SessionStatus.RUNNING: 8,
    SessionStatus.COMPLETED: 20,
    SessionStatus.FAILED: 7,
    SessionStatus.PENDING: 5,
    SessionStatus.CANCELLED: 5,
}
_EXECUTION_STATUS_WEIGHTS = {
    ExecutionStatus.COMPLETED: 80,
    ExecutionStatus.FAILED: 10,
    ExecutionStatus.RUNNING: 5,
    ExecutionStatus.CANCELLED: 3,
    ExecutionStatus.PENDING: 2,
}
_BACKEND_WEIGHTS = {Backend.FLOWISE: 50, Backend.LANGFLOW: 30, Backend.CUSTOM: 20}
# How long ago a session in each status was last active: (min, max) seconds.
_IDLE_FOR = {
    SessionStatus.ACTIVE: (5, 1800),
    SessionStatus.RUNNING: (1, 600),
    SessionStatus.PENDING: (30, 7200),
    SessionStatus.IDLE: (600, 6 * 3600),
    SessionStatus.COMPLETED: (3600, 5 * 86400),
    SessionStatus.FAILED: (1800, 3 * 86400),
    SessionStatus.CANCELLED: (3600, 4 * 86400),
}
_SESSION_TTL = timedelta(days=7)
_CONCURRENCY = 16


def _pick(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


@dataclass
class DemoData:
    """The generated records, kept in memory to check query results against."""

    sessions: list[Session] = field(default_factory=list)
    executions: list[ExecutionResult] = field(default_factory=list)

    def session_ttl(self, session: Session, now: datetime) -> timedelta:
        """The TTL a session would have left had it been written when it was last active."""
        return max(timedelta(minutes=1), _SESSION_TTL - (now - session.last_active))


def _history(rng: random.Random, start: datetime, end: datetime, turns: int) -> list[HistoryEntry]:
    entries: list[HistoryEntry] = []
    span = max((end - start).total_seconds(), 1.0)
    for i in range(turns):
        at = start + timedelta(seconds=span * (i + 1) / (turns + 1))
        entries.append(HistoryEntry(role="user", content=rng.choice(_QUESTIONS), timestamp=at))
        entries.append(
            HistoryEntry(
                role="assistant",
                content=rng.choice(_ANSWERS),
                timestamp=at + timedelta(seconds=rng.uniform(0.5, 8)),
            )
        )
    return entries


def generate(n_sessions: int, n_executions: int, *, seed: int, now: datetime) -> DemoData:
    """Realistic sessions and execution results across backends, statuses, flows and users."""
    rng = random.Random(seed)
    data = DemoData()
    for _ in range(n_sessions):
        backend: Backend = _pick(rng, _BACKEND_WEIGHTS)
        status: SessionStatus = _pick(rng, _SESSION_STATUS_WEIGHTS)
        lo, hi = _IDLE_FOR[status]
        last_active = now - timedelta(seconds=rng.uniform(lo, hi))
        created_at = last_active - timedelta(seconds=rng.uniform(60, 2 * 86400))
        turns = rng.randint(0, 4)
        flow = rng.choice(_FLOWS[backend])
        queries = turns
        ok = sum(1 for _ in range(queries) if rng.random() < 0.9)
        data.sessions.append(
            Session(
                id=f"sess_{rng.getrandbits(32):08x}",
                backend=backend,
                backend_session_id=f"{backend.value}_{rng.getrandbits(48):012x}",
                status=status,
                current_flow_id=flow,
                user_id=rng.choice(_USERS),
                context={
                    "topic": rng.choice(_TOPICS),
                    "channel": rng.choice(("slack", "web", "api")),
                    "locale": rng.choice(("en", "en", "fr", "de")),
                },
                history=_history(rng, created_at, last_active, turns),
                metadata={"client": "agentic-flywheel-mcp", "flow_version": rng.randint(1, 9)},
                created_at=created_at,
                last_active=last_active,
                total_queries=queries,
                successful_queries=ok,
                total_response_time=round(sum(rng.uniform(0.3, 6) for _ in range(queries)), 2),
            )
        )
    for _ in range(n_executions):
        session = rng.choice(data.sessions)
        flow = rng.choice(_FLOWS[session.backend])
        if session.current_flow_id is not None and rng.random() < 0.7:
            flow = session.current_flow_id
        status_e: ExecutionStatus = _pick(rng, _EXECUTION_STATUS_WEIGHTS)
        duration = round(rng.lognormvariate(0, 0.45) * _FLOW_MS[flow], 1)
        failed = status_e is ExecutionStatus.FAILED
        data.executions.append(
            ExecutionResult(
                id=f"exec_{rng.getrandbits(40):010x}",
                session_id=session.id,
                flow_id=flow,
                backend=session.backend,
                status=status_e,
                result=None
                if failed
                else {"text": rng.choice(_ANSWERS), "tokens": rng.randint(80, 2400)},
                error="upstream flow timed out after 30 s" if failed else None,
                duration_ms=None if status_e is ExecutionStatus.PENDING else duration,
                created_at=now - timedelta(seconds=rng.uniform(5, 55 * 60)),
                metadata={"model": rng.choice(("gpt-4o-mini", "claude-haiku", "llama-3.1-8b"))},
            )
        )
    return data
