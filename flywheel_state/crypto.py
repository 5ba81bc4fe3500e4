"""Encryption at rest of stored content: AES-256-GCM per field, optional zstd compression.

A :class:`FieldCipher` holds a key ring (key id -> 32-byte key) and the id of the active key.
Given to a Store (``Store(..., cipher=FieldCipher(...))``, or ``Settings.from_env`` with
``FLYWHEEL_ENCRYPTION_KEYS``), it encrypts the content fields that are never indexed
(:data:`ENCRYPTED_FIELDS`); indexed fields stay in clear so queries keep working.

Each encrypted value is stored as one JSON string, an *envelope*::

    $fwenc:1:<key id>:<flags>:<base64 of nonce (12 bytes) || ciphertext || tag (16 bytes)>

``flags`` is ``j`` (the plaintext is the value's JSON text) or ``z`` (that text compressed with
zstd first). The associated data binds the ciphertext to its place: namespace, kind, record id,
field, key id and flags. A ciphertext copied to another record, another field or another
namespace, or given another key id or flag, fails to decrypt. History entries are encrypted one
by one (so ``append_history`` stays one JSON.ARRAPPEND) and bound to ``history[]`` rather than
to an array index, since trimming the history shifts indexes; each entry's random nonce is its
identity, and a history holding the same ciphertext twice is refused as tampered.

Reading never returns an envelope as content: without a cipher, or without the key id an
envelope names, reading the record raises :class:`~flywheel_state.errors.EncryptionKeyError`;
with a cipher, a field that should be encrypted but is stored in clear, or a ciphertext that
fails authentication, raises :class:`~flywheel_state.errors.CorruptRecordError` naming the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from pydantic_core import CoreConfig, SchemaValidator, core_schema, from_json, to_json

from flywheel_state.errors import ConfigError, CorruptRecordError, EncryptionKeyError

if TYPE_CHECKING:
    from flywheel_state.models._base import Document

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_COMPRESS_MIN_BYTES",
    "ENCRYPTED_FIELDS",
    "ENVELOPE_PREFIX",
    "ENV_ACTIVE",
    "ENV_COMPRESS",
    "ENV_KEYS",
    "EncryptedFields",
    "FieldCipher",
    "RecordCodec",
    "check_plain_value",
    "compression_available",
    "has_envelope_marker",
    "is_envelope",
    "json_depth",
]

ENVELOPE_PREFIX: Final = "$fwenc:1:"
"""How every encrypted value starts (version 1 of the envelope)."""

DEFAULT_COMPRESS_MIN_BYTES: Final = 4096
"""Whole-value fields whose JSON is at least this long are compressed before encryption."""

DEFAULT_CACHE_BYTES: Final = 16 * 1024 * 1024
"""Plaintext a cipher keeps of the values it sealed or opened, so that a session read again
(every turn of a conversation) does not decrypt its older history entries again."""

KEY_BYTES: Final = 32
ENV_KEYS: Final = "FLYWHEEL_ENCRYPTION_KEYS"
"""The environment variable of the key ring: ``k1:<base64 32 bytes>,k2:...``."""
ENV_ACTIVE: Final = "FLYWHEEL_ENCRYPTION_ACTIVE_KEY"
"""The environment variable naming the active key (needed when the ring has several)."""
ENV_COMPRESS: Final = "FLYWHEEL_COMPRESS_MIN_BYTES"
"""The environment variable of ``compress_min_bytes`` (a byte count, or ``off``)."""
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")
_MARK_BYTES = b'"' + ENVELOPE_PREFIX.encode()
_MARK_STR = '"' + ENVELOPE_PREFIX
_FLAG_JSON = "j"
_FLAG_ZSTD = "z"
_PREFIX_LEN = len(ENVELOPE_PREFIX)
# The associated data ends with the key id and then this, per flag.
_AAD_SUFFIX: Final = {_FLAG_JSON: b"\x00j", _FLAG_ZSTD: b"\x00z"}
# pydantic-core's base64 decoder (Rust): about twice as fast as binascii's. It refuses
# characters outside the alphabets and non-zero trailing bits, but also takes the URL-safe
# alphabet, a missing padding and (the text being JSON) escapes: _b64decode refuses those.
_B64: Final = SchemaValidator(core_schema.bytes_schema(), CoreConfig(val_json_bytes="base64"))
_ZSTD_LEVEL = 3


@dataclass(frozen=True)
class EncryptedFields:
    """Which fields of one kind of document are encrypted, and how.

    Attributes:
        whole: Fields encrypted as one value each.
        entries: List fields whose elements are encrypted one by one.
        compressible: Whole fields compressed first when large.
    """

    whole: tuple[str, ...]
    entries: tuple[str, ...] = ()
    compressible: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        """Every encrypted field."""
        return frozenset((*self.whole, *self.entries))


ENCRYPTED_FIELDS: Final[Mapping[str, EncryptedFields]] = {
    "session": EncryptedFields(
        whole=("context", "metadata"), entries=("history",), compressible=frozenset({"context"})
    ),
    "execution": EncryptedFields(whole=("result", "metadata"), compressible=frozenset({"result"})),
}
"""The content fields encrypted per kind (none of them is indexed: see the README)."""


# ---------------------------------------------------------------------- compression


class _Zstd:
    """zstd from the standard library (Python 3.14+) or the ``zstandard`` package."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.compress: Callable[[bytes], bytes]
        self.decompress: Callable[[bytes], bytes]
        try:
            from compression import zstd  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            import zstandard

            def compress(data: bytes) -> bytes:
                c = getattr(self._local, "c", None)
                if c is None:
                    c = self._local.c = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
                out: bytes = c.compress(data)
                return out

            def decompress(data: bytes) -> bytes:
                d = getattr(self._local, "d", None)
                if d is None:
                    d = self._local.d = zstandard.ZstdDecompressor()
                # A streaming decompressor: frames written without their content size (as
                # other zstd implementations may) decompress too.
                out: bytes = d.decompressobj().decompress(data)
                return out

            self.compress, self.decompress = compress, decompress
        else:
            self.compress = partial(zstd.compress, level=_ZSTD_LEVEL)
            self.decompress = zstd.decompress


_zstd: _Zstd | None = None


def _get_zstd() -> _Zstd:
    global _zstd
    if _zstd is None:
        _zstd = _Zstd()
    return _zstd


def compression_available() -> bool:
    """True when zstd is importable (Python 3.14+, or ``pip install 'flywheel-state[crypto]'``)."""
    try:
        _get_zstd()
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------- the cipher


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ConfigError(
            "encryption needs the 'cryptography' package: pip install 'flywheel-state[crypto]'"
        ) from exc
    return AESGCM


class FieldCipher:
    """A key ring for AES-256-GCM field encryption; new values use the active key.

    Keys are never shown: ``repr`` names the key ids only, and no error message holds key
    material. The raw key bytes are not kept on the object.

    Args:
        keys: Key id -> 32-byte key. Ids are 1-32 characters of letters, digits, ``_``, ``-``.
            Keep retired keys in the ring until a re-key (``flywheel-state crypto rekey``) has
            moved every record to the active one.
        active: The id of the key new values are encrypted with.
        compress_min_bytes: Whole-value fields (session ``context``, execution ``result``)
            whose JSON is at least this many bytes are compressed with zstd before encryption.
            None turns compression off. Needs zstd (Python 3.14+, or the ``crypto`` extra).
        cache_bytes: Bytes of plaintext kept in memory, keyed by the exact ciphertext and its
            place (so a changed or moved ciphertext is never served from it), for the values
            this cipher sealed or opened; oldest first out. 0 turns the cache off. The process
            holding the keys sees the plaintexts anyway: this adds no exposure at rest.

    Raises:
        ConfigError: Empty ring, a key of the wrong type or length, a bad key id, an active id
            not in the ring, or compression asked for without zstd.
    """

    def __init__(
        self,
        keys: Mapping[str, bytes],
        active: str,
        *,
        compress_min_bytes: int | None = DEFAULT_COMPRESS_MIN_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if not isinstance(keys, Mapping):
            raise ConfigError(
                f"keys must be a mapping of key id -> 32-byte key, got a {type(keys).__name__}"
            )
        if not keys:
            raise ConfigError("the encryption key ring is empty: give at least one key")
        aead = _aesgcm()
        ring: dict[str, Any] = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KEY_ID.match(kid):
                shown = repr(kid) if isinstance(kid, str) and len(kid) <= 40 else "<invalid>"
                raise ConfigError(
                    f"encryption key id {shown} must be 1-32 letters, digits, '_' or '-'"
                )
            if not isinstance(key, (bytes, bytearray, memoryview)):
                raise ConfigError(
                    f"encryption key {kid!r} must be {KEY_BYTES} bytes, got a {type(key).__name__}"
                )
            if len(key) != KEY_BYTES:
                raise ConfigError(
                    f"encryption key {kid!r} must be {KEY_BYTES} bytes (AES-256), got "
                    f"{len(key)} bytes"
                )
            ring[kid] = aead(bytes(key))
        if not isinstance(active, str) or active not in ring:
            shown = repr(active) if isinstance(active, str) and len(active) <= 40 else "<invalid>"
            raise ConfigError(
                f"active encryption key {shown} is not in the key ring "
                f"(ids: {', '.join(sorted(ring))})"
            )
        if compress_min_bytes is not None:
            if (
                isinstance(compress_min_bytes, bool)
                or not isinstance(compress_min_bytes, int)
                or compress_min_bytes < 1
            ):
                raise ConfigError(
                    "compress_min_bytes must be a positive integer or None, got "
                    f"{compress_min_bytes!r}"
                )
            if not compression_available():
                raise ConfigError(
                    "compression needs zstd: pip install 'flywheel-state[crypto]' (or Python "
                    "3.14+), or pass compress_min_bytes=None"
                )
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ConfigError(f"cache_bytes must be a non-negative integer, got {cache_bytes!r}")
        from cryptography.exceptions import InvalidTag

        self._invalid_tag = InvalidTag
        self.cache_bytes = cache_bytes
        # An OrderedDict: dropping the oldest entry is O(1) (a dict's first key is not, once
        # many have been popped from its front).
        # Looked up by place and the envelope's tail (its tag: what tells ciphertexts apart),
        # so a lookup hashes a few bytes, not the whole envelope; a hit is compared in full.
        self._cache: OrderedDict[tuple[bytes, str], tuple[str, bytes]] = OrderedDict()
        # Likewise by place and the plaintext's tail: (place, tail) -> (plaintext, envelope).
        self._reuse: dict[tuple[bytes, bytes], tuple[bytes, str]] = {}
        self._cache_size = 0
        self._cache_lock = threading.Lock()
        self._ring = ring
        self.active = active
        self.compress_min_bytes = compress_min_bytes
        # What every value sealed now shares: the active key, its associated data suffix and
        # its envelope head, per flag.
        self._active_aead = ring[active]
        self._active_aad = {f: active.encode() + suffix for f, suffix in _AAD_SUFFIX.items()}
        self._active_head = {f: f"{ENVELOPE_PREFIX}{active}:{f}:" for f in _AAD_SUFFIX}

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys in the ring, sorted."""
        return tuple(sorted(self._ring))

    def __repr__(self) -> str:
        return (
            f"FieldCipher(active={self.active!r}, key_ids={self.key_ids!r}, "
            f"compress_min_bytes={self.compress_min_bytes!r}, cache_bytes={self.cache_bytes!r})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("FieldCipher holds keys and can't be pickled")

    # ------------------------------------------------------------------ from the environment

    @classmethod
    def from_env_values(
        cls, keys: str, active: str | None, *, compress_min_bytes: str | None = None
    ) -> FieldCipher:
        """Build a cipher from the text of :data:`ENV_KEYS`, :data:`ENV_ACTIVE` and
        :data:`ENV_COMPRESS` (``Settings.from_env`` calls this).

        Args:
            keys: ``"k1:<base64 key>,k2:<base64 key>"`` (standard or URL-safe base64).
            active: The active key id; None when the ring has exactly one key.
            compress_min_bytes: A byte count, ``"off"``/``"none"``, or None for the default.

        Raises:
            ConfigError: Malformed text; the message names the variable and never holds key
                material.
        """
        ring: dict[str, bytes] = {}
        for n, item in enumerate((p.strip() for p in keys.split(",")), 1):
            if not item:
                continue
            kid, sep, b64 = item.partition(":")
            kid = kid.strip()
            if not sep or not kid:
                raise ConfigError(
                    f"{ENV_KEYS}: key #{n} must be written id:base64key (the key is not shown)"
                )
            try:
                text = b64.strip()
                key = base64.b64decode(
                    text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4),
                    validate=True,
                )
            except (binascii.Error, ValueError):
                raise ConfigError(
                    f"{ENV_KEYS}: key {kid!r} is not valid base64 (the key is not shown)"
                ) from None
            if kid in ring:
                raise ConfigError(f"{ENV_KEYS}: key id {kid!r} is given twice")
            ring[kid] = key
        if not ring:
            raise ConfigError(f"{ENV_KEYS}: the encryption key ring is empty")
        if active is None or not active.strip():
            if len(ring) != 1:
                raise ConfigError(
                    f"{ENV_ACTIVE} must name the active key when {ENV_KEYS} holds several"
                )
            active = next(iter(ring))
        active = active.strip()
        if active not in ring:
            shown = repr(active) if len(active) <= 40 else "<too long>"
            raise ConfigError(
                f"{ENV_ACTIVE}: key id {shown} is not in {ENV_KEYS} "
                f"(ids: {', '.join(sorted(ring))})"
            )
        threshold: int | None = DEFAULT_COMPRESS_MIN_BYTES
        if compress_min_bytes is not None and compress_min_bytes.strip():
            raw = compress_min_bytes.strip()
            if raw.lower() in ("off", "none", "0"):
                threshold = None
            else:
                try:
                    threshold = int(raw)
                except ValueError:
                    raise ConfigError(
                        f"{ENV_COMPRESS} must be a number of bytes or 'off', got {raw!r}"
                    ) from None
                if threshold < 1:
                    raise ConfigError(f"{ENV_COMPRESS} must be positive or 'off', got {raw!r}")
        try:
            return cls(ring, active, compress_min_bytes=threshold)
        except ConfigError as exc:  # a key of the wrong length, a bad id: about the ring
            raise ConfigError(f"{ENV_KEYS}: {exc}") from None

    # ------------------------------------------------------------------ sealing

    def seal(self, plaintext: bytes, place: bytes, *, compress: bool = False) -> str:
        """Encrypt ``plaintext`` (JSON text) for ``place`` with the active key; an envelope.

        Args:
            plaintext: The value's JSON text.
            place: The associated data prefix (namespace, kind, id, field).
            compress: Compress first when at least ``compress_min_bytes`` long (and smaller).
        """
        flags = _FLAG_JSON
        data = plaintext
        threshold = self.compress_min_bytes
        if compress and threshold is not None and len(plaintext) >= threshold:
            packed = _get_zstd().compress(plaintext)
            if len(packed) < len(plaintext):
                data, flags = packed, _FLAG_ZSTD
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._active_aead.encrypt(nonce, data, place + self._active_aad[flags])
        envelope = (
            self._active_head[flags] + binascii.b2a_base64(nonce + sealed, newline=False).decode()
        )
        # Not remembered: hashing a large new ciphertext costs a save more than it saves the
        # next read (which fills the cache).
        return envelope

    def open(self, envelope: str, place: bytes, *, key: str, field: str) -> bytes:
        """Decrypt an envelope sealed for ``place``; returns the value's JSON text.

        Args:
            envelope: The stored string.
            place: The associated data prefix it must have been sealed with.
            key: The Redis key (for error messages).
            field: The field path (for error messages).

        Raises:
            EncryptionKeyError: The envelope names a key id not in the ring.
            CorruptRecordError: Malformed, tampered with, or sealed for another place.
        """
        hit = self._cache.get((place, envelope[_TAIL_SLICE]))
        if hit is not None and hit[0] == envelope:
            return hit[1]
        try:
            kid, flags, payload = envelope[_PREFIX_LEN:].split(":", 2)
        except ValueError:
            raise _corrupt(key, field, "its envelope is malformed") from None
        aead = self._ring.get(kid)
        suffix = _AAD_SUFFIX.get(flags)
        if aead is None or suffix is None:
            if suffix is None or not _KEY_ID.match(kid):
                raise _corrupt(key, field, "its envelope is malformed")
            raise EncryptionKeyError(
                f"{key}: field {field} is encrypted with key id {kid!r}, which is not in the "
                f"key ring (ids: {', '.join(self.key_ids)})",
                key=key,
                key_id=kid,
            )
        try:
            raw = _b64decode(payload)
        except (binascii.Error, ValueError):
            raise _corrupt(key, field, "its ciphertext is not valid base64") from None
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise _corrupt(key, field, "its ciphertext is truncated")
        try:
            plain: bytes = aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], place + kid.encode() + suffix
            )
        except self._invalid_tag:
            raise _corrupt(
                key,
                field,
                "its ciphertext fails authentication (tampered with, or copied from another "
                "record or field)",
            ) from None
        if flags == _FLAG_ZSTD:
            try:
                plain = _get_zstd().decompress(plain)
            except ImportError:
                raise EncryptionKeyError(
                    f"{key}: field {field} is compressed with zstd, which is not installed: "
                    "pip install 'flywheel-state[crypto]'",
                    key=key,
                    key_id=kid,
                ) from None
            except Exception as exc:  # zstd's own error types differ between implementations
                raise _corrupt(key, field, f"it does not decompress ({exc})") from exc
        if self.cache_bytes:
            self._remember(place, [envelope], [plain])
        return plain

    def _remember(
        self,
        place: bytes,
        envelopes: Sequence[str],
        plains: Sequence[bytes],
        *,
        reusable: bool = False,
    ) -> None:
        """Keep plaintexts by (place, ciphertext), dropping the oldest beyond ``cache_bytes``.

        With ``reusable`` (list elements), also the ciphertext by (place, plaintext), so that a
        save of an unchanged history entry writes its ciphertext again instead of a new one.
        Both are found by tails (:data:`_TAIL`) and compared in full: two values sharing a
        tail only cost one of them its place in the cache.
        """
        limit = self.cache_bytes
        cache = self._cache
        reuse = self._reuse
        with self._cache_lock:
            for env, plain in zip(envelopes, plains, strict=True):
                size = len(plain) + len(env) + _CACHE_OVERHEAD
                slot = (place, env[_TAIL_SLICE])
                if size > limit // 4 or slot in cache:
                    continue
                cache[slot] = (env, plain)
                if reusable:
                    reuse[(place, plain[_TAIL_SLICE])] = (plain, env)
                self._cache_size += size
            while self._cache_size > limit and cache:
                (old_place, _), (old_env, old) = cache.popitem(last=False)
                reuse_slot = (old_place, old[_TAIL_SLICE])
                kept = reuse.get(reuse_slot)
                if kept is not None and kept[1] is old_env:
                    del reuse[reuse_slot]
                self._cache_size -= len(old) + len(old_env) + _CACHE_OVERHEAD

    def seal_all(self, plaintexts: Sequence[bytes], place: bytes) -> list[str]:
        """:meth:`seal` of each of ``plaintexts`` (uncompressed), for list elements.

        An element this cipher sealed or opened before at the same place, under the active
        key, with the same plaintext gets the same ciphertext again (a history entry unchanged
        since it was read is not re-encrypted on save); the others get new nonces. No two
        elements of one list share a ciphertext, even when their plaintexts are equal: a list
        holding the same ciphertext twice reads as tampered.
        """
        encrypt = self._active_aead.encrypt
        aad = place + self._active_aad[_FLAG_JSON]
        head = self._active_head[_FLAG_JSON]
        reuse = self._reuse.get
        out: list[str] = []
        new_envs: list[str] = []
        new_plains: list[bytes] = []
        nonces = b""
        # By identity: one plaintext has one entry in the reuse map, so a ciphertext given
        # twice is the same object twice.
        reused: set[int] = set()
        for plain in plaintexts:
            kept = reuse((place, plain[_TAIL_SLICE]))
            if (
                kept is not None
                and kept[0] == plain
                and id(env := kept[1]) not in reused
                and env.startswith(head)
            ):
                reused.add(id(env))
                out.append(env)
                continue
            if not nonces:
                nonces = os.urandom(_NONCE_BYTES * 64)  # one draw for many elements
            nonce, nonces = nonces[:_NONCE_BYTES], nonces[_NONCE_BYTES:]
            env = (
                head
                + binascii.b2a_base64(nonce + encrypt(nonce, plain, aad), newline=False).decode()
            )
            out.append(env)
            new_envs.append(env)
            new_plains.append(plain)
        if new_envs and self.cache_bytes:
            self._remember(place, new_envs, new_plains, reusable=True)
        return out

    def open_all(self, envelopes: Sequence[object], place: bytes) -> list[bytes] | None:
        """The plaintexts of list elements sealed for ``place``, on the fast path.

        Returns None when any element is not a well-formed, uncompressed envelope under a key
        of the ring that authenticates, or appears twice: the caller then opens them one by
        one with :meth:`open`, which raises the precise error.
        """
        ring = self._ring
        cached = self._cache.get
        out: list[bytes] = []
        append = out.append
        opened: list[tuple[str, bytes]] = []
        tails: list[str] = []
        head = ""
        skip = 0
        aead: Any = None
        aad = b""
        try:
            for env in envelopes:
                if type(env) is not str:
                    return None
                tail = env[_TAIL_SLICE]
                tails.append(tail)
                hit = cached((place, tail))
                if hit is not None and hit[0] == env:
                    append(hit[1])
                    continue
                if not head or not env.startswith(head):
                    # A new key id (or not an envelope: the prefix or the split fails).
                    if not env.startswith(ENVELOPE_PREFIX):
                        return None
                    kid, flags, _ = env[_PREFIX_LEN:].split(":", 2)
                    aead = ring.get(kid)
                    if aead is None or flags != _FLAG_JSON:
                        return None
                    head = f"{ENVELOPE_PREFIX}{kid}:{flags}:"
                    skip = len(head)
                    aad = place + kid.encode() + _AAD_SUFFIX[_FLAG_JSON]
                raw = _b64decode(env[skip:])
                plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
                append(plain)
                opened.append((env, plain))
        except (ValueError, TypeError, AttributeError, binascii.Error, self._invalid_tag):
            return None
        # The same ciphertext twice (then the same tail: base64 is canonical) is refused by
        # open(); distinct ones sharing a tail only take the slow path.
        if len(set(tails)) != len(out):
            return None
        if opened and self.cache_bytes:
            self._remember(place, [e for e, _ in opened], [p for _, p in opened], reusable=True)
        return out

    def key_id_of(self, envelope: str, *, key: str, field: str) -> str:
        """The key id an envelope was sealed with (without decrypting it)."""
        return _split(envelope, key=key, field=field)[0]


_CACHE_OVERHEAD = 200
"""Bytes a cache entry costs beyond its plaintext and ciphertext (tuple, dict slot, objects)."""
_TAIL = 24
"""Characters of an envelope (or bytes of a plaintext) the cache is looked up by: an envelope's
last 24 base64 characters hold its last 18 bytes, the 16-byte tag among them."""
_TAIL_SLICE: Final = slice(-_TAIL, None)


def _split(envelope: str, *, key: str, field: str) -> tuple[str, str, str]:
    parts = envelope[len(ENVELOPE_PREFIX) :].split(":", 2)
    if len(parts) != 3 or parts[1] not in (_FLAG_JSON, _FLAG_ZSTD) or not _KEY_ID.match(parts[0]):
        raise _corrupt(key, field, "its envelope is malformed")
    return parts[0], parts[1], parts[2]


def _b64decode(payload: str) -> bytes:
    """The bytes of canonical base64 ``payload`` (standard alphabet, padded, zero trailing bits).

    Any other spelling of the same bytes is refused (ValueError), so that one ciphertext has one
    representation: a history holding the same ciphertext twice, spelt two ways, is caught as
    the same ciphertext twice, and a cached plaintext is served for that spelling only.
    """
    if len(payload) % 4 or "-" in payload or "_" in payload or "\\" in payload or '"' in payload:
        raise ValueError("not canonical base64")
    raw: bytes = _B64.validate_json('"' + payload + '"')  # ValidationError is a ValueError
    return raw


def _corrupt(key: str, field: str, why: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"{key}: encrypted field {field} can't be read: {why}",
        key=key,
        reason=f"{field}: {why}",
    )


def is_envelope(value: object) -> bool:
    """True when ``value`` is an encrypted value as stored (an envelope string)."""
    return isinstance(value, str) and value.startswith(ENVELOPE_PREFIX)


def has_envelope_marker(raw: bytes | str) -> bool:
    """A fast test: may this stored JSON text hold an envelope? (False: it surely does not.)"""
    # One memchr for "$" first: most plain documents hold none, and it is several times
    # faster than searching for the whole marker. bytes.find, not ``in``: ``x in raw`` first
    # tries x as an int and raises (and formats) a TypeError inside, each time.
    if isinstance(raw, str):
        return "$" in raw and _MARK_STR in raw
    return raw.find(b"$") >= 0 and raw.find(_MARK_BYTES) >= 0


_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_NOT_BRACKETS_B = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(r"\{\}|\[\]")
_INNERMOST_B = re.compile(rb"\{\}|\[\]")


_OPEN_CURLY: Final = ord("{")
_OPEN_SQUARE: Final = ord("[")


def _brackets_at_most(text: bytes, limit: int) -> bool:
    """True when ``text`` holds at most ``limit`` opening brackets (``{`` and ``[``, in strings
    or not), so that it can't nest deeper than ``limit``.

    Found with ``bytes.find`` (memchr), stopping at ``limit + 1``: much cheaper than counting
    every byte, and a flat object costs three scans.
    """
    if len(text) <= 256:  # counting a short text costs less than one find call
        return text.count(_OPEN_CURLY) + text.count(_OPEN_SQUARE) <= limit
    seen = 0
    for bracket in (_OPEN_CURLY, _OPEN_SQUARE):
        at = text.find(bracket)
        while at >= 0:
            seen += 1
            if seen > limit:
                return False
            at = text.find(bracket, at + 1)
    return True


def json_depth(text: str | bytes) -> int:
    """How deeply valid JSON ``text`` nests (``{}``: 1), fast on large values.

    Strings are cut out with C-speed replaces and a split (escaped backslashes first, then
    escaped quotes, so every quote left delimits a string), then innermost pairs of brackets are
    removed until none is left: one pass per level, over the brackets only.
    """
    if isinstance(text, str):
        if text.count("{") + text.count("[") <= 1:
            return text.count("{") + text.count("[")
        outside = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[::2])
        skeleton = _NOT_BRACKETS.sub("", outside)
        depth = 0
        while skeleton:
            shorter = _INNERMOST.sub("", skeleton)
            if len(shorter) == len(skeleton):  # not valid JSON: the worst is assumed
                return depth + len(skeleton)
            skeleton = shorter
            depth += 1
        return depth
    if text.count(b"{") + text.count(b"[") <= 1:
        return text.count(b"{") + text.count(b"[")
    outside_b = b"".join(text.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    skeleton_b = _NOT_BRACKETS_B.sub(b"", outside_b)
    depth = 0
    while skeleton_b:
        shorter_b = _INNERMOST_B.sub(b"", skeleton_b)
        if len(shorter_b) == len(skeleton_b):  # not valid JSON: the worst is assumed
            return depth + len(skeleton_b)
        skeleton_b = shorter_b
        depth += 1
    return depth


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------- per repository


class RecordCodec:
    """Seals and opens the encrypted fields of one kind of document in one namespace.

    A repository with a cipher holds one; one without a cipher (``cipher=None``) only opens
    documents, to refuse returning encrypted content as if it were clear.

    Args:
        cipher: The key ring (None: no encryption; opening only detects envelopes).
        namespace: The store's namespace.
        model: The document class (its ``KIND`` selects :data:`ENCRYPTED_FIELDS`).
    """

    def __init__(self, cipher: FieldCipher | None, namespace: str, model: type[Document]) -> None:
        self.cipher = cipher
        self.namespace = namespace
        self.kind = model.KIND
        self.fields = ENCRYPTED_FIELDS[self.kind]
        self.prefix = f"{namespace}:{self.kind}:"
        self._model = model
        self._exclude = set(self.fields.names)
        self._adapters: dict[str, Any] = {}

    def place(self, id: str, field: str) -> bytes:
        """The associated data prefix of ``field`` of record ``id``."""
        return f"fwenc:1\x00{self.namespace}\x00{self.kind}\x00{id}\x00{field}\x00".encode()

    def _entry_field(self, field: str) -> str:
        return field + "[]"

    def _require(self) -> FieldCipher:
        if self.cipher is None:  # pragma: no cover - callers check
            raise ConfigError("no cipher configured")
        return self.cipher

    # ------------------------------------------------------------------ writing

    def seal_value(self, key: str, field: str, text: str | bytes) -> str:
        """The stored JSON (an envelope string) of ``field``'s JSON ``text`` in record ``key``."""
        cipher = self._require()
        id = key[len(self.prefix) :]
        data = text.encode() if isinstance(text, str) else text
        if field in self.fields.entries:
            items = json.loads(data)
            place = self.place(id, self._entry_field(field))
            envs = cipher.seal_all([_dumps(item).encode() for item in items], place)
            return "[" + ",".join('"' + env + '"' for env in envs) + "]"
        env = cipher.seal(data, self.place(id, field), compress=field in self.fields.compressible)
        return '"' + env + '"'

    def seal_entry(self, key: str, field: str, text: str) -> str:
        """The stored JSON of one list element (a history entry) given as JSON ``text``."""
        cipher = self._require()
        id = key[len(self.prefix) :]
        place = self.place(id, self._entry_field(field))
        # Always a new nonce: an appended entry equal to one already in the list must not get
        # that entry's ciphertext (the list would then hold it twice and read as tampered).
        return '"' + cipher.seal(text.encode(), place) + '"'

    def seal_document(
        self,
        model: Document,
        encode: Callable[[Callable[[], str], str], str],
        *,
        key: str,
        check: Callable[..., str] | None = None,
        max_depth: int = 0,
    ) -> str:
        """The whole document as stored: clear fields as the model dumps them, the rest sealed.

        Args:
            model: The document.
            encode: The repository's JSON encoder (``encode_json``), for its error handling.
            key: The Redis key it is stored at.
            check: ``check(text, what, at_depth=n)``, the repository's nesting check: a value
                is refused as it would be in clear (so that it reads back), not hidden by its
                envelope. Called only for values that may nest deeper than ``max_depth``
                (:func:`json_depth` is much faster on large values).
            max_depth: The deepest nesting a stored document may have (with ``check``).
        """
        cipher = self._require()
        # The id as the key holds it (what a read binds to), not as the model spells it.
        id = key[len(self.prefix) :]
        what = f"{type(model).__name__} {id!r}"
        # The serializers themselves: what model_dump_json / dump_json run, without their
        # Python wrappers (a fifth of a small value's cost).
        serializer = model.__pydantic_serializer__
        clear = encode(lambda: serializer.to_json(model, exclude=self._exclude).decode(), what)
        parts = [clear[:-1]]
        sep = "," if len(clear) > 2 else ""
        for name in self.fields.whole:
            adapter = self._adapter(name)
            value = getattr(model, name)
            try:
                data: bytes = adapter.serializer.to_json(value)  # sealed as it is written
            except (ValueError, TypeError, RecursionError):
                # Let the repository's encoder name the field and raise its typed error.
                encode(partial(self._dump_field, name, value), f"{what} {name}")
                raise
            # Brackets bound the depth from above: most values need no closer look.
            if (
                check is not None
                and not _brackets_at_most(data, max_depth - 1)
                and json_depth(data) + 1 > max_depth
            ):
                check(data.decode(), f"field {name}", at_depth=1)
            env = cipher.seal(data, self.place(id, name), compress=name in self.fields.compressible)
            parts.append(f'{sep}"{name}":"{env}"')
            sep = ","
        for name in self.fields.entries:
            place = self.place(id, self._entry_field(name))
            entries = getattr(model, name)
            texts: list[bytes] = []
            try:
                # The serializer itself (what model_dump_json runs, without its per-call
                # setup), looked up once per type rather than once per entry.
                cls: type | None = None
                to_json: Any = None
                for entry in entries:
                    if type(entry) is not cls:
                        cls = type(entry)
                        to_json = entry.__pydantic_serializer__.to_json
                    texts.append(to_json(entry))
            except (ValueError, TypeError, RecursionError):
                # Let the repository's encoder name the entry and raise its typed error.
                texts = [
                    encode(entry.model_dump_json, f"{what} {name} entry").encode()
                    for entry in entries
                ]
            if check is not None:
                for entry_text in texts:
                    # A flat entry (one object, no list: the usual turn) is told by two
                    # memchr scans and needs no closer look. (Byte values, not b"[": a
                    # bytes needle first fails as an int, which costs a formatted error.)
                    if (_OPEN_SQUARE in entry_text or _OPEN_CURLY in entry_text[1:]) and (
                        not _brackets_at_most(entry_text, max_depth - 2)
                        and json_depth(entry_text) + 2 > max_depth
                    ):
                        check(entry_text.decode(), f"{name} entry", at_depth=2)
            envs = cipher.seal_all(texts, place)
            body = '"' + '","'.join(envs) + '"' if envs else ""
            parts.append(f'{sep}"{name}":[{body}]')
            sep = ","
        parts.append("}")
        return "".join(parts)

    def _dump_field(self, name: str, value: Any) -> str:
        text: str = self._adapter(name).dump_json(value).decode()
        return text

    def _adapter(self, name: str) -> Any:
        adapter = self._adapters.get(name)
        if adapter is None:
            from pydantic import TypeAdapter

            adapter = TypeAdapter(self._model.model_fields[name].rebuild_annotation())
            self._adapters[name] = adapter
        return adapter

    # ------------------------------------------------------------------ reading

    def open_document(self, key: str, raw: bytes | str) -> bytes | str:
        """The stored document with its encrypted fields decrypted, as JSON text.

        Without a cipher, a document holding an envelope in an encrypted field raises
        EncryptionKeyError; one without is returned as it is.

        Raises:
            EncryptionKeyError: No cipher, or the key id of an envelope is not in the ring.
            CorruptRecordError: A field stored in clear though it must be encrypted, or a
                ciphertext that fails authentication.
        """
        try:
            # Keys only: caching values costs more than it saves (envelopes are never cached).
            data = from_json(raw, cache_strings="keys")
        except ValueError as exc:
            data = exc
        if type(data) is not dict:
            # Never leave an unparsed document to validation: its envelopes could pass as
            # content of a field typed Any.
            raise CorruptRecordError(
                f"{key} does not hold a JSON object", key=key, reason="not a JSON object"
            )
        if self.cipher is None:
            self._refuse_envelopes(key, data)
            return raw
        plains = self._open_fields(key, data, clear_ok=False)
        for name in plains:  # the parsed document is ours: drop what is spliced back below
            del data[name]
        text = to_json(data)
        parts = [text[:-1]]
        sep = b"," if len(text) > 2 else b""
        for name, plain in plains.items():
            parts += (sep, b'"', name.encode(), b'":')
            if isinstance(plain, list):
                parts += (b"[", b",".join(plain), b"]")
            else:
                parts.append(plain)
            sep = b","
        parts.append(b"}")
        return b"".join(parts)

    def _refuse_envelopes(self, key: str, data: dict[str, Any]) -> None:
        for name, value in self._encrypted_values(data):
            if is_envelope(value):
                kid = value[len(ENVELOPE_PREFIX) :].split(":", 1)[0]
                raise EncryptionKeyError(
                    f"{key}: field {name} is encrypted (key id {kid!r}) but this store has no "
                    "cipher: configure the key ring (FLYWHEEL_ENCRYPTION_KEYS) to read it",
                    key=key,
                    key_id=kid,
                )

    def _encrypted_values(self, data: dict[str, Any]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [(n, data[n]) for n in self.fields.whole if n in data]
        for name in self.fields.entries:
            items = data.get(name)
            if isinstance(items, list):
                out += [(f"{name}[{i}]", item) for i, item in enumerate(items)]
        return out

    def _open_fields(
        self, key: str, data: dict[str, Any], *, clear_ok: bool
    ) -> dict[str, bytes | list[bytes]]:
        """Decrypt every encrypted field present: name -> JSON text (a list for entries).

        With ``clear_ok``, a field in clear is returned as its JSON text; otherwise it is a
        CorruptRecordError.
        """
        cipher = self._require()
        id = key[len(self.prefix) :]
        out: dict[str, bytes | list[bytes]] = {}
        for name in self.fields.whole:
            if name not in data:
                continue
            value = data[name]
            if is_envelope(value):
                out[name] = cipher.open(value, self.place(id, name), key=key, field=name)
            elif clear_ok:
                out[name] = _dumps(value).encode()
            else:
                raise self._in_clear(key, name)
        for name in self.fields.entries:
            items = data.get(name)
            if not isinstance(items, list):
                if name in data and not clear_ok:
                    raise self._in_clear(key, name)
                continue
            place = self.place(id, self._entry_field(name))
            fast = cipher.open_all(items, place)
            if fast is not None:
                out[name] = fast
                continue
            opened: list[bytes] = []
            seen: set[str] = set()
            for i, item in enumerate(items):
                where = f"{name}[{i}]"
                if is_envelope(item):
                    if item in seen:
                        raise _corrupt(key, where, "the same ciphertext appears twice")
                    seen.add(item)
                    opened.append(cipher.open(item, place, key=key, field=where))
                elif clear_ok:
                    opened.append(_dumps(item).encode())
                else:
                    raise self._in_clear(key, where)
            out[name] = opened
        return out

    def _in_clear(self, key: str, field: str) -> CorruptRecordError:
        return CorruptRecordError(
            f"{key}: field {field} is stored in clear, but this store encrypts it (written "
            "before encryption was turned on, or by a writer without the key?). Run "
            "`flywheel-state crypto encrypt` to encrypt existing records.",
            key=key,
            reason=f"{field} stored in clear",
        )

    # ------------------------------------------------------------------ maintenance

    def reseal(self, key: str, data: dict[str, Any], mode: str) -> dict[str, Any] | None:
        """The document ``data`` with its encrypted fields rewritten; None when already so.

        Args:
            key: The Redis key (its id is part of the associated data).
            data: The stored document, parsed.
            mode: ``"encrypt"`` (seal fields in clear, keep envelopes), ``"rekey"`` (seal
                fields in clear, move envelopes of other keys to the active one) or
                ``"decrypt"`` (store every field in clear).

        Raises:
            EncryptionKeyError, CorruptRecordError: A ciphertext can't be opened.
        """
        cipher = self._require()
        id = key[len(self.prefix) :]
        changed = False
        out = dict(data)

        def wanted(value: Any, name: str, place: bytes, compress: bool) -> Any:
            nonlocal changed
            if is_envelope(value):
                if mode == "encrypt":
                    return value
                if mode == "rekey" and cipher.key_id_of(value, key=key, field=name) == (
                    cipher.active
                ):
                    return value
                plain = cipher.open(value, place, key=key, field=name)
                changed = True
                if mode == "decrypt":
                    return json.loads(plain)
                return cipher.seal(plain, place, compress=compress)
            if mode == "decrypt":
                return value
            changed = True
            return cipher.seal(_dumps(value).encode(), place, compress=compress)

        for name in self.fields.whole:
            if name in data:
                out[name] = wanted(
                    data[name], name, self.place(id, name), name in self.fields.compressible
                )
        for name in self.fields.entries:
            items = data.get(name)
            if isinstance(items, list):
                place = self.place(id, self._entry_field(name))
                out[name] = [
                    wanted(item, f"{name}[{i}]", place, False) for i, item in enumerate(items)
                ]
        return out if changed else None

    def status(self, key: str, data: dict[str, Any]) -> dict[str, int]:
        """Counts of this document's encrypted-field values: ``clear`` and per key id."""
        counts: dict[str, int] = {}
        for _, value in self._encrypted_values(data):
            if is_envelope(value):
                kid = value[len(ENVELOPE_PREFIX) :].split(":", 1)[0]
                counts[kid] = counts.get(kid, 0) + 1
            else:
                counts["clear"] = counts.get("clear", 0) + 1
        return counts


def check_plain_value(kind: str, field: str, value: Any) -> None:
    """Refuse a clear value that would read back as an envelope (stores without a cipher).

    Raises:
        InvalidQueryError: ``value`` is a string starting with :data:`ENVELOPE_PREFIX` in an
            encrypted field.
    """
    if is_envelope(value) and field in ENCRYPTED_FIELDS[kind].names:
        from flywheel_state.errors import InvalidQueryError

        raise InvalidQueryError(
            f"{field} can't be a string starting with {ENVELOPE_PREFIX!r}: that is how "
            "encrypted values are stored"
        )
