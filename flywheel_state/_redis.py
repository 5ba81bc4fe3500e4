"""Private helpers around the redis.asyncio client: the client type, error translation, the
call budget and writes whose outcome is known or said to be unknown.

The waiting budget (:class:`BudgetPool`): every call (one command, or one pipeline round trip)
finishes within ``Settings.command_timeout`` from its start, counting the wait for a pooled
connection, connecting, sending and the reply. The driver does not retry on its own
(``Retry(..., 0)``): a retry would re-send a write that may have been applied, and would make
callers wait several timeouts.
"""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from redis import exceptions as redis_exc

from flywheel_state._pool import FastBlockingConnectionPool
from flywheel_state.errors import (
    AuthenticationFailedError,
    FlywheelStateError,
    OutcomeUnknownError,
    StoreUnavailableError,
)

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as _timeout  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    Client = Redis[bytes]
    Pipe = Pipeline[bytes]
else:
    Client = Any
    Pipe = Any

__all__ = [
    "DRIVER_ERRORS",
    "BudgetPool",
    "Client",
    "Pipe",
    "as_str",
    "batches_directly",
    "call_budget",
    "execute_many",
    "execute_read",
    "execute_write",
    "outcome_unknown",
    "reraise",
    "translate_errors",
]

_UNAVAILABLE = (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError, asyncio.TimeoutError)


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _convert(exc: Exception, what: str, write: bool) -> FlywheelStateError:
    if isinstance(exc, redis_exc.AuthenticationError):
        return AuthenticationFailedError(
            f"Redis refused the credentials while {what}: check REDIS_USERNAME / "
            "REDIS_PASSWORD (or the user and password in REDIS_URL)"
        )
    if isinstance(exc, _UNAVAILABLE):
        if write:
            return outcome_unknown(what, exc)
        return StoreUnavailableError(f"Redis is unavailable while {what}: {_text(exc)}")
    if isinstance(exc, redis_exc.RedisClusterException):  # no reachable node, no slot coverage
        return StoreUnavailableError(f"Redis is unavailable while {what}: {_text(exc)}")
    return FlywheelStateError(f"Redis error while {what}: {exc}")


def outcome_unknown(what: str, exc: BaseException) -> OutcomeUnknownError:
    """The error for a write that was sent but got no reply."""
    return OutcomeUnknownError(
        f"no reply from Redis while {what} ({_text(exc)}): the write may have been applied. "
        "Retry only if repeating it is safe (see the method's docstring; append_history takes "
        "an idempotency_key for this)"
    )


DRIVER_ERRORS = (
    redis_exc.RedisError,
    redis_exc.RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)
"""What :func:`translate_errors` converts: errors of the driver and of the connection."""


class translate_errors:  # lower case: used like the function it replaced
    """Convert redis-py errors raised inside the block into flywheel-state errors.

    A class rather than a generator-based ``contextmanager``: entering and leaving it is on
    every call's path, and this costs a fraction of a generator's setup.

    Args:
        what: Says what was being done, for the message.
        write: The block sends writes through a pipeline, where a lost connection or a timeout
            can't tell whether they were applied: raise OutcomeUnknownError for those.
    """

    __slots__ = ("what", "write")

    def __init__(self, what: str, *, write: bool = False) -> None:
        self.what = what
        self.write = write

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Returns None: never swallows an exception (and mypy knows it).
        if exc is not None and isinstance(exc, DRIVER_ERRORS):
            if isinstance(exc, FlywheelStateError):
                return
            raise _convert(exc, self.what, self.write) from exc


def reraise(exc: Exception, what: str, *, write: bool = False) -> NoReturn:
    """Raise ``exc`` converted as :func:`translate_errors` converts it (others as they are).

    For hot paths that catch the error themselves (``except Exception as exc: reraise(exc,
    ...)``): no context manager per call, and ``what`` built only when something failed.
    """
    if isinstance(exc, FlywheelStateError) or not isinstance(exc, DRIVER_ERRORS):
        raise exc
    raise _convert(exc, what, write) from exc


def call_budget(client: Any) -> float | None:
    """Seconds one call may take in all (``Settings.command_timeout``), None for no bound."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    return None if timeout is None else float(timeout)


_ONE_WORD: dict[str, bool] = {}


def _one_word(name: str) -> bool:
    """True when redis-py sends command name ``name`` as one word (it splits 'CONFIG GET')."""
    known = _ONE_WORD.get(name)
    if known is None:
        known = name.split() == [name]
        if len(_ONE_WORD) < 256:  # the hot path's few command names
            _ONE_WORD[name] = known
    return known


def _packed(conn: Any, args: tuple[Any, ...]) -> Any:
    """``args`` as one RESP command, as ``conn.pack_command`` packs it.

    The arguments of the hot path are str, bytes and int: packed here in one pass, about
    half the work of redis-py's general packer (an encoder call and type checks per argument,
    then buffer splitting). Anything else, or a connection that does not encode UTF-8 strictly,
    goes to redis-py's packer.
    """
    encoder = conn.encoder
    name = args[0]
    if (
        encoder.encoding != "utf-8"
        or encoder.encoding_errors != "strict"
        or type(name) is not str
        or not _one_word(name)
    ):
        return conn.pack_command(*args)
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is bytes:
            data = arg
        elif kind is int:
            data = b"%d" % arg
        else:
            return conn.pack_command(*args)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


async def _round_trip(conn: Any, args: tuple[Any, ...]) -> Any:
    """Send one command on ``conn`` and read its reply, within the connection's timeout.

    redis-py bounds the send with ``asyncio.wait_for`` (a task of its own, run on a later
    turn of the event loop) and then the read with a timer of its own, each given the whole
    ``socket_timeout``. Here one timer bounds both: cheaper, and the round trip as a whole
    stays within the time left of the call's budget (``BudgetPool`` sets ``socket_timeout`` to
    it). A timeout, like any error or a cancellation, makes redis-py drop the connection in
    the middle of the send or read.
    """
    packed = _packed(conn, args)
    budget = conn.socket_timeout
    if not budget:
        await conn.send_packed_command(packed)
        return await conn.read_response()
    conn.socket_timeout = None  # the timer below stands for redis-py's own
    try:
        async with _timeout(budget):
            await conn.send_packed_command(packed)
            return await conn.read_response()
    except asyncio.TimeoutError:
        await conn.disconnect(nowait=True)
        raise redis_exc.TimeoutError(f"no reply within {budget:.3g} s") from None
    finally:
        conn.socket_timeout = budget


async def execute_read(client: Any, *args: Any) -> Any:
    """Send one read command and return its reply: ``client.execute_command(*args)``, cheaper.

    Only for commands whose reply redis-py does not post-process (no response callback, such
    as JSON.GET): the reply is returned as the parser gives it.

    redis-py's ``execute_command`` wraps every command in a retry policy (ours retries
    nothing), failure callbacks and operation metrics: about a tenth of the instructions of a
    whole ``get``. Here the command goes straight out on a pooled connection, which keeps the
    pool's bounded wait and the call budget (:class:`BudgetPool`). A call cancelled or failing
    once the command may have been sent drops the connection, so that a late reply is never
    read by the next command on it. A cluster client (no single pool) or a single-connection
    client uses ``execute_command``. Errors are redis-py's, as from ``execute_command`` (the caller
    translates them).
    """
    pool = getattr(client, "connection_pool", None)
    if pool is None or client.connection is not None:  # a cluster or a single-connection client
        return await client.execute_command(*args)
    conn = await pool.get_connection()
    try:
        return await _round_trip(conn, args)
    except redis_exc.ResponseError:
        raise  # a whole reply was read: the connection is in step
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


async def execute_write(client: Any, *args: Any, what: str) -> Any:
    """Send one write command and return its reply, knowing whether it was sent.

    The command goes out on a pooled connection within the call budget. Failing to get a
    (connected) connection means nothing was sent: StoreUnavailableError. Once the command
    is being sent, a timeout or a lost connection leaves its outcome unknown: the connection
    is dropped (a late reply must never be read by another call) and OutcomeUnknownError says
    the write may have been applied. An error reply from the server is raised as it is
    (``redis.exceptions.ResponseError``).

    Raises:
        StoreUnavailableError: Nothing was sent.
        OutcomeUnknownError: Sent, but no reply within the budget or the connection was lost.
    """
    pool = client.connection_pool
    conn: Any = None
    sent = False
    try:
        conn = await pool.get_connection()
        sent = True
        reply = await _round_trip(conn, args)
        replicas = getattr(client, "wait_replicas", 0)
        aof = getattr(client, "wait_aof", False)
        if replicas > 0 or aof:  # Settings.wait_replicas / wait_aof, on this connection
            from flywheel_state._topology import wait_acknowledged

            await wait_acknowledged(conn, replicas, client.wait_ms, what, aof)
        return reply
    except redis_exc.ResponseError:
        raise
    except _UNAVAILABLE as exc:
        if not sent:
            raise StoreUnavailableError(
                f"Redis is unavailable while {what}: {_text(exc)} (nothing was sent)"
            ) from exc
        raise outcome_unknown(what, exc) from exc
    except BaseException:
        if sent and conn is not None:
            await conn.disconnect(nowait=True)
        raise
    finally:
        if conn is not None:
            await pool.release(conn)


def batches_directly(client: Any) -> bool:
    """True when :func:`execute_many` can send on ``client``'s own pool (not a cluster or a
    single-connection client)."""
    return getattr(client, "connection_pool", None) is not None and client.connection is None


async def execute_many(client: Any, commands: list[tuple[Any, ...]], *, write: bool) -> list[Any]:
    """Send ``commands`` in one round trip on one pooled connection and read every reply:
    a non-transactional pipeline, without redis-py's per-command pipeline machinery.

    Replies come back in order; an error reply (``ResponseError``, e.g. ``NOSCRIPT``) stands in
    its place, as ``pipeline.execute(raise_on_error=False)`` gives it. The send and each reply
    are bounded by the connection's timeout, as in a pipeline. A timeout, a lost connection or
    a cancellation drops the connection (no reply is left for another call) and raises. With
    ``write`` and ``Settings.wait_replicas`` / ``wait_aof``, a WAIT follows on the same
    connection, as :class:`~flywheel_state._topology.DurablePipeline` does. Only for a client
    :func:`batches_directly` accepts, and commands whose reply needs no response callback.
    """
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        packed = [_packed(conn, command) for command in commands]
        await conn.send_packed_command(
            [part for piece in packed for part in ((piece,) if type(piece) is bytes else piece)]
        )
        replies: list[Any] = []
        append = replies.append
        read = conn.read_response
        for _ in commands:
            try:
                append(await read())
            except redis_exc.ResponseError as exc:  # the whole reply was read
                append(exc)
        replicas = getattr(client, "wait_replicas", 0)
        aof = getattr(client, "wait_aof", False)
        if write and (replicas > 0 or aof):
            from flywheel_state._topology import wait_acknowledged

            await wait_acknowledged(conn, replicas, client.wait_ms, "a batch of writes", aof)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


class BudgetPool(FastBlockingConnectionPool):
    """The Store's connection pool: one budget bounds each call, from its first wait.

    A call's budget is the pool's ``socket_timeout`` (``Settings.command_timeout``), counted
    from the moment it asks for a connection. The wait for a free connection gets at most
    ``min(pool_timeout, budget)``; sending and reading the reply get what is left: the
    connection's timeouts are set to the remaining time when it is handed out. So a stalled
    server never makes a caller wait for the pool and then for a whole command timeout. (A new
    connection is opened only when no call waits, within ``connect_timeout``.) Nothing is
    cancelled inside the driver (which would leave a half-set-up connection in the pool); its
    own timeouts fire. Checkouts are those of :class:`FastBlockingConnectionPool`: in order,
    and cheap when uncontended.
    """

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """A connected connection, within the call's budget.

        Raises:
            redis.exceptions.ConnectionError: No connection became free in time, or it can't
                be set up (nothing was sent).
        """
        loop = asyncio.get_running_loop()
        budget = self.connection_kwargs.get("socket_timeout")
        deadline = None if budget is None else loop.time() + float(budget)
        wait: float | None = self.timeout
        if budget is not None:
            wait = float(budget) if wait is None else min(float(wait), float(budget))
        # A connection handed over by another call may reconnect (its last command timed out):
        # that handshake gets what is left of this call's budget, not a budget of its own.
        connection = await self._checkout(wait, lambda c: self._limit(c, deadline, loop))
        try:
            self._limit(connection, deadline, loop)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    def _limit(self, connection: Any, deadline: float | None, loop: Any) -> None:
        if deadline is None:
            return
        left = deadline - loop.time()
        if left <= 0:
            raise redis_exc.TimeoutError("the call's time budget was spent waiting")
        connection.socket_timeout = left
        connect = self.connection_kwargs.get("socket_connect_timeout")
        connection.socket_connect_timeout = left if connect is None else min(connect, left)


def as_str(value: Any) -> str:
    """Decode a reply element (bytes or str) to str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
