"""The hot path's command packer sends exactly the bytes redis-py's packer would."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from flywheel_state._redis import _packed

arguments = st.one_of(
    st.text(),
    st.text(min_size=6000, max_size=9000),  # redis-py sends large values as separate buffers
    st.binary(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)


def _wire(pack: Any, *args: Any) -> bytes | str:
    try:
        packed = pack(*args)
    except Exception as exc:
        return type(exc).__name__
    return packed if isinstance(packed, bytes) else b"".join(packed)


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(arguments, min_size=1, max_size=12))
def test_packed_commands_are_what_redis_py_sends(args: list[Any]) -> None:
    conn = Connection()
    assert _wire(lambda *a: _packed(conn, a), *args) == _wire(conn.pack_command, *args)
