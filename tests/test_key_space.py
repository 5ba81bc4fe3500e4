"""The key space is unambiguous: no ':' in namespaces, so namespaces never overlap (defect 4)."""

from __future__ import annotations

import uuid

import pytest
import redis
import redis.asyncio

from flywheel_state import Settings, Store
from flywheel_state.errors import ConfigError
from flywheel_state.models import Backend, ExecutionResult, Session
from flywheel_state.repositories.sessions import SessionRepository


@pytest.mark.parametrize("bad", ["app:session", "app:", ":app", "a:b:c"])
def test_a_namespace_with_a_separator_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="no ':'"):
        Settings(namespace=bad)


@pytest.mark.parametrize("bad", ["app:session", "app\n", ""])
def test_repositories_check_the_namespace_too(redis_url: str, bad: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    with pytest.raises(ConfigError, match="no ':'"):
        SessionRepository(client=client, namespace=bad, default_ttl=None)


def test_redis_key_prefix_with_a_trailing_separator_still_works() -> None:
    settings = Settings.from_env({"REDIS_KEY_PREFIX": "agentic_flywheel:"})
    assert settings.namespace == "agentic_flywheel"
    assert Store(settings).sessions.key("s1") == "agentic_flywheel:session:s1"


async def test_neighbouring_namespaces_are_isolated(redis_url: str) -> None:
    # "app" and "app:session" used to share keys and an index; the closest legal neighbours
    # ("app", "app.session", "app_session") must not see each other's records.
    base = f"k{uuid.uuid4().hex[:8]}"
    names = [base, f"{base}.session", f"{base}_session", f"{base}-session"]
    stores = [Store(url=redis_url, namespace=n, auto_migrate=True) for n in names]
    try:
        for s in stores:
            await s.connect()
            await s.sessions.save(Session(id="theirs", backend=Backend.FLOWISE))
            await s.executions.save(ExecutionResult(id="e1", session_id="theirs"))
        for s in stores:
            assert await s.sessions.count() == 1
            assert await s.executions.count() == 1
            page = await s.sessions.find()
            assert [x.id for x in page.items] == ["theirs"]
        assert await stores[0].sessions.delete("theirs") is True
        for s in stores[1:]:
            assert (await s.sessions.get("theirs")).id == "theirs"
    finally:
        client = redis.Redis.from_url(redis_url)
        for s in stores:
            for name in client.execute_command("FT._LIST"):
                text = name.decode()
                if text.startswith(f"{s.namespace}:"):
                    client.execute_command("FT.DROPINDEX", text)
            keys = list(client.scan_iter(match=f"{s.namespace}:*"))
            if keys:
                client.delete(*keys)
            await s.close()
        client.close()
