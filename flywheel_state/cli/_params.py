"""Click parameter types of the admin commands: durations and points in time."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # click >= 8.2 makes ParamType generic; older releases can't subscript it
    _DurationBase = click.ParamType[timedelta, Any]
    _PointInTimeBase = click.ParamType[datetime, Any]
else:
    _DurationBase = _PointInTimeBase = click.ParamType

__all__ = ["DURATION", "POINT_IN_TIME", "DurationType", "PointInTimeType", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


def parse_duration(text: str) -> timedelta:
    """Parse ``45s``, ``30m``, ``2h``, ``7d``, ``1w`` or a combination such as ``1h30m``.

    Raises:
        ValueError: ``text`` is not such a duration, or it is zero.
    """
    compact = text.strip().lower().replace(" ", "")
    if not _WHOLE.fullmatch(compact):
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit (s, m, h, d, w), "
            "e.g. 45s, 30m, 2h, 7d or 1h30m"
        )
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return timedelta(seconds=seconds)


def _parse_datetime(text: str) -> datetime:
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    value = datetime.fromisoformat(raw)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class DurationType(_DurationBase):
    """A duration (``30m``, ``2h``, ``7d``) as a timedelta."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class PointInTimeType(_PointInTimeBase):
    """A point in time: a duration back from now (``2h`` = two hours ago) or an ISO datetime.

    ISO datetimes without an offset are taken as UTC. The value is a UTC-aware datetime.
    """

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        text = str(value)
        try:
            return datetime.now(timezone.utc) - parse_duration(text)
        except ValueError:
            pass
        try:
            return _parse_datetime(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither a duration back from now (45s, 30m, 2h, 7d) nor an ISO "
                "datetime (2025-11-18T10:00:00Z)",
                param,
                ctx,
            )


DURATION = DurationType()
"""Shared instance of :class:`DurationType`."""

POINT_IN_TIME = PointInTimeType()
"""Shared instance of :class:`PointInTimeType`."""
