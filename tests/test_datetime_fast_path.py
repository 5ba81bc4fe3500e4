"""UtcDatetime's fast path (the common input forms, handled without pydantic's parsing) gives
exactly what its slow path (pydantic's parsing, then UTC at the stored precision) gives."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from flywheel_state.models._types import _SLOW, MICROSECOND_RANGE_SECONDS, UtcDatetime

FAST: TypeAdapter[datetime] = TypeAdapter(UtcDatetime)

offsets = st.sampled_from([timezone.utc, timezone(timedelta(0)), timezone(timedelta(hours=2))])
aware = st.datetimes(timezones=st.one_of(offsets, st.timezones()))
datetimes = st.one_of(st.datetimes(), aware)
seconds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-MICROSECOND_RANGE_SECONDS * 1.1, MICROSECOND_RANGE_SECONDS * 1.1),
    st.integers(-(2**40), 2**40),
    # Half-microsecond ties, which pydantic and fromtimestamp round differently.
    st.integers(-(2**40), 2**40).map(lambda n: n / 128),
)


def _iso(value: datetime, z: bool, space: bool, trim: bool) -> str:
    text = value.isoformat(sep=" " if space else "T")
    if trim and value.microsecond:
        text = text.replace(f".{value.microsecond:06d}", f".{value.microsecond:06d}".rstrip("0"))
    return text[:-6] + "Z" if z and text.endswith("+00:00") else text


iso_strings = st.builds(_iso, datetimes, st.booleans(), st.booleans(), st.booleans())
strings = st.one_of(
    iso_strings,
    st.from_regex(
        r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d{1,7})?(Z|[+-]\d\d:\d\d)?", fullmatch=True
    ),
    st.text(max_size=40),
)
inputs = st.one_of(datetimes, seconds, strings, st.none(), st.booleans())


def _outcome(validate: Any, value: Any) -> tuple[Any, ...]:
    try:
        result = validate(value)
    except ValidationError as exc:
        return ("error", [(e["type"], e["msg"]) for e in exc.errors()])
    assert type(result) is datetime
    return ("ok", result, result.tzinfo, result.isoformat())


@settings(max_examples=3000, deadline=None, database=None)
@given(inputs)
def test_python_inputs_give_what_the_slow_path_gives(value: Any) -> None:
    assert _outcome(FAST.validate_python, value) == _outcome(_SLOW.validate_python, value)


@settings(max_examples=1000, deadline=None, database=None)
@given(st.one_of(seconds, strings))
def test_json_inputs_give_what_the_slow_path_gives(value: Any) -> None:
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        return
    assert _outcome(FAST.validate_json, text) == _outcome(_SLOW.validate_json, text)


def test_common_forms_are_utc_at_stored_precision() -> None:
    moment = datetime(2026, 12, 3, 8, 30, 1, 250000, tzinfo=timezone.utc)
    for value in (moment, moment.timestamp(), moment.isoformat(), "2026-12-03T08:30:01.25Z"):
        result = FAST.validate_python(value)
        assert result == moment and result.tzinfo is timezone.utc
