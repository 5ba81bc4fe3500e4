"""Private helpers around the redis.asyncio client: the client type and error translation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_exc

from flywheel_state.errors import FlywheelStateError, StoreUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    Client = Redis[bytes]
    Pipe = Pipeline[bytes]
else:
    Client = Any
    Pipe = Any

__all__ = ["Client", "Pipe", "as_str", "translate_errors"]


def _convert(exc: Exception, what: str) -> FlywheelStateError:
    if isinstance(
        exc,
        (
            redis_exc.ConnectionError,
            redis_exc.TimeoutError,
            OSError,
            redis_exc.RedisClusterException,  # no reachable node, no slot coverage
        ),
    ):
        return StoreUnavailableError(f"Redis is unavailable while {what}: {exc}")
    return FlywheelStateError(f"Redis error while {what}: {exc}")


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Convert redis-py errors raised inside the block into flywheel-state errors."""
    try:
        yield
    except FlywheelStateError:
        raise
    except (redis_exc.RedisError, redis_exc.RedisClusterException, OSError) as exc:
        raise _convert(exc, what) from exc


def as_str(value: Any) -> str:
    """Decode a reply element (bytes or str) to str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
