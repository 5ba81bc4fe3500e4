"""The errors flywheel-state raises.

Every error leaving the library derives from :class:`FlywheelStateError`. Errors from the Redis
driver are converted where they leave the library and chained (``raise ... from exc``), so callers
never need to import ``redis.exceptions``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ConfigError",
    "ConflictError",
    "CorruptRecordError",
    "EncryptionKeyError",
    "FlywheelStateError",
    "InvalidIdError",
    "InvalidQueryError",
    "MigrationError",
    "MigrationLockedError",
    "ModuleMissingError",
    "NotConnectedError",
    "NotFoundError",
    "OutcomeUnknownError",
    "SchemaOutOfDateError",
    "SearchUnavailableError",
    "StoreUnavailableError",
    "VersionMismatchError",
]


class FlywheelStateError(Exception):
    """The root of every error raised by flywheel-state."""


class ConfigError(FlywheelStateError, ValueError):
    """A setting has a value that can't be used (names the setting and the value it got)."""


class NotFoundError(FlywheelStateError, LookupError):
    """The record does not exist (never written, deleted, or expired)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ConflictError(FlywheelStateError):
    """A write lost a race: the stored version differs, or the record already exists."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        expected_version: int | None = None,
        actual_version: int | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.expected_version = expected_version
        self.actual_version = actual_version


class AlreadyExistsError(ConflictError):
    """``insert`` (or ``expected_version=0``) found the record already there."""


class VersionMismatchError(ConflictError):
    """The stored version differs from ``expected_version`` (another writer came first);
    ``expected_version`` and ``actual_version`` say which."""


class InvalidIdError(FlywheelStateError):
    """An id is empty, too long, or holds whitespace, control or glob characters.

    Raised by repository methods and by model construction alike (it is deliberately not a
    ``ValueError``, so pydantic lets it through instead of wrapping it).
    """


class InvalidQueryError(FlywheelStateError, ValueError):
    """A query has an unknown filter, a value of the wrong type, or an out-of-range bound."""


class CorruptRecordError(FlywheelStateError):
    """A key holds something that is not a valid document (a legacy string, invalid JSON...).

    Nothing is deleted or overwritten when this is raised: the value stays for inspection or for
    the ``0002_import_legacy_strings`` migration.
    """

    def __init__(self, message: str, *, key: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.reason = reason


class EncryptionKeyError(FlywheelStateError):
    """A record is encrypted with a key this store does not have (no cipher, or a key id not in
    its key ring). The record is left as it is; nothing encrypted is returned as content.

    Attributes:
        key: The Redis key of the record.
        key_id: The id of the key the value was encrypted with (never the key itself).
    """

    def __init__(self, message: str, *, key: str | None = None, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.key_id = key_id


class StoreUnavailableError(FlywheelStateError, ConnectionError):
    """Redis can't be reached, or a command timed out."""


class AuthenticationFailedError(StoreUnavailableError):
    """Redis refused the credentials (a wrong or missing REDIS_USERNAME / REDIS_PASSWORD)."""


class OutcomeUnknownError(StoreUnavailableError):
    """A write was sent but its outcome is unknown: it may or may not have been applied.

    Raised when a write command got no reply in time (a stalled server, a connection lost after
    sending), or when ``Settings.wait_replicas`` replicas did not acknowledge it in time (the
    primary has the write, its replicas may not). Retry only writes that are safe to repeat:
    see the docstrings of each write (``append_history`` takes an ``idempotency_key``).
    """


class ModuleMissingError(FlywheelStateError):
    """The server lacks JSON or search commands (RedisJSON / RediSearch, built in from Redis 8)."""


class SearchUnavailableError(ModuleMissingError):
    """A query (find/count/ids/iterate/stats) or a migration that needs the query engine, on a
    Store opened with ``search=False`` (a server or cluster with JSON but no distributed search).
    """


class NotConnectedError(FlywheelStateError, RuntimeError):
    """A Store's records were used before :meth:`Store.connect` (or ``async with``) checked the
    server and the schema."""


class SchemaOutOfDateError(FlywheelStateError):
    """The data's applied migration revision does not match the code's head revision."""


class MigrationError(FlywheelStateError):
    """A migration failed or can't be run as asked."""


class MigrationLockedError(MigrationError):
    """Another migration runner holds the namespace's lock."""

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder
