"""Field types shared by the models: ids and UTC datetimes stored as epoch seconds."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator, PlainSerializer, ValidatorFunctionWrapHandler, WrapValidator

from flywheel_state.errors import InvalidIdError

__all__ = [
    "MAX_ID_LENGTH",
    "Id",
    "TagStr",
    "UtcDatetime",
    "as_utc",
    "utcnow",
    "validate_id",
]

MAX_ID_LENGTH = 256
_GLOB_CHARS = re.compile(r"[*?\[\]]")
# Printable ASCII but space, * ? [ ]: ids made only of these pass every check below.
_PLAIN_ID = re.compile(rf"[!-)+->@-Z\\^-~]{{1,{MAX_ID_LENGTH}}}")


def validate_id(value: object, *, what: str = "id") -> str:
    """Check that ``value`` can be used as a record id, and return it.

    An id is a non-empty string of at most 256 characters with no whitespace, no control
    characters and no glob characters (``* ? [ ]``), so it is safe inside a key and a pattern.

    Raises:
        InvalidIdError: The id is unusable; the message says why.
    """
    if type(value) is str and _PLAIN_ID.fullmatch(value):
        return value  # the common case, without the per-character checks
    if not isinstance(value, str):
        raise InvalidIdError(f"{what} must be a string, got {type(value).__name__}: {value!r}")
    if value == "":
        raise InvalidIdError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(
            f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    for ch in value:
        if ch.isspace():
            raise InvalidIdError(f"{what} {value!r} contains whitespace")
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise InvalidIdError(f"{what} {value!r} contains a control character {ch!r}")
    if _GLOB_CHARS.search(value):
        raise InvalidIdError(f"{what} {value!r} contains a glob character (one of * ? [ ])")
    return value


def utcnow() -> datetime:
    """The current time, UTC-aware."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as a UTC-aware datetime; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _parse_legacy_datetime(value: object) -> object:
    # str(datetime) has a space where isoformat has a "T"; both are accepted.
    if isinstance(value, str) and len(value) > 10 and value[10] == " ":
        return value[:10] + "T" + value[11:]
    return value


def _validate_utc(value: object, handler: ValidatorFunctionWrapHandler) -> datetime:
    # Stored datetimes are epoch seconds: convert them directly, without pydantic's parsing and
    # two Python callbacks per value. The result is the one pydantic gives (seconds when within
    # +-2e10, as pydantic reads them) except on exact half-microsecond ties, where pydantic
    # rounds up and fromtimestamp to even: those (x * 128 an odd integer) take the full path.
    if type(value) is float or type(value) is int:
        if -2e10 <= value <= 2e10:
            scaled = value * 128.0
            if not (scaled.is_integer() and scaled % 2 == 1):
                return datetime.fromtimestamp(value, timezone.utc)
        else:
            # Beyond +-2e10 pydantic reads a number as milliseconds; stored values are always
            # seconds, so a date after 2603 (say 9999-12-31) must not come back as 1978.
            try:
                return datetime.fromtimestamp(value, timezone.utc)
            except (OverflowError, OSError, ValueError) as exc:
                raise ValueError(f"{value!r} is not a datetime in epoch seconds") from exc
    return as_utc(handler(_parse_legacy_datetime(value)))


def _to_epoch(value: datetime) -> float:
    if value.tzinfo is timezone.utc:
        return value.timestamp()
    return as_utc(value).timestamp()


def _no_control_chars(value: str) -> str:
    if value.isprintable():  # printable text has no control character (category Cc)
        return value
    for ch in value:
        if unicodedata.category(ch) == "Cc":
            raise ValueError(f"must not contain control characters, got {value!r}")
    return value


Id = Annotated[str, AfterValidator(validate_id)]
"""A validated record id."""

TagStr = Annotated[str, AfterValidator(_no_control_chars)]
"""An indexed string (a TAG): any text but control characters, which the index reserves."""

UtcDatetime = Annotated[
    datetime,
    WrapValidator(_validate_utc),
    PlainSerializer(_to_epoch, return_type=float, when_used="json"),
]
"""A UTC-aware datetime, stored as epoch seconds (a float) so RediSearch can index it NUMERIC."""
