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
from urllib.parse import quote

from flywheel_state._urls import (
    DEFAULT_SENTINEL_PORT,
    Address,
    Endpoint,
    format_addresses,
    parse_addresses,
    parse_url,
    redact,
    redact_url,
)
from flywheel_state.crypto import ENV_ACTIVE, ENV_COMPRESS, ENV_KEYS, FieldCipher
from flywheel_state.errors import ConfigError

__all__ = ["DEFAULT_NAMESPACE", "Settings", "env_flag", "redact_url"]

DEFAULT_NAMESPACE = "agentic_flywheel"
DEFAULT_SESSION_TTL = timedelta(days=7)
DEFAULT_EXECUTION_TTL = timedelta(hours=1)

# No ':' in a namespace: it separates namespace, kind and id in every key, so with a ':' one
# namespace's prefix could cover another's keys and index ("app" and "app:session").
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(environ: Mapping[str, str] | None, name: str) -> bool | None:
    """The true/false environment variable ``name``: None when unset or blank.

    Accepts ``1``/``true``/``yes``/``on`` and ``0``/``false``/``no``/``off`` (any case, trimmed):
    the one reading of a flag for :meth:`Settings.from_env` and the compat layer's
    ``REDIS_ENABLED``.

    Raises:
        ConfigError: Another value (the message names the variable).
    """
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    flag = raw.strip().lower()
    if flag not in _TRUE | _FALSE:
        raise ConfigError(f"{name} must be true or false (or 1/0, yes/no, on/off), got {raw!r}")
    return flag in _TRUE


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
    fields are used (with ``sentinel_hosts`` + ``service_name`` for Sentinel, or
    ``cluster_hosts`` for Redis Cluster). Passwords (given alone, inside the URL or as
    ``password=`` / ``sentinel_password=`` query parameters) never appear in ``repr``, ``str``,
    messages, logs or CLI output.
    """

    url: str | None = None
    """A connection URL: ``redis://``, ``rediss://`` (TLS), ``unix://``,
    ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]``
    (``rediss+sentinel://``; sentinel credentials as ``sentinel_username`` /
    ``sentinel_password`` query parameters) or ``redis+cluster://host:port[,host:port...]``
    (``rediss+cluster://``). Takes precedence over host/port/db and the topology fields."""
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
    sentinel_hosts: tuple[Address, ...] | str = ()
    """Sentinels to ask for the primary (``"h:26379,h:26380"`` or ``(("h", 26379), ...)``),
    used when ``url`` is not set; needs ``service_name``."""
    service_name: str | None = None
    """The sentinels' name of the primary (``sentinel monitor NAME ...``)."""
    sentinel_username: str | None = None
    """ACL user on the sentinels (when they require one)."""
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    """Password of the sentinels; never shown."""
    cluster_hosts: tuple[Address, ...] | str = ()
    """Seed nodes of a Redis Cluster (``"h:7000,h:7001"``), used when ``url`` is not set."""
    tls: bool = False
    """Use TLS, when ``url`` is not set (a URL says it with its ``rediss`` scheme)."""
    wait_replicas: int = 0
    """When above 0, every write returns only once this many replicas acknowledged it (WAIT,
    within ``command_timeout``); otherwise it raises OutcomeUnknownError."""
    events: bool = False
    """Append a change event to the stream ``{namespace}:events`` with every write, in the
    same atomic step (see :mod:`flywheel_state.events`). Not on Redis Cluster."""
    events_maxlen: int = 100_000
    """Approximate cap of the event stream's length (older events are trimmed)."""
    trace_ids: bool = False
    """Put record ids into OpenTelemetry spans (attribute ``flywheel_state.record.id``). Off
    by default: ids may identify users."""
    wait_aof: bool = False
    """Wait with ``WAITAOF 1 wait_replicas`` instead: every write is fsynced to the primary's
    append-only file (and to ``wait_replicas`` replicas' files) before it returns. Needs
    ``appendonly yes`` on those servers (Redis 7.2+); otherwise writes raise
    OutcomeUnknownError."""
    cipher: FieldCipher | None = None
    """Encrypts content fields at rest (see ``flywheel_state.crypto``); its repr shows key ids
    only. None: stored in clear."""

    def __post_init__(self) -> None:
        for name in ("sentinel_hosts", "cluster_hosts"):
            value = getattr(self, name)
            if value in ((), "", None):
                object.__setattr__(self, name, ())
            else:
                default = DEFAULT_SENTINEL_PORT if name == "sentinel_hosts" else 6379
                object.__setattr__(self, name, parse_addresses(value, default, name))
        object.__setattr__(self, "_endpoint", self._make_endpoint())
        if not _NAMESPACE_RE.match(self.namespace):
            raise ConfigError(
                "namespace must be 1-64 characters of letters, digits, '_', '.' or '-' (no ':', "
                f"which separates namespace, kind and id in keys), got {self.namespace!r}"
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
        if (
            isinstance(self.wait_replicas, bool)
            or not isinstance(self.wait_replicas, int)
            or not 0 <= self.wait_replicas <= 1000
        ):
            raise ConfigError(f"wait_replicas must be an int 0-1000, got {self.wait_replicas!r}")
        if not isinstance(self.wait_aof, bool):
            raise ConfigError(f"wait_aof must be True or False, got {self.wait_aof!r}")
        if (self.wait_replicas or self.wait_aof) and self.endpoint.kind == "cluster":
            raise ConfigError(
                "wait_replicas / wait_aof are not supported on Redis Cluster yet "
                "(use the defaults with redis+cluster://)"
            )
        for name in ("events", "trace_ids"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.events and self.endpoint.kind == "cluster":
            # The record and the stream live in different hash slots: no atomic script.
            raise ConfigError(
                "events are not supported on Redis Cluster (the event stream and the records "
                "are in different hash slots, so a write and its event can't be atomic)"
            )
        maxlen = self.events_maxlen
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ConfigError(f"events_maxlen must be an int >= 1, got {maxlen!r}")
        if self.cipher is not None and not isinstance(self.cipher, FieldCipher):
            raise ConfigError(
                f"cipher must be a FieldCipher or None, got a {type(self.cipher).__name__}"
            )

    def _make_endpoint(self) -> Endpoint:
        if self.url is not None:
            return parse_url(self.url)
        if self.sentinel_hosts and self.cluster_hosts:
            raise ConfigError("sentinel_hosts and cluster_hosts exclude each other: set one")
        if self.sentinel_hosts:
            if not self.service_name:
                raise ConfigError("sentinel_hosts needs service_name (the monitored primary)")
            return Endpoint(
                kind="sentinel",
                tls=self.tls,
                addresses=self.sentinel_hosts,  # type: ignore[arg-type]
                db=self.db,
                username=self.username,
                password=self.password,
                service_name=self.service_name,
                sentinel_username=self.sentinel_username,
                sentinel_password=self.sentinel_password,
            )
        if self.cluster_hosts:
            return Endpoint(
                kind="cluster",
                tls=self.tls,
                addresses=self.cluster_hosts,  # type: ignore[arg-type]
                username=self.username,
                password=self.password,
            )
        return Endpoint(
            kind="single",
            tls=self.tls,
            addresses=((self.host, self.port),),
            db=self.db,
            username=self.username,
            password=self.password,
        )

    @property
    def endpoint(self) -> Endpoint:
        """Where to connect, parsed from ``url`` or from the fields; fields given explicitly
        (``password``, ``sentinel_password``...) win over the URL's."""
        parsed: Endpoint = self.__dict__["_endpoint"]
        if self.url is None:
            return parsed
        changes: dict[str, Any] = {}
        for name in ("password", "sentinel_username", "sentinel_password", "service_name"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return dataclasses.replace(parsed, **changes) if changes else parsed

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every password these settings hold (what :meth:`redact` hides)."""
        found = [self.password, self.sentinel_password, *self.endpoint.secrets]
        return tuple(dict.fromkeys(s for s in found if s))

    def redact(self, text: str) -> str:
        """``text`` with every secret of these settings (and of any URL in it) hidden."""
        return redact(text, self.secrets)

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "url" and value is not None:
                value = self.redact(value)
            shown.append(f"{f.name}={value!r}")
        if self.password is not None:
            shown.append("password='***'")
        if self.sentinel_password is not None:
            shown.append("sentinel_password='***'")
        return self.redact(f"Settings({', '.join(shown)})")

    __str__ = __repr__

    @property
    def safe_url(self) -> str:
        """The server address as a URL, with any password replaced by ``***``."""
        if self.url is not None:
            return self.redact(self.url)
        user = ""
        if self.username or self.password:
            user = quote(self.username or "", safe="")
            user += ":***@" if self.password else "@"
        scheme = "rediss" if self.tls else "redis"
        if self.sentinel_hosts:
            query = ""
            if self.sentinel_username:
                query += f"sentinel_username={quote(self.sentinel_username, safe='')}&"
            if self.sentinel_password:
                query += "sentinel_password=***&"
            hosts = format_addresses(self.sentinel_hosts)  # type: ignore[arg-type]
            url = f"{scheme}+sentinel://{user}{hosts}/{self.service_name}/{self.db}"
            return self.redact(url + (f"?{query[:-1]}" if query else ""))
        if self.cluster_hosts:
            hosts = format_addresses(self.cluster_hosts)  # type: ignore[arg-type]
            return self.redact(f"{scheme}+cluster://{user}{hosts}")
        return self.redact(f"{scheme}://{user}{self.host}:{self.port}/{self.db}")

    @property
    def is_tls(self) -> bool:
        """True when the connection uses TLS (a ``rediss`` scheme, or ``tls=True``)."""
        return self.endpoint.tls

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
        ``REDIS_CONNECT_TIMEOUT`` and ``REDIS_COMMAND_TIMEOUT`` (seconds);
        ``REDIS_SENTINEL_HOSTS`` (``h:p,h:p``), ``REDIS_SENTINEL_SERVICE``,
        ``REDIS_SENTINEL_USERNAME``, ``REDIS_SENTINEL_PASSWORD``; ``REDIS_CLUSTER_HOSTS``
        (``h:p,h:p``); ``REDIS_WAIT_REPLICAS``; ``REDIS_WAIT_AOF`` (``1``/``true``);
        ``REDIS_EVENTS`` (``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``) and
        ``REDIS_EVENTS_MAXLEN``. Encryption at rest: ``FLYWHEEL_ENCRYPTION_KEYS``
        (``k1:<base64 32-byte key>,k2:...``),
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
            ("wait_replicas", ("REDIS_WAIT_REPLICAS",), int),
            ("events_maxlen", ("REDIS_EVENTS_MAXLEN",), int),
        ):
            value = number(names, kind)
            if value is not None:
                values[field_name] = value
                values.setdefault("_source", {})[field_name] = get(*names)
        if (events := env_flag(env, "REDIS_EVENTS")) is not None:
            values["events"] = events
        if (found := get("REDIS_USERNAME")) is not None:
            values["username"] = found[1]
        if (found := get("REDIS_PASSWORD")) is not None:
            values["password"] = found[1]
        if (wait_aof := env_flag(env, "REDIS_WAIT_AOF")) is not None:
            values["wait_aof"] = wait_aof
        for field_name, var in (
            ("sentinel_hosts", "REDIS_SENTINEL_HOSTS"),
            ("service_name", "REDIS_SENTINEL_SERVICE"),
            ("sentinel_username", "REDIS_SENTINEL_USERNAME"),
            ("sentinel_password", "REDIS_SENTINEL_PASSWORD"),
            ("cluster_hosts", "REDIS_CLUSTER_HOSTS"),
        ):
            if (found := get(var)) is not None:
                values[field_name] = found[1]
                if field_name.endswith("_hosts"):
                    values.setdefault("_source", {})[field_name] = found
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
                message = str(exc)
                if (
                    message.startswith((f"{field_name} ", f"{field_name}:"))
                    and field_name not in overrides
                ):
                    shown = redact(raw) if var == "REDIS_URL" else raw
                    raise ConfigError(f"{var}: {message} (from {var}={shown!r})") from None
            raise
