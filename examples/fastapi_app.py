"""A FastAPI app whose lifespan owns one Store (pip install -e ".[examples]").

Serve it with ``uvicorn examples.fastapi_app:app``; run as a script, it sends a few requests
through FastAPI's TestClient (which runs the lifespan) and prints the answers.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from flywheel_state import NotFoundError, Settings, Store
from flywheel_state.models import Backend, HistoryEntry, Session, SessionStatus


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with Store(Settings.from_env()) as store:  # one Store (one pool) per process
        app.state.store = store
        yield


app = FastAPI(lifespan=lifespan)


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@app.post("/sessions/{session_id}")
async def create_session(session_id: str, request: Request) -> dict[str, Any]:
    session = Session(id=session_id, backend=Backend.FLOWISE, status=SessionStatus.ACTIVE)
    await store_of(request).sessions.save(session)
    return {"id": session_id, "version": session.version}


@app.post("/sessions/{session_id}/messages")
async def add_message(session_id: str, message: dict[str, str], request: Request) -> dict[str, Any]:
    store = store_of(request)
    try:
        await store.sessions.append_history(
            session_id, HistoryEntry(role=message.get("role", "user"), content=message["content"])
        )
    except NotFoundError:
        raise HTTPException(status_code=404, detail=f"no session {session_id}") from None
    page = await store.sessions.history(session_id, last=1)
    return {"total": page.total}


@app.get("/sessions/{session_id}")
async def get_session(session_id: str, request: Request) -> dict[str, Any]:
    session = await store_of(request).sessions.get_or_none(session_id)
    if session is None:
        raise HTTPException(status_code=404, detail=f"no session {session_id}")
    return {"id": session.id, "status": str(session.status), "history": len(session.history)}


def main() -> int:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for method, path, body in (
            ("post", "/sessions/fastapi_demo", None),
            ("post", "/sessions/fastapi_demo/messages", {"content": "hi"}),
            ("get", "/sessions/fastapi_demo", None),
            ("get", "/sessions/nope", None),
        ):
            response = client.request(method.upper(), path, json=body)
            print(f"{method.upper()} {path} -> {response.status_code} {response.json()}")
            if path != "/sessions/nope" and response.status_code != 200:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
