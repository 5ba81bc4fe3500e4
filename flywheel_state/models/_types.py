"""Field types shared by the models: ids and UTC datetimes stored as epoch seconds."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    AllowInfNan,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from flywheel_state.errors import InvalidIdError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DATETIME",
    "MAX_ID_LENGTH",
    "MICROSECOND_RANGE_SECONDS",
    "MIN_DATETIME",
    "FiniteFloat",
    "Id",
    "Int64",
    "TagStr",
    "UtcDatetime",
    "as_utc",
    "epoch_seconds",
    "stored_datetime",
    "utcnow",
    "validate_id",
]

INT64_MAX = 2**63 - 1
"""The largest integer stored exactly (RedisJSON keeps signed 64-bit integers)."""
INT64_MIN = -(2**63)
"""The smallest integer stored exactly."""

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


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)
# Stored datetimes are epoch seconds (doubles). Below 2**33 s from the epoch (1697-10-17 ..
# 2242-03-16) a double's step is under a microsecond: the double nearest to a whole number of
# microseconds rounds back to that microsecond, through JSON text and RedisJSON's parser.
# Farther out the step is ~1.9 us or more and a double can't hold every microsecond, so
# datetimes there are kept to the millisecond (truncated).
MICROSECOND_RANGE_SECONDS = float(2**33)
_US_LOW = _EPOCH - timedelta(seconds=MICROSECOND_RANGE_SECONDS)
_US_HIGH = _EPOCH + timedelta(seconds=MICROSECOND_RANGE_SECONDS)
MIN_DATETIME = datetime.min.replace(tzinfo=timezone.utc)
"""The earliest storable datetime (0001-01-01 00:00 UTC)."""
MAX_DATETIME = datetime.max.replace(microsecond=999000, tzinfo=timezone.utc)
"""The latest storable datetime (9999-12-31 23:59:59.999 UTC: millisecond precision there)."""


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as a UTC-aware datetime; a naive value is taken to be UTC already.

    Raises:
        ValueError: In UTC the value falls outside datetime's range (year 1 to 9999), e.g.
            ``datetime(1, 1, 1, tzinfo=+01:00)``.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError as exc:
        raise ValueError(
            f"{value.isoformat()} is outside the representable range once converted to UTC "
            f"({MIN_DATETIME.isoformat()} .. {MAX_DATETIME.isoformat()})"
        ) from exc


def epoch_seconds(value: datetime) -> float:
    """``value`` (naive means UTC) as epoch seconds, correctly rounded; never overflows.

    Works for every datetime, also those whose UTC form leaves datetime's range (a filter bound
    such as ``datetime(1, 1, 1, tzinfo=+01:00)``).
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) / _SECOND


def stored_datetime(value: datetime) -> datetime:
    """``value`` in UTC at the precision it is stored with (what a read gives back).

    Microseconds within +-2**33 s of the epoch (1697-10-17 to 2242-03-16), milliseconds
    (truncated) outside.

    Raises:
        ValueError: Outside the representable range in UTC.
    """
    value = as_utc(value)
    if _US_LOW < value < _US_HIGH:
        return value
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _from_epoch(value: float) -> datetime:
    if -MICROSECOND_RANGE_SECONDS < value < MICROSECOND_RANGE_SECONDS:
        return datetime.fromtimestamp(value, timezone.utc)
    try:
        return _EPOCH + timedelta(milliseconds=round(value * 1000))
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a datetime in epoch seconds") from exc


def _parse_legacy_datetime(value: object) -> object:
    # str(datetime) has a space where isoformat has a "T"; both are accepted.
    if isinstance(value, str) and len(value) > 10 and value[10] == " ":
        return value[:10] + "T" + value[11:]
    return value


def _validate_utc_slow(value: object, handler: ValidatorFunctionWrapHandler) -> datetime:
    # The reference path: pydantic's datetime parsing (every input form it takes), then UTC at
    # the stored precision. Stored datetimes are epoch seconds, converted directly, without
    # pydantic's parsing: the result is the one pydantic gives (seconds when within +-2e10, as
    # pydantic reads them) except on exact half-microsecond ties, where pydantic rounds up and
    # fromtimestamp to even: those (x * 128 an odd integer) take pydantic's path.
    if type(value) is float or type(value) is int:
        if -MICROSECOND_RANGE_SECONDS < value < MICROSECOND_RANGE_SECONDS:
            scaled = value * 128.0
            if not (scaled.is_integer() and scaled % 2 == 1):
                return datetime.fromtimestamp(value, timezone.utc)
        else:
            # Beyond +-2e10 pydantic reads a number as milliseconds; stored values are always
            # seconds, so a date after 2603 (say 9999-12-31) must not come back as 1978. Out
            # here datetimes are stored to the millisecond: round to it.
            return _from_epoch(value)
    return stored_datetime(handler(_parse_legacy_datetime(value)))


# The slow path as a validator of its own, for the inputs the fast path leaves to it.
_SLOW: TypeAdapter[datetime] = TypeAdapter(Annotated[datetime, WrapValidator(_validate_utc_slow)])
# The ISO forms of a UTC datetime fromisoformat reads exactly as pydantic does (what isoformat()
# and JSON encoders write): anything else, or anything fromisoformat refuses, goes the slow way.
_UTC_ISO = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]00:00)")


def _validate_utc(value: Any) -> datetime:
    """The whole validation of a UtcDatetime, as a plain validator (one Python call, no
    handler object per value: a document read validates one per history entry).

    The common forms are handled here: epoch seconds (the stored form), a datetime already in
    UTC, an ISO string in UTC. Every other input takes :func:`_validate_utc_slow` (pydantic's
    parsing); tests/test_datetime_fast_path.py checks that both give the same result.
    """
    kind = type(value)
    if kind is float or kind is int:
        # value * 128 % 2 == 1 exactly when value * 128 is an odd integer (a tie, see above).
        if -MICROSECOND_RANGE_SECONDS < value < MICROSECOND_RANGE_SECONDS and (
            value * 128.0 % 2.0 != 1.0
        ):
            return datetime.fromtimestamp(value, timezone.utc)
    elif kind is datetime:
        if value.tzinfo is timezone.utc and _US_LOW < value < _US_HIGH:
            return value  # type: ignore[no-any-return]
    elif kind is str and _UTC_ISO.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if _US_LOW < parsed < _US_HIGH:
                return parsed.astimezone(timezone.utc)
    try:
        return _SLOW.validate_python(value)
    except ValidationError as exc:
        # Reported as pydantic reports it, as the error of this field.
        error = exc.errors(include_url=False)[0]
        raise PydanticCustomError(error["type"], error["msg"]) from None


def _to_epoch(value: datetime) -> float:
    if value.tzinfo is not timezone.utc:
        value = as_utc(value)
    if _US_LOW < value < _US_HIGH:
        return value.timestamp()
    # Milliseconds, as stored_datetime keeps them: ms / 1000 as a double has at most 15 digits,
    # so every JSON parser reads it back exactly.
    return ((value - _EPOCH) // timedelta(milliseconds=1)) / 1000


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
    PlainValidator(_validate_utc, json_schema_input_type=datetime),
    PlainSerializer(_to_epoch, return_type=float, when_used="json"),
]
"""A UTC-aware datetime, stored as epoch seconds (a float) so RediSearch can index it NUMERIC."""

Int64 = Annotated[int, Ge(INT64_MIN), Le(INT64_MAX)]
"""An integer RedisJSON stores exactly: a signed 64-bit one."""

FiniteFloat = Annotated[float, AllowInfNan(False)]
"""A float that JSON can hold: NaN and infinities are refused (JSON has no such numbers)."""
