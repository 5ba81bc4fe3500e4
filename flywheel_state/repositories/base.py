"""The generic, async, TTL-aware repository every record kind is stored through."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.crypto import FieldCipher, RecordCodec, check_plain_value, has_envelope_marker
from flywheel_state.errors import (
    ConflictError,
    CorruptRecordError,
    FlywheelStateError,
    InvalidQueryError,
    NotFoundError,
)
from flywheel_state.models._base import Document
from flywheel_state.models._types import utcnow, validate_id
from flywheel_state.repositories._scripts import WRITE_SCRIPT
from flywheel_state.repositories.query import QueryMixin

__all__ = ["BATCH_SIZE", "DEFAULT", "Repository", "TTLArg", "check_nesting", "encode_json"]

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

    model: ClassVar[type[Document]]
    #: When True every write restarts the TTL (sessions); otherwise partial writes keep it.
    sliding: ClassVar[bool] = False

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
        self.namespace = namespace
        self.default_ttl = default_ttl
        self._prefix = f"{namespace}:{self.model.KIND}:"
        self._script = AsyncScript(None, WRITE_SCRIPT.encode())  # type: ignore[arg-type]
        self._adapters: dict[str, TypeAdapter[Any]] = {}
        # Encryption at rest (flywheel_state.crypto): None keeps the plain, zero-overhead path.
        self._codec = None if cipher is None else RecordCodec(cipher, namespace, self.model)
        self._detector = RecordCodec(None, namespace, self.model)

    @property
    def _client(self) -> Client:
        return self._client_source()

    async def _write(self, *, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return await self._script(keys=keys, args=args, client=client or self._client)

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
        if self._codec is not None:
            key = self.key(model.id)  # type: ignore[attr-defined]
            return self._codec.seal_document(
                model, encode_json, key=key, check=check_nesting, max_depth=_MAX_JSON_DEPTH
            )
        for name in self._detector.fields.whole:
            check_plain_value(self.model.KIND, name, getattr(model, name))
        return encode_json(model.model_dump_json, f"{self.model.__name__} {model.id!r}")  # type: ignore[attr-defined]

    def _decode(self, key: str, raw: bytes | str) -> M:
        if self._codec is not None:
            raw = self._codec.open_document(key, raw)
        elif has_envelope_marker(raw):
            raw = self._detector.open_document(key, raw)  # raises on encrypted content
        try:
            return self.model.model_validate_json(raw)  # type: ignore[return-value]
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
        if status == "ok":
            return number
        if status == "corrupt":
            raise self._corrupt_type(key, as_str(reply[2]))
        if status == "exists":
            raise ConflictError(f"{key} already exists", key=key)
        if status == "missing":
            raise NotFoundError(
                f"{key} does not exist (never written, deleted or expired)", key=key
            )
        if status == "conflict":
            raise ConflictError(
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

    def _prepare(self, model: Document) -> None:
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
        model.version = guess
        try:
            doc = self._encode(model)
        finally:
            model.version = previous
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

        Raises:
            ConflictError: The stored version differs from ``expected_version``.
            CorruptRecordError: The key holds a non-document value (a legacy string).
        """
        key = self.key(model.id)  # type: ignore[attr-defined]
        args = self._write_args(model, "save", ttl, expected_version)
        with translate_errors(f"saving {key}"):
            reply = await self._write(keys=[key], args=args)
        model.version = self._check_reply(key, reply, expected_version)
        return model

    async def insert(self, model: M, *, ttl: TTLArg = DEFAULT) -> M:
        """Like :meth:`save`, but only when no record with this id exists.

        Raises:
            ConflictError: The record exists already.
        """
        key = self.key(model.id)  # type: ignore[attr-defined]
        args = self._write_args(model, "insert", ttl, None)
        with translate_errors(f"inserting {key}"):
            reply = await self._write(keys=[key], args=args)
        model.version = self._check_reply(key, reply, None)
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
                    keys.append(self.key(model.id))  # type: ignore[attr-defined]
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
        with translate_errors(f"saving {len(keys)} records"):
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
            model.version = self._check_reply(key, reply, None)

    # ------------------------------------------------------------------ reads

    async def _fetch(self, key: str) -> bytes | None:
        with translate_errors(f"reading {key}"):
            try:
                raw: bytes | None = await self._client.execute_command("JSON.GET", key)
            except redis_exc.ResponseError as exc:
                ktype = as_str(await self._client.type(key))
                if ktype not in ("ReJSON-RL", "none"):
                    raise self._corrupt_type(key, ktype) from exc
                raise
        return raw

    async def get_or_none(self, id: str) -> M | None:
        """The record ``id``, or None when it does not exist.

        Raises:
            CorruptRecordError: The key holds something that is not a valid document.
        """
        key = self.key(id)
        raw = await self._fetch(key)
        if raw is None:
            return None
        model = self._decode(key, raw)
        await self._after_read([key])
        return model

    async def get(self, id: str) -> M:
        """The record ``id``.

        Raises:
            NotFoundError: It does not exist (never written, deleted, or expired).
            CorruptRecordError: The key holds something that is not a valid document.
        """
        model = await self.get_or_none(id)
        if model is None:
            raise NotFoundError(f"{self.key(id)} does not exist", key=self.key(id))
        return model

    async def _after_read(self, keys: Sequence[str]) -> None:
        """Hook run after a successful read (sessions may restart the TTL)."""

    async def get_many(self, ids: Iterable[str]) -> list[M | None]:
        """The records ``ids`` in order, None for each missing one; one round trip per batch.

        Raises:
            CorruptRecordError: One of the keys holds something that is not a valid document.
        """
        keys = [self.key(i) for i in ids]
        out: list[M | None] = []
        for start in range(0, len(keys), BATCH_SIZE):
            batch = keys[start : start + BATCH_SIZE]
            with translate_errors(f"reading {len(batch)} records"):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in batch:
                        pipe.execute_command("JSON.GET", key)
                    replies = await pipe.execute(raise_on_error=False)
            found: list[str] = []
            for key, reply in zip(batch, replies, strict=False):
                if isinstance(reply, redis_exc.ResponseError):
                    await self._fetch(key)  # raises CorruptRecordError with the key's type
                if isinstance(reply, Exception):
                    with translate_errors(f"reading {key}"):
                        raise reply
                if reply is None:
                    out.append(None)
                else:
                    out.append(self._decode(key, reply))
                    found.append(key)
            if found:
                await self._after_read(found)
        return out

    async def exists(self, id: str) -> bool:
        """True when record ``id`` exists."""
        key = self.key(id)
        with translate_errors(f"checking {key}"):
            return bool(await self._client.exists(key))

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
            adapter = TypeAdapter(self.model.model_fields[field].rebuild_annotation())
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
        with translate_errors(f"updating {key}"):
            reply = await self._write(keys=[key], args=args)
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

        Raises:
            NotFoundError, ConflictError, InvalidQueryError (unknown field or bad value).
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

        Returns:
            The new version of the record.

        Raises:
            NotFoundError: The record does not exist.
        """
        ops = self._touch_ops(utcnow())
        if isinstance(ttl, _Default):
            ttl = self.default_ttl
        return await self._patch(id, ops, ttl=ttl, expected_version=None)

    def _touch_ops(self, now: datetime) -> list[tuple[str, str, Any]]:
        return self._stamp_ops(now)

    # ------------------------------------------------------------------ deletes

    async def delete(self, id: str) -> bool:
        """Delete ``id``. Returns True if it existed."""
        key = self.key(id)
        with translate_errors(f"deleting {key}"):
            return bool(await self._client.delete(key))

    async def delete_many(self, ids: Iterable[str]) -> int:
        """Delete many records; returns how many existed."""
        keys = [self.key(i) for i in ids]
        deleted = 0
        for start in range(0, len(keys), BATCH_SIZE):
            batch = keys[start : start + BATCH_SIZE]
            if batch:
                with translate_errors(f"deleting {len(batch)} records"):
                    deleted += int(await self._client.delete(*batch))
        return deleted
