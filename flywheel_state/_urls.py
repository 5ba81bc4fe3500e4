"""Connection URLs: parsing every supported scheme, and the one redaction of secrets.

Schemes:

- ``redis://[user:pass@]host[:port][/db]``, ``rediss://`` (TLS), ``unix://[user:pass@]/path``;
- ``redis+sentinel://[user:pass@]host[:port][,host[:port]...]/service_name[/db]`` and
  ``rediss+sentinel://`` (default port 26379; the user and password are the data nodes'; the
  sentinels' own credentials go into the ``sentinel_username`` / ``sentinel_password`` query
  parameters);
- ``redis+cluster://[user:pass@]host[:port][,host[:port]...]`` and ``rediss+cluster://``.

Secrets (userinfo passwords, ``password=`` and ``sentinel_password=`` query parameters) are
hidden by :func:`redact`, which every message, repr and CLI output goes through. A password
holding a URL-special character (``#``, ``/``, ``?``, ``@``) must be percent-encoded (``%23``,
``%2F``, ``%3F``, ``%40``); unencoded, the URL is refused with a :class:`ConfigError` that never
shows it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

from flywheel_state.errors import ConfigError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SENTINEL_PORT",
    "SCHEMES",
    "Address",
    "Endpoint",
    "format_addresses",
    "parse_addresses",
    "parse_url",
    "redact",
    "redact_url",
]

Address = tuple[str, int]
"""A ``(host, port)`` pair."""

DEFAULT_PORT = 6379
"""The port of a data node (and cluster node) when a URL does not give one."""
DEFAULT_SENTINEL_PORT = 26379
"""The port of a sentinel when a ``redis+sentinel://`` URL does not give one."""

SCHEMES: dict[str, tuple[str, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
"""Supported URL schemes: ``scheme -> (topology kind, TLS)``."""

_SCHEME_LIST = ", ".join(f"{s}://" for s in SCHEMES)

# Query parameters the client understands (redis-py's own, plus our credentials).
_TYPED_OPTIONS = {
    "db": int,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": bool,
    "max_connections": int,
    "health_check_interval": int,
    "ssl_check_hostname": bool,
    "timeout": float,
    "protocol": int,
}
_TEXT_OPTIONS = frozenset(
    {
        "username",
        "password",
        "sentinel_username",
        "sentinel_password",
        "client_name",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
_SECRET_OPTIONS = frozenset({"password", "sentinel_password"})

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# A secret query parameter anywhere in a text: its value runs to the next '&' or whitespace.
_SECRET_PARAM_RE = re.compile(r"(?i)((?:^|[?&;])(?:sentinel_)?password=)[^&\s'\"]*")
# A URL inside a text: scheme://, then a userinfo that ends at the last '@' before whitespace.
_URL_USERINFO_RE = re.compile(
    r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s'\"]*)@(?=[^\s'\"@]*(?:[\s'\"]|$))"
)
_MASK = "***"


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------


def _mask_userinfo(userinfo: str) -> str:
    """``user:secret`` -> ``user:***``; a userinfo without ``:`` is a user name (kept)."""
    if ":" not in userinfo:
        return userinfo
    return f"{userinfo.split(':', 1)[0]}:{_MASK}"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Hide every secret in ``text``: the one redaction of the library.

    Hides the password of any URL in the text (``scheme://user:***@host``, whatever characters
    the password holds, percent-encoded or not), the values of ``password=`` and
    ``sentinel_password=`` query parameters, and every occurrence of the given ``secrets``
    (raw and percent-encoded), for texts that carry them outside a URL (driver messages).

    Args:
        text: A URL, a message, a log line.
        secrets: Values that must not appear (passwords from the settings).

    Returns:
        The text with each secret replaced by ``***``. Never raises.
    """
    if not isinstance(text, str):
        text = str(text)
    out = text
    # Known secrets first, while they are whole (a pattern could cut one at a '&' or '@').
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in sorted({secret, quote(secret, safe=""), quote(secret)}, key=len, reverse=True):
            out = out.replace(form, _MASK)
    out = _SECRET_PARAM_RE.sub(lambda m: m.group(1) + _MASK, out)
    out = _URL_USERINFO_RE.sub(lambda m: m.group(1) + _mask_userinfo(m.group(2)) + "@", out)
    if "://" not in out and "@" in out and out.strip() == out and " " not in out:
        # Something URL-like without "scheme://" (``redis//:pw@x``): hide all before the '@'.
        head, _, tail = out.rpartition("@")
        if ":" in head:
            out = f"{_MASK}@{tail}"
    return out


def redact_url(url: str) -> str:
    """Return ``url`` with its passwords replaced by ``***`` (works on malformed URLs too)."""
    return redact(url)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: the parsed form of a URL (or of the Settings fields)."""

    kind: str
    """``single``, ``unix``, ``sentinel`` or ``cluster``."""
    tls: bool = False
    """True for the ``rediss`` schemes."""
    addresses: tuple[Address, ...] = ()
    """The node (single), the sentinels, or the cluster's seed nodes."""
    db: int = 0
    """Logical database (always 0 on a cluster)."""
    username: str | None = None
    """ACL user of the data nodes."""
    password: str | None = dataclasses.field(default=None, repr=False)
    """Password of the data nodes (never shown)."""
    service_name: str | None = None
    """The sentinels' name for the primary (sentinel only)."""
    sentinel_username: str | None = None
    """ACL user on the sentinels."""
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    """Password of the sentinels (never shown)."""
    path: str | None = None
    """The socket path (unix only)."""
    options: tuple[tuple[str, object], ...] = ()
    """Other client options from the query string, converted to their types."""

    @property
    def secrets(self) -> tuple[str, ...]:
        """The passwords this endpoint carries (for :func:`redact`)."""
        return tuple(s for s in (self.password, self.sentinel_password) if s)


def _fail(message: str, url: str) -> ConfigError:
    return ConfigError(f"{message}, got {redact_url(url)!r}")


def _parse_port(text: str, what: str, url: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _fail(f"url: {what} has a port that is not a number (1-65535)", url)
    port = int(text)
    if not 0 < port < 65536:
        raise _fail(f"url: {what} has port {port}, expected 1-65535", url)
    return port


def _parse_host(text: str, default_port: int, url: str) -> Address:
    item = text.strip()
    if not item:
        raise _fail("url: a host is empty (expected host[:port][,host[:port]...])", url)
    if item.startswith("["):  # [IPv6]:port
        close = item.find("]")
        if close < 0:
            raise _fail("url: an IPv6 address misses its closing ']'", url)
        host, rest = item[1:close], item[close + 1 :]
        if rest and not rest.startswith(":"):
            raise _fail("url: unexpected text after an IPv6 address", url)
        port = _parse_port(rest[1:], f"host [{host}]", url) if rest else default_port
    elif item.count(":") > 1:
        raise _fail("url: write an IPv6 address in brackets ([::1]:6379)", url)
    else:
        host, sep, port_text = item.partition(":")
        port = _parse_port(port_text, f"host {host!r}", url) if sep else default_port
    host = unquote(host)
    if not host:
        raise _fail("url: a host is empty (expected host[:port][,host[:port]...])", url)
    if any(ch.isspace() or ch in "/?#@" for ch in host):
        raise _fail("url: a host holds a character hosts can't hold", url)
    return host, port


def parse_addresses(value: object, default_port: int, what: str) -> tuple[Address, ...]:
    """``"h:p,h:p"``, ``["h:p", ("h", p)]`` -> ``(("h", p), ...)``.

    Raises:
        ConfigError: A host or port is unusable (the message names ``what``).
    """
    items: list[object]
    if isinstance(value, str):
        items = [part for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{what} must be 'host:port,...' or a list of (host, port)")
    out: list[Address] = []
    for item in items:
        if isinstance(item, str):
            try:
                out.append(_parse_host(item, default_port, item))
            except ConfigError:
                raise ConfigError(
                    f"{what}: bad address {item.strip()!r} (expected host[:port], port 1-65535)"
                ) from None
        elif (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
            and not isinstance(item[1], bool)
        ):
            host, port = item[0], item[1]
            if not host or not 0 < port < 65536:
                raise ConfigError(f"{what}: bad address {host!r}:{port!r} (port 1-65535)")
            out.append((host, port))
        else:
            raise ConfigError(f"{what}: expected 'host:port' or (host, port), got {item!r}")
    if not out:
        raise ConfigError(f"{what} must name at least one host")
    return tuple(out)


def format_addresses(addresses: Iterable[Address]) -> str:
    """``(("h", 1), ("::1", 2))`` -> ``"h:1,[::1]:2"``."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


def _parse_query(query: str, url: str) -> dict[str, str]:
    found: dict[str, str] = {}
    if not query:
        return found
    for pair in query.split("&"):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        name = unquote(name)
        if name not in _TEXT_OPTIONS and name not in _TYPED_OPTIONS:
            raise _fail(
                f"url: unknown query parameter {name[:40]!r} (known: "
                f"{', '.join(sorted(_TEXT_OPTIONS | set(_TYPED_OPTIONS)))})",
                url,
            )
        if not sep:
            raise _fail(f"url: query parameter {name!r} has no value", url)
        found[name] = unquote(value)
    return found


def _convert_option(name: str, value: str, url: str) -> object:
    kind = _TYPED_OPTIONS.get(name)
    if kind is None:
        return value
    try:
        if kind is bool:
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "y", "on"):
                return True
            if lowered in ("0", "false", "no", "n", "off", ""):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError:
        raise _fail(f"url: query parameter {name!r} has an unusable value", url) from None


def _parse_db(text: str, url: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _fail("url: the database must be a number (/0)", url)
    return int(text)


def parse_url(url: object) -> Endpoint:
    """Parse a connection URL of any supported scheme.

    Args:
        url: The URL.

    Returns:
        Its :class:`Endpoint`.

    Raises:
        ConfigError: The URL is malformed, has an unknown scheme or query parameter, a bad
            port, no host, or a password with an unencoded URL-special character. The message
            shows the URL redacted, never a secret.
    """
    if not isinstance(url, str):
        raise ConfigError(f"url must be a string, got {type(url).__name__}")
    match = _SCHEME_RE.match(url)
    if match is None:
        raise _fail(f"url must start with one of {_SCHEME_LIST}", url)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise _fail(f"url must start with one of {_SCHEME_LIST} (unknown scheme {scheme!r})", url)
    kind, tls = SCHEMES[scheme]
    rest = url[match.end() :]
    if any(ch.isspace() for ch in rest):
        raise _fail("url must not contain whitespace", url)
    if "#" in rest:
        raise _fail(
            "url: '#' is not allowed; a password holding '#', '/', '?' or '@' must be "
            "percent-encoded (%23, %2F, %3F, %40)",
            url,
        )
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    if netloc.count("@") > 1 or ("@" not in netloc and "@" in tail):
        raise _fail(
            "url: ambiguous '@'; a user name or password holding '#', '/', '?' or '@' must be "
            "percent-encoded (%23, %2F, %3F, %40)",
            url,
        )
    path, _, query = tail.partition("?")
    userinfo, at, hostpart = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon and pass_text else None
    params = _parse_query(query, url)
    if "username" in params:
        username = params.pop("username") or None
    if "password" in params:
        password = params.pop("password") or None
    sentinel_username = params.pop("sentinel_username", None) or None
    sentinel_password = params.pop("sentinel_password", None) or None
    if kind != "sentinel" and (sentinel_username or sentinel_password):
        raise _fail("url: sentinel_username/sentinel_password need a redis+sentinel:// url", url)
    ssl_options = sorted(name for name in params if name.startswith("ssl_"))
    if ssl_options and not tls:
        raise _fail(f"url: {ssl_options[0]} needs a TLS scheme (rediss...)", url)
    if params.get("ssl_cert_reqs", "required") not in ("none", "optional", "required"):
        raise _fail("url: ssl_cert_reqs must be none, optional or required", url)
    db = _parse_db(params.pop("db"), url) if "db" in params else None
    options = tuple((name, _convert_option(name, value, url)) for name, value in params.items())

    if kind == "unix":
        if hostpart:
            raise _fail("url: a unix:// url has no host (unix:///path/to/socket)", url)
        if not path or path == "/":
            raise _fail("url: a unix:// url needs the socket path (unix:///path/to/socket)", url)
        return Endpoint(
            kind=kind,
            db=db or 0,
            username=username,
            password=password,
            path=unquote(path),
            options=options,
        )

    if not hostpart:
        raise _fail("url has no host", url)
    default_port = DEFAULT_SENTINEL_PORT if kind == "sentinel" else DEFAULT_PORT
    addresses = tuple(_parse_host(item, default_port, url) for item in hostpart.split(","))
    segments = [unquote(s) for s in path.split("/")[1:]] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    service_name: str | None = None
    if kind == "single":
        if len(addresses) > 1:
            raise _fail(
                f"url: {scheme}:// takes one host; use redis+sentinel:// or redis+cluster:// "
                "for several",
                url,
            )
        if len(segments) > 1:
            raise _fail("url: the path must be the database number only (/0)", url)
        if segments and db is None:
            db = _parse_db(segments[0], url)
    elif kind == "sentinel":
        if not segments or not segments[0]:
            raise _fail(
                "url: a redis+sentinel:// url needs the service name "
                "(redis+sentinel://host:26379,host:26380/mymaster[/db])",
                url,
            )
        if len(segments) > 2:
            raise _fail("url: the path must be /service_name[/db]", url)
        service_name = segments[0]
        if len(segments) == 2 and db is None:
            db = _parse_db(segments[1], url)
    else:  # cluster
        if segments and segments != ["0"]:
            raise _fail("url: a cluster has database 0 only (no path, or /0)", url)
        if db not in (None, 0):
            raise _fail("url: a cluster has database 0 only", url)
    return Endpoint(
        kind=kind,
        tls=tls,
        addresses=addresses,
        db=db or 0,
        username=username,
        password=password,
        service_name=service_name,
        sentinel_username=sentinel_username,
        sentinel_password=sentinel_password,
        options=options,
    )
