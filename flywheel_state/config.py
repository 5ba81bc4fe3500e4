"""Settings: the one explicit configuration object.

Nothing in the library reads the environment except :meth:`Settings.from_env`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from flywheel_state.crypto import ENV_ACTIVE, ENV_COMPRESS, ENV_KEYS, FieldCipher
from flywheel_state.errors import ConfigError

__all__ = ["DEFAULT_NAMESPACE", "Settings", "redact_url"]

DEFAULT_NAMESPACE = "agentic_flywheel"
DEFAULT_SESSION_TTL = timedelta(days=7)
DEFAULT_EXECUTION_TTL = timedelta(hours=1)

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-:]{1,64}$")


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (a URL without one is unchanged)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _ttl(value: int | float | timedelta | None, name: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise ConfigError(f"{name} must be seconds or a timedelta, got {value!r}")
    try:
        td = value if isinstance(value, timedelta) else timedelta(seconds=value)
    except (OverflowError, ValueError):  # beyond timedelta.max, infinite or NaN
        raise ConfigError(
            f"{name} must be at most {timedelta.max.total_seconds():.0f} seconds "
            f"(or None for no expiry), got {value!r}"
        ) from None
    if td.total_seconds() < 1:
        raise ConfigError(
            f"{name} must be at least 1 second (or None for no expiry), got {value!r}"
        )
    return td


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to reach Redis and how to store records.

    Either ``url`` is set, or the ``host`` / ``port`` / ``db`` / ``username`` / ``password``
    fields are used. The password (given alone or inside the URL) never appears in ``repr``,
    ``str``, logs or CLI output.
    """

    url: str | None = None
    """A ``redis://`` or ``rediss://`` (TLS) URL. Takes precedence over host/port/db."""
    host: str = "localhost"
    """Server host, used when ``url`` is not set."""
    port: int = 6379
    """Server port, used when ``url`` is not set."""
    db: int = 0
    """Logical database number, used when ``url`` is not set."""
    username: str | None = None
    """ACL user name, used when ``url`` is not set."""
    password: str | None = dataclasses.field(default=None, repr=False)
    """Password; never shown in repr or output."""
    namespace: str = DEFAULT_NAMESPACE
    """Key prefix of every key, index and migration record of this store."""
    session_ttl: timedelta | None = DEFAULT_SESSION_TTL
    """Default time to live of sessions (sliding: every write restarts it). None: no expiry."""
    execution_ttl: timedelta | None = DEFAULT_EXECUTION_TTL
    """Default time to live of execution results. None: no expiry."""
    connect_timeout: float = 2.0
    """Seconds to wait for a connection before StoreUnavailableError."""
    command_timeout: float = 2.0
    """Seconds to wait for a command's reply before StoreUnavailableError."""
    max_connections: int = 50
    """Size of the client's connection pool (per event loop)."""
    pool_timeout: float = 10.0
    """Seconds a call waits for a free pooled connection before StoreUnavailableError."""
    cipher: FieldCipher | None = None
    """Encrypts content fields at rest (see ``flywheel_state.crypto``); its repr shows key ids
    only. None: stored in clear."""

    def __post_init__(self) -> None:
        if self.url is not None:
            scheme = urlsplit(self.url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                shown = redact_url(self.url)
                raise ConfigError(
                    f"url must start with redis://, rediss:// or unix://, got {shown!r}"
                )
        if not _NAMESPACE_RE.match(self.namespace):
            raise ConfigError(
                "namespace must be 1-64 characters of letters, digits, '_', '.', '-' or ':', "
                f"got {self.namespace!r}"
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535, got {self.port!r}")
        if self.db < 0:
            raise ConfigError(f"db must be >= 0, got {self.db!r}")
        object.__setattr__(self, "session_ttl", _ttl(self.session_ttl, "session_ttl"))
        object.__setattr__(self, "execution_ttl", _ttl(self.execution_ttl, "execution_ttl"))
        for name in ("connect_timeout", "command_timeout", "pool_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections!r}")
        if self.cipher is not None and not isinstance(self.cipher, FieldCipher):
            raise ConfigError(
                f"cipher must be a FieldCipher or None, got a {type(self.cipher).__name__}"
            )

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "url" and value is not None:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        if self.password is not None:
            shown.append("password='***'")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def safe_url(self) -> str:
        """The server address as a URL, with any password replaced by ``***``."""
        if self.url is not None:
            return redact_url(self.url)
        user = ""
        if self.username or self.password:
            user = quote(self.username or "", safe="")
            user += ":***@" if self.password else "@"
        return f"redis://{user}{self.host}:{self.port}/{self.db}"

    @property
    def is_tls(self) -> bool:
        """True when the URL asks for TLS (``rediss://``)."""
        return self.url is not None and self.url.startswith("rediss://")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis`` (without ``url``)."""
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.command_timeout,
            "max_connections": self.max_connections,
            "decode_responses": False,
            "protocol": 2,
        }
        if self.url is None:
            kwargs.update(
                host=self.host,
                port=self.port,
                db=self.db,
                username=self.username,
                password=self.password,
            )
        elif self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from environment variables.

        Reads ``REDIS_URL``, or ``REDIS_HOST`` / ``REDIS_PORT`` / ``REDIS_DB`` /
        ``REDIS_USERNAME`` / ``REDIS_PASSWORD``; ``REDIS_NAMESPACE`` (or ``REDIS_KEY_PREFIX``);
        ``REDIS_SESSION_TTL_SECONDS`` (or ``REDIS_TTL_SECONDS``); ``REDIS_EXECUTION_TTL_SECONDS``;
        ``REDIS_CONNECT_TIMEOUT`` and ``REDIS_COMMAND_TIMEOUT`` (seconds).
        Encryption at rest: ``FLYWHEEL_ENCRYPTION_KEYS`` (``k1:<base64 32-byte key>,k2:...``),
        ``FLYWHEEL_ENCRYPTION_ACTIVE_KEY`` (needed when the ring has several keys) and
        ``FLYWHEEL_COMPRESS_MIN_BYTES`` (a byte count, or ``off``); key material is never
        echoed in errors.

        Args:
            environ: The mapping to read (default ``os.environ``).
            **overrides: Fields that win over the environment.

        Raises:
            ConfigError: A variable holds an unusable value; the message names the variable and
                the value it got (passwords are never echoed).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def get(*names: str) -> tuple[str, str] | None:
            for name in names:
                raw = env.get(name)
                if raw is not None and raw.strip() != "":
                    return name, raw.strip()
            return None

        def number(names: tuple[str, ...], kind: type[int] | type[float]) -> Any:
            found = get(*names)
            if found is None:
                return None
            name, raw = found
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
                ) from None

        if (found := get("REDIS_URL")) is not None:
            values["url"] = found[1]
        if (found := get("REDIS_HOST")) is not None:
            values["host"] = found[1]
        for field_name, names, kind in (
            ("port", ("REDIS_PORT",), int),
            ("db", ("REDIS_DB",), int),
            ("session_ttl", ("REDIS_SESSION_TTL_SECONDS", "REDIS_TTL_SECONDS"), int),
            ("execution_ttl", ("REDIS_EXECUTION_TTL_SECONDS",), int),
            ("connect_timeout", ("REDIS_CONNECT_TIMEOUT",), float),
            ("command_timeout", ("REDIS_COMMAND_TIMEOUT",), float),
        ):
            value = number(names, kind)
            if value is not None:
                values[field_name] = value
                values.setdefault("_source", {})[field_name] = get(*names)
        if (found := get("REDIS_USERNAME")) is not None:
            values["username"] = found[1]
        if (found := get("REDIS_PASSWORD")) is not None:
            values["password"] = found[1]
        if (found := get("REDIS_NAMESPACE", "REDIS_KEY_PREFIX")) is not None:
            values["namespace"] = found[1].rstrip(":")
            values.setdefault("_source", {})["namespace"] = found
        if (found := get("REDIS_URL")) is not None:
            values.setdefault("_source", {})["url"] = found
        if (found := get(ENV_KEYS)) is not None and "cipher" not in overrides:
            active, threshold = get(ENV_ACTIVE), get(ENV_COMPRESS)
            values["cipher"] = FieldCipher.from_env_values(
                found[1],
                None if active is None else active[1],
                compress_min_bytes=None if threshold is None else threshold[1],
            )
        sources: dict[str, tuple[str, str]] = values.pop("_source", {})
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            # Name the environment variable that carried the bad value.
            for field_name, (var, raw) in sources.items():
                if str(exc).startswith(f"{field_name} ") and field_name not in overrides:
                    shown = redact_url(raw) if var == "REDIS_URL" else raw
                    raise ConfigError(f"{var}: {exc} (from {var}={shown!r})") from None
            raise
