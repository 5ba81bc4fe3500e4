"""Field types shared by the models: ids and UTC datetimes stored as epoch seconds."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

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


def validate_id(value: object, *, what: str = "id") -> str:
    """Check that ``value`` can be used as a record id, and return it.

    An id is a non-empty string of at most 256 characters with no whitespace, no control
    characters and no glob characters (``* ? [ ]``), so it is safe inside a key and a pattern.

    Raises:
        InvalidIdError: The id is unusable; the message says why.
    """
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


def _to_epoch(value: datetime) -> float:
    return as_utc(value).timestamp()


def _no_control_chars(value: str) -> str:
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
    BeforeValidator(_parse_legacy_datetime),
    AfterValidator(as_utc),
    PlainSerializer(_to_epoch, return_type=float, when_used="json"),
]
"""A UTC-aware datetime, stored as epoch seconds (a float) so RediSearch can index it NUMERIC."""
