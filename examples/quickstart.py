"""The README's "Using it", as a script: connect, (optionally) migrate, save, append, query.

Run it against a server where ``flywheel-state migrate up`` has run::

    export REDIS_URL=redis://localhost:6379/0
    flywheel-state migrate up
    python examples/quickstart.py

or let it apply the pending migrations itself: ``python examples/quickstart.py --migrate``.
"""

from __future__ import annotations

import asyncio
import sys

from flywheel_state import SchemaOutOfDateError, Settings, Store
from flywheel_state.models import (
    Backend,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    Session,
    SessionStatus,
)


async def main(migrate: bool) -> int:
    try:
        store = await Store(Settings.from_env(), auto_migrate=migrate).connect()
    except SchemaOutOfDateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("hint: run `flywheel-state migrate up` first, or pass --migrate", file=sys.stderr)
        return 1
    try:
        session = Session(
            id="quickstart_session",
            backend=Backend.FLOWISE,
            status=SessionStatus.ACTIVE,
            current_flow_id="csv2507",
            context={"topic": "structural tension"},
        )
        await store.sessions.save(session)
        await store.sessions.append_history(
            "quickstart_session", HistoryEntry(role="user", content="hi")
        )
        await store.sessions.append_history(
            "quickstart_session", HistoryEntry(role="assistant", content="hello")
        )
        recent = await store.sessions.history("quickstart_session", last=20)
        print(f"history: {recent.total} entries, last: {recent.entries[-1].content!r}")
        await store.sessions.update("quickstart_session", status=SessionStatus.IDLE)
        await store.sessions.touch("quickstart_session")
        print(f"ttl: {await store.sessions.ttl('quickstart_session')}")
        page = await store.sessions.find(backend="flowise", flow_id="csv2507", limit=20)
        print(f"found {page.total} flowise session(s) on csv2507")
        await store.executions.save(
            ExecutionResult(
                id="quickstart_exec",
                session_id="quickstart_session",
                flow_id="csv2507",
                backend=Backend.FLOWISE,
                status=ExecutionStatus.COMPLETED,
                result={"text": "..."},
            )
        )
        done = await store.executions.count(session_id="quickstart_session")
        print(f"executions of the session: {done}")
        return 0
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(migrate="--migrate" in sys.argv[1:])))
