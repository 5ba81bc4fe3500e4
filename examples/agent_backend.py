"""An agent backend's loop: resume (or start) a session, append turns, cache flow executions.

Needs only REDIS_URL (and a server where ``flywheel-state migrate up`` has run)::

    python examples/agent_backend.py [SESSION_ID]
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time

from flywheel_state import Settings, Store
from flywheel_state.models import (
    Backend,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    Session,
    SessionStatus,
)

FLOW_ID = "csv2507"


def execution_id(session_id: str, flow_id: str, prompt: str) -> str:
    """The cache key of one flow call: same session, flow and input give the same id."""
    digest = hashlib.sha256(f"{session_id}\0{flow_id}\0{prompt}".encode()).hexdigest()[:16]
    return f"exec_{digest}"


async def run_flow(prompt: str) -> dict[str, str]:
    """Stands in for the call to the flow backend (Flowise, Langflow, ...)."""
    await asyncio.sleep(0)
    return {"text": f"echo: {prompt}"}


async def handle_turn(store: Store, session_id: str, prompt: str) -> tuple[str, bool]:
    """One user turn: record it, answer from the cache or the flow, record the answer."""
    await store.sessions.append_history(session_id, HistoryEntry(role="user", content=prompt))
    exec_id = execution_id(session_id, FLOW_ID, prompt)
    cached = await store.executions.get_or_none(exec_id)
    if cached is not None and cached.result is not None:
        answer, hit = str(cached.result["text"]), True
    else:
        started = time.perf_counter()
        result = await run_flow(prompt)
        await store.executions.save(
            ExecutionResult(
                id=exec_id,
                session_id=session_id,
                flow_id=FLOW_ID,
                backend=Backend.FLOWISE,
                status=ExecutionStatus.COMPLETED,
                result=result,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
        answer, hit = result["text"], False
    await store.sessions.append_history(session_id, HistoryEntry(role="assistant", content=answer))
    return answer, hit


async def main(session_id: str) -> int:
    async with Store(Settings.from_env()) as store:
        session = await store.sessions.get_or_none(session_id)
        if session is None:
            session = Session(
                id=session_id,
                backend=Backend.FLOWISE,
                status=SessionStatus.ACTIVE,
                current_flow_id=FLOW_ID,
            )
            await store.sessions.save(session)
            print(f"started session {session_id}")
        else:
            print(f"resumed session {session_id} ({len(session.history)} entries)")
        for prompt in ("what is structural tension?", "and a creative one?"):
            answer, hit = await handle_turn(store, session_id, prompt)
            print(f"{'cache hit ' if hit else 'flow call '} {prompt!r} -> {answer!r}")
        recent = await store.sessions.history(session_id, last=4)
        print(f"history now {recent.total} entries")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "agent_demo_session")))
