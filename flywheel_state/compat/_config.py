"""The compat layer's configuration: RedisConfig (from the environment) and manager settings.

The environment is read by :meth:`Settings.from_env` only (and :func:`config.env_flag` for the
``REDIS_ENABLED`` / ``REDIS_STATE_ENABLED`` switch, the one variable Settings has no field
for); the defaults are Settings' own (the original's: sessions 7 days, results one hour).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flywheel_state.config import (
    DEFAULT_EXECUTION_TTL,
    DEFAULT_SESSION_TTL,
    Settings,
    env_flag,
)
from flywheel_state.crypto import FieldCipher

__all__ = ["EXECUTION_TTL_SECONDS", "SESSION_TTL_SECONDS", "RedisConfig", "manager_settings"]

_ENABLED_VARS = ("REDIS_ENABLED", "REDIS_STATE_ENABLED")
_OPTIONAL = ("db", "password", "username", "url", "namespace", "connect_timeout", "command_timeout")
_DEFAULTS = Settings()


def _seconds(ttl: timedelta | None) -> int | None:
    return None if ttl is None else int(ttl.total_seconds())


SESSION_TTL_SECONDS: int = _seconds(DEFAULT_SESSION_TTL) or 0
"""The sessions' default time to live (7 days, as the original)."""
EXECUTION_TTL_SECONDS: int = _seconds(DEFAULT_EXECUTION_TTL) or 0
"""The execution results' default time to live (one hour, as the original)."""


def manager_settings(
    *,
    ttl_field: str,
    ttl_seconds: int | float | None,
    host: str,
    port: int,
    db: int,
    password: str | None,
    url: str | None,
    namespace: str,
    key_prefix: str | None,
    username: str | None,
    connect_timeout: float,
    command_timeout: float,
    cipher: FieldCipher | None,
) -> Settings:
    """The Settings of a manager's keyword arguments (checked by Settings).

    Raises:
        ConfigError: An argument can't be used.
    """
    if key_prefix is not None:
        namespace = key_prefix.rstrip(":")
    ttl: dict[str, Any] = {ttl_field: ttl_seconds}
    return Settings(
        url=url,
        host=host,
        port=port,
        db=db,
        username=username,
        password=password,
        namespace=namespace,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        cipher=cipher,
        **ttl,
    )


class RedisConfig:
    """Configuration of the managers from environment variables (both generations of them).

    ``RedisSessionManager(**RedisConfig.from_env())`` and
    ``RedisExecutionCache(**RedisConfig.execution_from_env())``.
    """

    @staticmethod
    def enabled_from_env(environ: Mapping[str, str] | None = None) -> bool:
        """Whether persistence is enabled: ``REDIS_ENABLED`` / ``REDIS_STATE_ENABLED``.

        Unset means enabled (as in the original code). Accepts true/false, 1/0, yes/no, on/off
        (any case). When both variables are set, persistence is off if either says so.

        Raises:
            ConfigError: A variable holds another value (the message names it).
        """
        enabled = True
        for name in _ENABLED_VARS:
            if env_flag(environ, name) is False:
                enabled = False
        return enabled

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`RedisSessionManager`, read from the environment.

        Read through ``Settings.from_env`` (the one reader of the environment). Always has
        ``enabled``, ``ttl_seconds``, ``host`` and ``port``; has ``db``, ``password``,
        ``username``, ``url``, ``namespace``, ``connect_timeout`` and ``command_timeout`` when
        their variables set them to something other than the default, and ``cipher`` when
        ``FLYWHEEL_ENCRYPTION_KEYS`` is (see ``Settings.from_env``). Variables: ``REDIS_ENABLED`` /
        ``REDIS_STATE_ENABLED``; ``REDIS_SESSION_TTL_SECONDS`` / ``REDIS_TTL_SECONDS`` (default
        604800, 7 days); ``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_DB``, ``REDIS_USERNAME``,
        ``REDIS_PASSWORD``, ``REDIS_URL``; ``REDIS_NAMESPACE`` / ``REDIS_KEY_PREFIX``;
        ``REDIS_CONNECT_TIMEOUT`` / ``REDIS_COMMAND_TIMEOUT`` (seconds).

        Args:
            environ: The mapping to read (default ``os.environ``).

        Raises:
            ConfigError: A variable holds an unusable value; the message names the variable.
        """
        return RedisConfig._config(environ, "session_ttl")

    @staticmethod
    def execution_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`RedisExecutionCache`, read from the environment.

        As :meth:`from_env`, but ``ttl_seconds`` is ``REDIS_EXECUTION_TTL_SECONDS`` (default
        3600, one hour).

        Raises:
            ConfigError: A variable holds an unusable value; the message names the variable.
        """
        return RedisConfig._config(environ, "execution_ttl")

    @staticmethod
    def execution_ttl_seconds(environ: Mapping[str, str] | None = None) -> int | None:
        """The execution results' TTL in seconds: ``REDIS_EXECUTION_TTL_SECONDS`` (default 3600).

        Raises:
            ConfigError: The variable holds an unusable value.
        """
        return _seconds(Settings.from_env(environ).execution_ttl)

    @staticmethod
    def _config(environ: Mapping[str, str] | None, ttl_field: str) -> dict[str, Any]:
        settings = Settings.from_env(environ)
        config: dict[str, Any] = {
            "enabled": RedisConfig.enabled_from_env(environ),
            "ttl_seconds": _seconds(getattr(settings, ttl_field)),
            "host": settings.host,
            "port": settings.port,
        }
        # The other connection settings, when the environment sets them to something else
        # than the default.
        for name in _OPTIONAL:
            value = getattr(settings, name)
            if value != getattr(_DEFAULTS, name):
                config[name] = value
        if settings.cipher is not None:  # FLYWHEEL_ENCRYPTION_KEYS
            config["cipher"] = settings.cipher
        return config
