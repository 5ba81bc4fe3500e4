"""Settings: explicit values, the environment, validation, and password hiding."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flywheel_state import ConfigError, Settings


def test_defaults() -> None:
    s = Settings()
    assert s.namespace == "agentic_flywheel"
    assert s.session_ttl == timedelta(days=7)
    assert s.execution_ttl == timedelta(hours=1)
    assert s.connect_timeout == 2.0
    assert s.command_timeout == 2.0
    assert s.safe_url == "redis://localhost:6379/0"


def test_from_env_url_and_namespace() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://example:6380/2",
            "REDIS_NAMESPACE": "flywheel",
            "REDIS_SESSION_TTL_SECONDS": "60",
            "REDIS_EXECUTION_TTL_SECONDS": "30",
            "REDIS_CONNECT_TIMEOUT": "0.5",
            "REDIS_COMMAND_TIMEOUT": "1.5",
        }
    )
    assert s.url == "redis://example:6380/2"
    assert s.namespace == "flywheel"
    assert s.session_ttl == timedelta(seconds=60)
    assert s.execution_ttl == timedelta(seconds=30)
    assert s.connect_timeout == 0.5
    assert s.command_timeout == 1.5


def test_from_env_host_port_and_legacy_names() -> None:
    s = Settings.from_env(
        {
            "REDIS_HOST": "cache.internal",
            "REDIS_PORT": "6390",
            "REDIS_DB": "3",
            "REDIS_USERNAME": "app",
            "REDIS_PASSWORD": "s3cret",
            "REDIS_KEY_PREFIX": "legacy_ns:",
            "REDIS_TTL_SECONDS": "120",
        }
    )
    assert (s.host, s.port, s.db, s.username, s.password) == (
        "cache.internal",
        6390,
        3,
        "app",
        "s3cret",
    )
    assert s.namespace == "legacy_ns"
    assert s.session_ttl == timedelta(seconds=120)
    kwargs = s.client_kwargs()
    assert kwargs["host"] == "cache.internal" and kwargs["password"] == "s3cret"


def test_new_variable_wins_over_legacy_one() -> None:
    s = Settings.from_env({"REDIS_SESSION_TTL_SECONDS": "10", "REDIS_TTL_SECONDS": "99"})
    assert s.session_ttl == timedelta(seconds=10)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("REDIS_PORT", "not-a-port"),
        ("REDIS_PORT", "70000"),
        ("REDIS_DB", "-1"),
        ("REDIS_SESSION_TTL_SECONDS", "soon"),
        ("REDIS_EXECUTION_TTL_SECONDS", "0"),
        ("REDIS_CONNECT_TIMEOUT", "-2"),
        ("REDIS_NAMESPACE", "has space"),
        ("REDIS_URL", "http://nope"),
    ],
)
def test_bad_value_names_variable_and_value(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert var in str(info.value)
    assert value in str(info.value)


def test_password_never_in_repr_or_str() -> None:
    s = Settings(password="hunter2-secret", username="u")
    assert "hunter2-secret" not in repr(s)
    assert "hunter2-secret" not in str(s)
    assert "hunter2-secret" not in s.safe_url
    u = Settings(url="rediss://user:hunter2-secret@db.example.com:6380/1")
    assert "hunter2-secret" not in repr(u)
    assert "hunter2-secret" not in u.safe_url
    assert u.safe_url == "rediss://user:***@db.example.com:6380/1"
    assert u.is_tls


def test_bad_url_error_hides_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "http://user:hunter2-secret@host/"})
    assert "hunter2-secret" not in str(info.value)
    assert "REDIS_URL" in str(info.value)


def test_rediss_url_builds_a_tls_client() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.connection import SSLConnection

    s = Settings(url="rediss://db.example.com:6380/0")
    client = Redis.from_url(s.url or "", **s.client_kwargs())
    assert client.connection_pool.connection_class is SSLConnection


def test_ttl_validation() -> None:
    assert Settings(session_ttl=None).session_ttl is None
    assert Settings(session_ttl=30).session_ttl == timedelta(seconds=30)
    with pytest.raises(ConfigError, match="session_ttl"):
        Settings(session_ttl=0)
    with pytest.raises(ConfigError, match="execution_ttl"):
        Settings(execution_ttl="1h")  # type: ignore[arg-type]
    for huge in (10**16, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="session_ttl"):
            Settings(session_ttl=huge)
