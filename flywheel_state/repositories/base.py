"""The generic, async, TTL-aware repository every record kind is stored through."""

from __future__ import annotations

import asyncio
import math
import re
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from flywheel_state import _topology
from flywheel_state._redis import (
    Client,
    as_str,
    batches_directly,
    execute_many,
    execute_read,
    execute_write,
    translate_errors,
)
from flywheel_state.config import _NAMESPACE_RE
from flywheel_state.crypto import FieldCipher, RecordCodec, check_plain_value, has_envelope_marker
from flywheel_state.errors import (
    AlreadyExistsError,
    ConfigError,
    CorruptRecordError,
    FlywheelStateError,
    InvalidQueryError,
    NotFoundError,
    VersionMismatchError,
)
from flywheel_state.models._base import Document
from flywheel_state.models._types import INT64_MAX, INT64_MIN, utcnow, validate_id
from flywheel_state.repositories._gc import collector_paused
from flywheel_state.repositories._scripts import WRITE_SCRIPT
from flywheel_state.repositories.query import OnCorrupt, QueryMixin

if TYPE_CHECKING:
    from flywheel_state.events import EventSink

__all__ = [
    "BATCH_SIZE",
    "DEFAULT",
    "Repository",
    "TTLArg",
    "check_free_form",
    "check_nesting",
    "collector_paused",
    "encode_json",
]

M = TypeVar("M", bound=Document)


class _Default:
    """Marker for "use the repository's default TTL"."""

    _instance: _Default | None = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()
"""Pass as ``ttl=`` to use the repository's default time to live (the usual case)."""

TTLArg = int | float | timedelta | None | _Default
"""A TTL argument: seconds, a timedelta, ``None`` for no expiry, or :data:`DEFAULT`."""

BATCH_SIZE = 500
"""Commands per pipeline round trip in ``save_many`` / ``get_many`` / ``delete_many``."""

_YIELD_EVERY = 50
"""save_many lets the batch in flight progress every this many records it serialises."""
_KEEP_TTL = -1
_NO_EXPIRY = 0
_PROTECTED_FIELDS = frozenset({"id", "version", "schema_version", "pk"})
_MAX_TTL_SECONDS = timedelta.max.total_seconds()
# RedisJSON parses at most this many levels of nesting in one command; a document deeper than
# that could not be written back whole.
_MAX_JSON_DEPTH = 127
_MAX_VERSION = 2**53  # the bound of Document.version
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
# A patch path the write script can fold into its single JSON.MERGE: a top-level member.
_MEMBER_PATH = re.compile(r"\$\.([A-Za-z_][A-Za-z0-9_]*)")
# First characters of JSON values that JSON.MERGE writes as JSON.SET would (not objects, which
# it merges into the old value, nor null, which it deletes).
_MERGEABLE_START = frozenset('"[-0123456789tf')


def encode_json(dump: Callable[[], str], what: str) -> str:
    """Run a pydantic JSON dump, turning values JSON can't hold into InvalidQueryError.

    A dict that contains itself, nesting deeper than the serializer allows, a non-string key
    or a lone surrogate in a string pass validation (``dict[str, Any]`` holds anything) but
    can't be written as JSON.

    Raises:
        InvalidQueryError: The value can't be stored; nothing was written.
    """
    try:
        return dump()
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidQueryError(
            f"{what} holds a value that can't be stored as JSON: {exc}"
        ) from exc


def _expected(expected_version: int | None) -> str:
    """The script argument for ``expected_version`` (``''``: no check)."""
    if expected_version is None:
        return ""
    if (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or expected_version < 0
    ):
        raise InvalidQueryError(
            f"expected_version must be a non-negative int or None, got {expected_version!r}"
        )
    return str(expected_version)


def check_nesting(text: str, what: str, *, at_depth: int) -> str:
    """Return the JSON ``text`` if, stored ``at_depth`` levels deep, it fits the server's limit.

    A partial write sends each value with its own command: a value the server refuses must be
    caught before the script writes the values before it.

    Raises:
        InvalidQueryError: The document would nest deeper than RedisJSON accepts.
    """
    limit = _MAX_JSON_DEPTH - at_depth
    if text.count("{") + text.count("[") <= limit:
        return text  # the common case: not even that many brackets, in strings or not
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        char = token.group()
        if char in ("{", "["):
            depth += 1
            if depth > limit:
                raise InvalidQueryError(
                    f"{what} nests deeper than the {_MAX_JSON_DEPTH} levels a stored document "
                    "may have"
                )
        elif char in ("}", "]"):
            depth -= 1
    return text


def _refusal(path: str, value: Any) -> str | None:
    """Why the scalar ``value`` can't be stored as free-form data, or None when it can."""
    # Subclasses of str, int and float (IntEnum, StrEnum, (str, Enum) members) are written as
    # their value and read back as it; they compare equal to it. bool is an int.
    if value is None or isinstance(value, (str, bool)):
        return None
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return f"{path} is an integer outside the signed 64-bit range RedisJSON keeps exactly"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{path} is {value!r}: JSON has no NaN or infinities"
    if isinstance(value, tuple):
        return f"{path} is a tuple: it would read back as a list; pass a list"
    if isinstance(value, (set, frozenset)):
        return f"{path} is a set: it would read back as a list; pass a (sorted) list"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{path} is bytes: JSON holds text only; decode or base64-encode it"
    if isinstance(value, datetime):
        return (
            f"{path} is a datetime: in a free-form value it would read back as a string; "
            "pass value.isoformat() or epoch seconds"
        )
    return (
        f"{path} is a {type(value).__name__}: free-form values hold JSON data only (dict with "
        "str keys, list, str, int, float, bool, None)"
    )


class _Refused(Exception):
    """Raised inside the free-form walk; the path is collected on the way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[Any] = []


_ANY_FIELDS: dict[type, tuple[str, ...]] = {}
_TEXT = frozenset({str, type(None)})


def _model_items(node: BaseModel) -> list[tuple[Any, Any]]:
    """The free-form parts of a pydantic model: its ``Any`` fields and its extra keys."""
    cls = type(node)
    names = _ANY_FIELDS.get(cls)
    if names is None:
        names = tuple(n for n, info in cls.model_fields.items() if info.annotation is Any)
        _ANY_FIELDS[cls] = names
    values = node.__dict__
    items = [(n, values.get(n)) for n in names]
    extra = node.__pydantic_extra__
    if extra:
        items.extend(extra.items())
    return items


def _walk(node: Any, depth: int) -> None:
    """Check a free-form value; raises _Refused. ``depth`` is the depth ``node`` sits at."""
    kind = type(node)
    items: Iterable[tuple[Any, Any]]
    keyed = True
    if kind is dict:
        items = node.items()
    elif kind is list:
        items = enumerate(node)
        keyed = False
    elif isinstance(node, BaseModel):
        items = _model_items(node)
    elif isinstance(node, dict) and not isinstance(node, Enum):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
        keyed = False
    else:
        reason = _refusal("it", node)
        if reason is not None:
            raise _Refused(reason)
        return
    depth += 1
    if depth > _MAX_JSON_DEPTH:
        raise _Refused(
            f"it nests deeper than the {_MAX_JSON_DEPTH} levels a stored document may have (or "
            "contains itself)"
        )
    for key, item in items:
        if keyed and type(key) is not str:
            raise _Refused(
                f"it has the key {key!r} of type {type(key).__name__}: JSON object keys are "
                "strings, so it would read back as a different key; use str keys"
            )
        item_kind = type(item)
        if item_kind is str or item is None or item_kind is bool:
            continue
        if item_kind is int:
            if INT64_MIN <= item <= INT64_MAX:
                continue
        elif item_kind is float and item - item == 0.0:  # finite
            continue
        else:
            names = _ANY_FIELDS.get(item_kind)
            if names is not None and not item.__pydantic_extra__:
                # A model seen before (a history entry) holding only text: nothing to check.
                # (A plain loop: a generator and all() per entry cost more than the check.)
                values = item.__dict__
                for name in names:
                    if type(values.get(name)) not in _TEXT:
                        break
                else:
                    continue
        try:
            _walk(item, depth)
        except _Refused as error:
            error.path.append(key)
            raise


def _set_version(model: Document, version: int) -> None:
    """``model.version = version`` for a stored version (a valid one: no validation needed,
    which is a round trip through pydantic on every write)."""
    if type(version) is int and 0 <= version <= _MAX_VERSION:
        model.__dict__["version"] = version
        model.__pydantic_fields_set__.add("version")
    else:
        model.version = version


def check_free_form(value: Any, what: str, *, at_depth: int) -> None:
    """Check that a free-form value (``dict[str, Any]``, ``Any``) reads back equal once stored.

    Free-form values hold JSON data: dicts with ``str`` keys, lists, strings, booleans, None,
    integers within the signed 64-bit range and finite floats. Anything else would be stored
    as something else (a tuple or set as a list, a datetime or bytes as a string, an int key as a
    str key, NaN as null) or not at all (10**400, nesting beyond 127 levels): it is refused.
    Pydantic models met on the way (history entries) are checked field by field.

    Args:
        value: The value.
        what: Names the value in the error message.
        at_depth: How deep in the stored document the value sits (a field of the document: 1).

    Raises:
        InvalidQueryError: The value can't be stored faithfully; the message names the path.
    """
    try:
        _walk(value, at_depth)
    except _Refused as error:
        path = what + "".join(f"[{k!r}]" for k in reversed(error.path[-8:]))
        if len(error.path) > 8:
            path += "[...]"
        raise InvalidQueryError(
            f"{path} holds a value that can't be stored as JSON: {error.reason}"
        ) from None


class Repository(QueryMixin[M], Generic[M]):
    """Stores one model class under ``{namespace}:{model.KIND}:{id}``.

    Every write carries its TTL in the same atomic step (one Lua script). Partial writes touch
    only their JSON paths and never recreate a missing key. Every write bumps the document's
    ``version``; pass ``expected_version`` to fail with :class:`ConflictError` on a race.

    Args:
        client: The Store's ``redis.asyncio`` client (keyword-only, never a global).
        namespace: Key prefix of this store.
        default_ttl: TTL applied when a write does not say otherwise (None: no expiry).
    """

    model: type[M]
    """The model class this repository stores (set by each subclass)."""
    #: When True every write restarts the TTL (sessions); otherwise partial writes keep it.
    sliding: ClassVar[bool] = False
    #: Put record ids into OpenTelemetry spans (``Settings.trace_ids``; the Store sets it).
    trace_ids: bool = False
    #: Batch reads (get_many, pages of find, iterate) decode each batch with the garbage
    #: collector paused (see :func:`collector_paused`); set False on an instance to opt out.
    pause_gc_in_batches: bool = True

    def __init__(
        self,
        *,
        client: Client | Callable[[], Client],
        namespace: str,
        default_ttl: timedelta | None,
        cipher: FieldCipher | None = None,
    ) -> None:
        # A Store passes a callable returning the client of the running event loop, so a
        # repository works in whatever loop it is used in.
        self._client_source: Callable[[], Client] = (
            client if callable(client) and not isinstance(client, Redis) else (lambda: client)
        )
        if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
            # The key-space contract: no ':' in a namespace, so "{ns}:{kind}:{id}" is
            # unambiguous and no namespace's prefix covers another's keys or index.
            raise ConfigError(
                "namespace must be 1-64 characters of letters, digits, '_', '.' or '-' (no "
                f"':'), got {namespace!r}"
            )
        self.namespace = namespace
        self.default_ttl = default_ttl
        self._prefix = f"{namespace}:{self.model.KIND}:"
        self._script = AsyncScript(None, WRITE_SCRIPT.encode())  # type: ignore[arg-type]
        self._adapters: dict[str, TypeAdapter[Any]] = {}
        self._events: EventSink | None = None
        # Encryption at rest (flywheel_state.crypto): None keeps the plain, zero-overhead path.
        self._codec = None if cipher is None else RecordCodec(cipher, namespace, self.model)
        self._detector = RecordCodec(None, namespace, self.model)

    @property
    def _client(self) -> Client:
        return self._client_source()

    def emit_events(self, sink: EventSink | None) -> None:
        """Write a change event with every write from now on (None: stop); the Store calls it."""
        self._events = sink

    async def _write(
        self,
        *,
        keys: list[str],
        args: list[Any],
        client: Any = None,
        what: str = "writing",
        event: str = "",
        fields: Sequence[str] = (),
    ) -> Any:
        keys, args = self._with_event(keys, args, event, fields)
        if client is not None:  # a pipeline: it loads the script itself
            if _topology.is_cluster_pipeline(client):  # Redis Cluster refuses Script there
                return await _topology.queue_script(self._script, client, keys, args)
            return await self._script(keys=keys, args=args, client=client)
        client = self._client
        if _topology.is_cluster_client(client):
            # The cluster client routes by slot over per-node pools; a timeout after sending
            # still leaves the outcome unknown.
            with translate_errors(what, write=True):
                return await self._script(keys=keys, args=args, client=client)
        # One command on one connection, so that a write that got no reply is told apart
        # (OutcomeUnknownError) from one that was never sent (StoreUnavailableError).
        sha: str = self._script.sha  # type: ignore[attr-defined]
        try:
            return await execute_write(client, "EVALSHA", sha, len(keys), *keys, *args, what=what)
        except redis_exc.NoScriptError:  # not run: the server does not have the script yet
            return await execute_write(
                client, "EVAL", WRITE_SCRIPT, len(keys), *keys, *args, what=what
            )

    def _with_event(
        self, keys: list[str], args: list[Any], event: str = "", fields: Sequence[str] = ()
    ) -> tuple[list[str], list[Any]]:
        if self._events is None:
            return keys, args
        # The event rides in the same script call (see repositories/_scripts.py).
        id = keys[0][len(self._prefix) :]
        keys = [keys[0], self._events.key]
        return keys, [*args, *self._events.write_args(self.model.KIND, id, event, fields)]

    async def _run_scripts(
        self, client: Client, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Run the write script once per ``(keys, args)``, in one round trip (execute_many);
        the replies in order, an error reply in its place."""
        sha: str = self._script.sha  # type: ignore[attr-defined]
        commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await execute_many(client, commands, write=True)
        missing = [
            i for i, reply in enumerate(replies) if isinstance(reply, redis_exc.NoScriptError)
        ]
        if missing:  # those did not run: the server does not have the script (yet)
            await execute_read(client, "SCRIPT", "LOAD", WRITE_SCRIPT)
            again = await execute_many(client, [commands[i] for i in missing], write=True)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _delete_keys(self, keys: list[str], what: str) -> int:
        """DEL ``keys``: one command on one connection, or split by slot on a cluster."""
        client = self._client
        if _topology.is_cluster_client(client):
            with translate_errors(what, write=True):
                return int(await client.delete(*keys))
        return int(await execute_write(client, "DEL", *keys, what=what))

    # ------------------------------------------------------------------ keys and encoding

    @property
    def key_prefix(self) -> str:
        """The prefix of every key of this repository, ``{namespace}:{kind}:``."""
        return self._prefix

    def key(self, id: str) -> str:
        """The Redis key of record ``id`` (validated).

        Raises:
            InvalidIdError: ``id`` is not a usable id.
        """
        return self._prefix + validate_id(id)

    def _encode(self, model: Document) -> str:
        what = f"{self.model.__name__} {model.id!r}"
        # The value rules hold whether or not the content is then encrypted.
        for name in model.FREE_FORM:
            check_free_form(getattr(model, name), f"{what} {name}", at_depth=1)
        if self._codec is not None:
            key = self.key(model.id)
            return self._codec.seal_document(
                model, encode_json, key=key, check=check_nesting, max_depth=_MAX_JSON_DEPTH
            )
        for name in self._detector.fields.whole:
            check_plain_value(self.model.KIND, name, getattr(model, name))
        return encode_json(model.model_dump_json, what)

    def _open(self, key: str, raw: bytes | str) -> bytes | str:
        """``raw`` (a stored document's JSON) with its encrypted fields decrypted; without a
        cipher, encrypted content raises EncryptionKeyError instead of passing as content."""
        if self._codec is not None:
            return self._codec.open_document(key, raw)
        if has_envelope_marker(raw):
            return self._detector.open_document(key, raw)  # raises on encrypted content
        return raw

    def _validator(self) -> Callable[[bytes | str], M] | None:
        """The model's JSON validator when a stored document needs nothing but validating (no
        cipher). Batch reads call it directly and go through :meth:`_decode` (which decrypts,
        refuses encrypted content without a cipher, and names the key in its errors) for a
        document that holds an envelope marker or fails validation."""
        if self._codec is not None:
            return None
        return self.model.model_validate_json

    def _decode(self, key: str, raw: bytes | str) -> M:
        raw = self._open(key, raw)
        try:
            return self.model.model_validate_json(raw)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<document>'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise CorruptRecordError(
                f"{key} does not hold a valid {self.model.__name__}: {errors}",
                key=key,
                reason=errors,
            ) from exc
        except FlywheelStateError as exc:  # e.g. an invalid id inside the document
            raise CorruptRecordError(
                f"{key} does not hold a valid {self.model.__name__}: {exc}",
                key=key,
                reason=str(exc),
            ) from exc

    def _ttl_ms(self, ttl: TTLArg, *, partial: bool) -> int:
        if isinstance(ttl, _Default):
            if partial and not self.sliding:
                return _KEEP_TTL
            ttl = self.default_ttl
        if ttl is None:
            return _NO_EXPIRY
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float, timedelta)):
            raise InvalidQueryError(f"ttl must be seconds, a timedelta or None, got {ttl!r}")
        try:
            seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if not seconds > 0:  # NaN included
            raise InvalidQueryError(f"ttl must be positive (or None for no expiry), got {ttl!r}")
        if seconds > _MAX_TTL_SECONDS:
            # Redis would refuse the expiry only after the script has written the data.
            raise InvalidQueryError(
                f"ttl must be at most {_MAX_TTL_SECONDS:.0f} seconds (timedelta.max), or None "
                f"for no expiry, got {ttl!r}"
            )
        return max(1, int(seconds * 1000))

    def _corrupt_type(self, key: str, ktype: str) -> CorruptRecordError:
        return CorruptRecordError(
            f"{key} holds a Redis {ktype} value, not a {self.model.__name__} document "
            "(data written by the original persistence code?). It was left untouched: run "
            "`flywheel-state migrate up` to import legacy values.",
            key=key,
            reason=f"key type is {ktype}",
        )

    def _check_reply(self, key: str, reply: Any, expected_version: int | None) -> int:
        status = as_str(reply[0])
        number = int(reply[1])
        if status == "ok" or status == "duplicate":
            return number
        if status == "corrupt":
            raise self._corrupt_type(key, as_str(reply[2]))
        if status == "exists":
            raise AlreadyExistsError(f"{key} already exists", key=key)
        if status == "missing":
            raise NotFoundError(
                f"{key} does not exist (never written, deleted or expired)", key=key
            )
        if status == "conflict":
            if expected_version == 0:  # "must not exist yet"
                raise AlreadyExistsError(
                    f"{key} already exists (at version {number})",
                    key=key,
                    expected_version=0,
                    actual_version=number,
                )
            raise VersionMismatchError(
                f"{key} is at version {number}, expected {expected_version}",
                key=key,
                expected_version=expected_version,
                actual_version=number,
            )
        if status == "badpath":
            raise CorruptRecordError(
                f"{key}: field {as_str(reply[2])} is missing or has the wrong JSON type",
                key=key,
                reason=f"bad path {as_str(reply[2])}",
            )
        raise FlywheelStateError(f"unexpected reply from the write script: {reply!r}")

    # ------------------------------------------------------------------ full writes

    def _prepare(self, model: M) -> None:
        """Hook run before a full write (sessions stamp ``updated_at``)."""

    def _write_args(
        self, model: Document, mode: str, ttl: TTLArg, expected_version: int | None
    ) -> list[Any]:
        if not isinstance(model, self.model):
            raise TypeError(
                f"{type(self).__name__} stores {self.model.__name__}, got {type(model).__name__}"
            )
        self._prepare(model)
        expected = _expected(expected_version)
        # The document carries the version it most likely gets (the one the caller expects or
        # last saw, plus one) so that the script writes it with one command; on a wrong guess
        # the script sets the right version itself. The model changes only once it is saved.
        seen = model.version if expected_version is None else int(expected_version)
        guess = seen + 1 if isinstance(seen, int) else 1
        previous = model.version
        if type(guess) is int and 0 <= guess <= _MAX_VERSION:
            # A valid version: set without validate_assignment's round trip through pydantic
            # (twice per write); put back the same way below.
            model.__dict__["version"] = guess
        else:
            model.version = guess  # raises the model's own ValidationError
        try:
            doc = self._encode(model)
        finally:
            model.__dict__["version"] = previous
        return [mode, self._ttl_ms(ttl, partial=False), expected, doc, guess]

    async def save(
        self, model: M, *, ttl: TTLArg = DEFAULT, expected_version: int | None = None
    ) -> M:
        """Write the whole document and its TTL in one atomic step.

        Args:
            model: The record to store; its ``version`` is set to the stored version.
            ttl: Time to live (seconds or timedelta), ``None`` for no expiry; defaults to the
                repository's default.
            expected_version: When given, the write fails unless the stored version equals it
                (0 means "must not exist yet").

        Returns:
            The same model, with ``version`` updated.

        Retrying after an OutcomeUnknownError: a save without ``expected_version`` is
        naturally idempotent (the same document again; only ``version`` moves on). With
        ``expected_version`` the retry raises ConflictError if the first attempt was applied:
        read the record to see whether it holds your write.

        Raises:
            ConflictError: The stored version differs from ``expected_version``.
            CorruptRecordError: The key holds a non-document value (a legacy string).
            InvalidQueryError: A value can't be stored faithfully (see README "Limits and
                rules"); nothing was written.
            OutcomeUnknownError: No reply in time: the write may have been applied.
        """
        key = self.key(model.id)
        args = self._write_args(model, "save", ttl, expected_version)
        with translate_errors(f"saving {key}"):
            reply = await self._write(keys=[key], args=args, what=f"saving {key}")
        _set_version(model, self._check_reply(key, reply, expected_version))
        return model

    async def insert(self, model: M, *, ttl: TTLArg = DEFAULT) -> M:
        """Like :meth:`save`, but only when no record with this id exists.

        A retry after an OutcomeUnknownError raises ConflictError if the first attempt was
        applied.

        Raises:
            ConflictError: The record exists already.
            OutcomeUnknownError: No reply in time: the write may have been applied.
        """
        key = self.key(model.id)
        args = self._write_args(model, "insert", ttl, None)
        with translate_errors(f"inserting {key}"):
            reply = await self._write(keys=[key], args=args, what=f"inserting {key}")
        _set_version(model, self._check_reply(key, reply, None))
        return model

    async def save_many(self, models: Iterable[M], *, ttl: TTLArg = DEFAULT) -> list[M]:
        """Save many records, one pipeline round trip per batch of :data:`BATCH_SIZE`.

        Each record is written atomically with its TTL; the batch as a whole is not a
        transaction. Batches are sent one after the other, in order; while one is in flight the
        next one is serialised, so that the client's work and the server's overlap. Raises the
        first error met once its batch is back; later batches are then not sent.
        """
        items = list(models)
        client = self._client
        in_flight: tuple[list[M], list[str], asyncio.Task[list[Any]]] | None = None
        try:
            for start in range(0, len(items), BATCH_SIZE):
                batch = items[start : start + BATCH_SIZE]
                keys: list[str] = []
                arglists: list[list[Any]] = []
                for count, model in enumerate(batch, 1):
                    keys.append(self.key(model.id))
                    arglists.append(self._write_args(model, "save", ttl, None))
                    if in_flight is not None and count % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let the batch in flight go out and come back
                if in_flight is not None:
                    sent, sent_keys, replies = in_flight
                    in_flight = None
                    self._saved(sent, sent_keys, await replies)
                task = asyncio.ensure_future(self._send_saves(client, keys, arglists))
                in_flight = (batch, keys, task)
                await asyncio.sleep(0)
            if in_flight is not None:
                sent, sent_keys, replies = in_flight
                in_flight = None
                self._saved(sent, sent_keys, await replies)
        except BaseException as exc:
            if in_flight is not None:
                if isinstance(exc, Exception):
                    # As if the batches had gone one by one: the one in flight completes, and
                    # its own errors come first.
                    self._saved(in_flight[0], in_flight[1], await in_flight[2])
                else:
                    in_flight[2].cancel()
            raise
        return items

    async def _send_saves(
        self, client: Client, keys: list[str], arglists: list[list[Any]]
    ) -> list[Any]:
        with translate_errors(f"saving {len(keys)} records", write=True):
            if batches_directly(client):
                calls = [
                    self._with_event([key], args) for key, args in zip(keys, arglists, strict=True)
                ]
                return await self._run_scripts(client, calls)
            async with client.pipeline(transaction=False) as pipe:
                for key, args in zip(keys, arglists, strict=True):
                    await self._write(keys=[key], args=args, client=pipe)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def _saved(self, batch: list[M], keys: list[str], replies: list[Any]) -> None:
        for model, key, reply in zip(batch, keys, replies, strict=False):
            if isinstance(reply, Exception):
                with translate_errors(f"saving {key}"):
                    raise reply
            _set_version(model, self._check_reply(key, reply, None))

    # ------------------------------------------------------------------ reads

    async def _fetch(self, key: str) -> bytes | None:
        client = self._client
        with translate_errors(f"reading {key}"):
            try:
                raw: bytes | None = await execute_read(client, "JSON.GET", key)
            except redis_exc.ResponseError as exc:
                ktype = as_str(await client.type(key))
                if ktype not in ("ReJSON-RL", "none"):
                    raise self._corrupt_type(key, ktype) from exc
                raise
        return raw

    async def get_or_none(self, id: str) -> M | None:
        """The record ``id``, or None when it does not exist.

        Raises:
            CorruptRecordError: The key holds something that is not a valid document.
        """
        return await self._read_one(self.key(id))

    async def get(self, id: str) -> M:
        """The record ``id``.

        Raises:
            NotFoundError: It does not exist (never written, deleted, or expired).
            CorruptRecordError: The key holds something that is not a valid document.
        """
        key = self.key(id)
        # Not through get_or_none: that is a second instrumented call (observability.py).
        model = await self._read_one(key)
        if model is None:
            raise NotFoundError(f"{key} does not exist", key=key)
        return model

    async def _read_one(self, key: str) -> M | None:
        raw = await self._fetch(key)
        if raw is None:
            return None
        model = self._decode(key, raw)
        await self._after_read([key])
        return model

    async def _after_read(self, keys: Sequence[str]) -> None:
        """Hook run after a successful read (sessions may restart the TTL)."""

    async def get_many(
        self, ids: Iterable[str], *, on_corrupt: OnCorrupt = "raise"
    ) -> list[M | None]:
        """The records ``ids`` in order, None for each missing one; one round trip per batch.

        Args:
            ids: The records to read.
            on_corrupt: A key holding something that is not a valid document: ``"raise"``
                (default) a CorruptRecordError naming it, or ``"skip"``: None in its place, a
                warning logged and :attr:`corrupt_skipped` counted.

        Raises:
            CorruptRecordError: One of the keys holds something that is not a valid document
                (unless ``on_corrupt="skip"``).
        """
        skip = self._on_corrupt(on_corrupt)
        keys = [self.key(i) for i in ids]
        client = self._client
        out: list[M | None] = []
        for start in range(0, len(keys), BATCH_SIZE):
            batch = keys[start : start + BATCH_SIZE]
            with translate_errors(f"reading {len(batch)} records"):
                if batches_directly(client):
                    commands = [("JSON.GET", key) for key in batch]
                    replies = await execute_many(client, commands, write=False)
                else:
                    async with client.pipeline(transaction=False) as pipe:
                        for key in batch:
                            pipe.execute_command("JSON.GET", key)
                        replies = await pipe.execute(raise_on_error=False)
            found: list[str] = []
            corrupt: dict[int, CorruptRecordError] = {}
            for i, (key, reply) in enumerate(zip(batch, replies, strict=False)):
                if not isinstance(reply, Exception):
                    continue
                try:
                    if isinstance(reply, redis_exc.ResponseError):
                        await self._fetch(key)  # raises CorruptRecordError with the key's type
                    with translate_errors(f"reading {key}"):
                        raise reply
                except CorruptRecordError as exc:
                    if not skip:
                        raise
                    corrupt[i] = exc
            with collector_paused(self.pause_gc_in_batches and len(batch) > 1):
                for i, (key, reply) in enumerate(zip(batch, replies, strict=False)):
                    try:
                        if i in corrupt:
                            raise corrupt[i]
                        if reply is None:
                            out.append(None)
                        else:
                            out.append(self._decode(key, reply))
                            found.append(key)
                    except CorruptRecordError as exc:
                        if not skip:
                            raise
                        self._skipped(exc, "get_many")
                        out.append(None)
            if found:
                await self._after_read(found)
        return out

    async def exists(self, id: str) -> bool:
        """True when record ``id`` exists."""
        key = self.key(id)
        with translate_errors(f"checking {key}"):
            return bool(await self._client.exists(key))

    async def exists_many(self, ids: Sequence[str]) -> list[bool]:
        """Whether each of ``ids`` exists, in one pipelined round trip (one flag per id)."""
        return [bool(reply) for reply in await self._per_key("exists", ids, "checking")]

    async def _per_key(self, command: str, ids: Sequence[str], what: str) -> list[Any]:
        """One ``command`` per id's key, pipelined in one round trip; the replies in order."""
        if not ids:
            return []
        keys = [self.key(i) for i in ids]
        with translate_errors(f"{what} {len(keys)} keys"):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    getattr(pipe, command)(key)
                return list(await pipe.execute())

    async def ttls(self, ids: Sequence[str]) -> list[timedelta | None]:
        """The remaining time to live of each of ``ids``, in one pipelined round trip.

        Returns:
            One entry per id: the time left, None for a record with no expiry, and
            ``timedelta(0)`` for one that does not exist (expired or deleted).
        """
        out: list[timedelta | None] = []
        for reply in await self._per_key("pttl", ids, "reading the TTL of"):
            ms = int(reply)
            out.append(None if ms == -1 else timedelta(0) if ms < 0 else timedelta(milliseconds=ms))
        return out

    async def delete_where(self, *, dry_run: bool = False, **filters: Any) -> list[str]:
        """Delete the records matching ``filters`` (at least one), and return their ids.

        The matching ids are collected first (through :meth:`ids`) and exactly those are
        deleted; with ``dry_run`` nothing is deleted.

        Raises:
            InvalidQueryError: No filter was given (this never deletes everything).
        """
        if not filters:
            raise InvalidQueryError("delete_where needs at least one filter")
        targets = await self.ids(**filters)
        if not dry_run and targets:
            await self.delete_many(targets)
        return targets

    async def ttl(self, id: str) -> timedelta | None:
        """The remaining time to live of ``id``, or None when it never expires.

        Raises:
            NotFoundError: It does not exist.
        """
        key = self.key(id)
        with translate_errors(f"reading the TTL of {key}"):
            ms = int(await self._client.pttl(key))
        if ms == -2:
            raise NotFoundError(f"{key} does not exist", key=key)
        if ms == -1:
            return None
        return timedelta(milliseconds=ms)

    # ------------------------------------------------------------------ partial writes

    def _adapter(self, field: str) -> TypeAdapter[Any]:
        adapter = self._adapters.get(field)
        if adapter is None:
            # The declared annotation, with its constraints (int64 bounds, finite floats):
            # FieldInfo.rebuild_annotation() drops those of a top-level Annotated type.
            hints = typing.get_type_hints(self.model, include_extras=True)
            annotation = hints.get(field) or self.model.model_fields[field].rebuild_annotation()
            adapter = TypeAdapter(annotation)
            self._adapters[field] = adapter
        return adapter

    def _field_json(self, field: str, value: Any) -> str:
        if field in _PROTECTED_FIELDS or field not in self.model.model_fields:
            known = sorted(set(self.model.model_fields) - _PROTECTED_FIELDS)
            raise InvalidQueryError(
                f"{self.model.__name__} has no updatable field {field!r}; "
                f"updatable fields: {', '.join(known)}"
            )
        adapter = self._adapter(field)
        try:
            validated = adapter.validate_python(value)
        except ValidationError as exc:
            msg = "; ".join(e["msg"] for e in exc.errors()[:3])
            raise InvalidQueryError(f"invalid value for {field}: {msg} (got {value!r})") from exc
        if field in self.model.FREE_FORM:
            check_free_form(validated, f"field {field}", at_depth=1)
        text = encode_json(lambda: adapter.dump_json(validated).decode(), f"field {field}")
        return check_nesting(text, f"field {field}", at_depth=1)

    def _stored_field_json(self, id: str, field: str, value: Any) -> str:
        """``_field_json``, sealed when the field is encrypted (flywheel_state.crypto)."""
        text = self._field_json(field, value)
        if self._codec is None:
            check_plain_value(self.model.KIND, field, value)
        elif field in self._codec.fields.names:
            return self._codec.seal_value(self.key(id), field, text)
        return text

    def _seal_entry(self, id: str, field: str, text: str) -> str:
        """A list element's JSON as stored (sealed when ``field`` is encrypted)."""
        if self._codec is None or field not in self._codec.fields.entries:
            return text
        return self._codec.seal_entry(self.key(id), field, text)

    async def _patch(
        self,
        id: str,
        ops: Sequence[tuple[str, str, Any]],
        *,
        ttl: TTLArg,
        expected_version: int | None,
        event: str = "updated",
    ) -> int:
        key = self.key(id)
        args: list[Any] = [
            "patch",
            self._ttl_ms(ttl, partial=True),
            _expected(expected_version),
            len(ops),
        ]
        touched = Counter(path for _, path, _ in ops)
        for op, path, value in ops:
            if (
                op == "set"
                and isinstance(value, str)
                and value[:1] in _MERGEABLE_START
                and touched[path] == 1
            ):
                member = _MEMBER_PATH.fullmatch(path)
                if member is not None:
                    args.extend(("merge", member.group(1), value))
                    continue
            args.extend((op, path, value))
        fields: list[str] = []
        if self._events is not None:
            for _, path, _ in ops:
                name = path[2:].split(".", 1)[0].split("[", 1)[0]
                if name not in fields:
                    fields.append(name)
        with translate_errors(f"updating {key}"):
            reply = await self._write(
                keys=[key], args=args, what=f"updating {key}", event=event, fields=fields
            )
        return self._check_reply(key, reply, expected_version)

    def _stamp_ops(self, now: datetime) -> list[tuple[str, str, Any]]:
        """Extra path writes every partial write makes (sessions stamp ``updated_at``)."""
        return []

    async def update(
        self,
        id: str,
        /,
        *,
        ttl: TTLArg = DEFAULT,
        expected_version: int | None = None,
        **fields: Any,
    ) -> int:
        """Change some fields of ``id``, writing only their JSON paths.

        Values are validated against the model's field types first. The key is never
        recreated: a record that expired or was deleted gives NotFoundError.

        Args:
            id: The record to change.
            ttl: For sliding repositories (sessions) the TTL restarts (default); otherwise the
                remaining TTL is kept unless ``ttl`` is given.
            expected_version: Fail with ConflictError unless the stored version equals it.
            **fields: Field names and new values.

        Returns:
            The new version of the record.

        Naturally idempotent: setting the same fields again after an OutcomeUnknownError
        leaves the same values (``version`` and ``updated_at`` move on). With
        ``expected_version`` a retry raises ConflictError if the first attempt was applied.

        Raises:
            NotFoundError, ConflictError, InvalidQueryError (unknown field or bad value),
            OutcomeUnknownError (no reply in time: the write may have been applied).
        """
        if not fields:
            raise InvalidQueryError("update() needs at least one field to change")
        ops: list[tuple[str, str, Any]] = [
            ("set", f"$.{name}", self._stored_field_json(id, name, value))
            for name, value in fields.items()
        ]
        stamped = {path for _, path, _ in ops}
        ops.extend(op for op in self._stamp_ops(utcnow()) if op[1] not in stamped)
        return await self._patch(id, ops, ttl=ttl, expected_version=expected_version)

    async def touch(self, id: str, *, ttl: TTLArg = DEFAULT) -> int:
        """Mark ``id`` as active now and restart its TTL (never recreates a missing key).

        Naturally idempotent: retrying after an OutcomeUnknownError is safe.

        Returns:
            The new version of the record.

        Raises:
            NotFoundError: The record does not exist.
            OutcomeUnknownError: No reply in time: the write may have been applied.
        """
        ops = self._touch_ops(utcnow())
        if isinstance(ttl, _Default):
            ttl = self.default_ttl
        return await self._patch(id, ops, ttl=ttl, expected_version=None, event="touched")

    def _touch_ops(self, now: datetime) -> list[tuple[str, str, Any]]:
        return self._stamp_ops(now)

    # ------------------------------------------------------------------ deletes

    async def delete(self, id: str) -> bool:
        """Delete ``id``. Returns True if it existed.

        Naturally idempotent: after an OutcomeUnknownError, retrying is safe (it then returns
        False if the first attempt had deleted the record).
        """
        key = self.key(id)
        with translate_errors(f"deleting {key}"):
            if self._events is not None:
                return bool(await self._events.delete(self._client, key, self.model.KIND, id))
            return bool(await self._delete_keys([key], f"deleting {key}"))

    async def delete_many(self, ids: Iterable[str]) -> int:
        """Delete many records; returns how many existed."""
        keys = [self.key(i) for i in ids]
        deleted = 0
        for start in range(0, len(keys), BATCH_SIZE):
            batch = keys[start : start + BATCH_SIZE]
            if batch and self._events is not None:
                deleted += await self._delete_with_events(batch)
            elif batch:
                what = f"deleting {len(batch)} records"
                with translate_errors(what):
                    deleted += await self._delete_keys(batch, what)
        return deleted

    async def _delete_with_events(self, keys: list[str]) -> int:
        assert self._events is not None
        with translate_errors(f"deleting {len(keys)} records"):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    id = key[len(self._prefix) :]
                    await self._events.delete(pipe, key, self.model.KIND, id)
                replies = await pipe.execute()
        return sum(int(r) for r in replies)
