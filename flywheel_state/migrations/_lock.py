"""The per-namespace migration lock: SET NX PX, renewed in the background, released if ours."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Any

from redis import exceptions as redis_exc
from redis.commands.core import AsyncScript

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.errors import MigrationError, MigrationLockedError
from flywheel_state.migrations._scripts import RELEASE_SCRIPT, RENEW_SCRIPT

__all__ = ["MigrationLock", "describe_holder", "parse_holder", "parse_json_object"]

_RENEW = AsyncScript(None, RENEW_SCRIPT.encode())  # type: ignore[arg-type]
_RELEASE = AsyncScript(None, RELEASE_SCRIPT.encode())  # type: ignore[arg-type]


def parse_json_object(raw: bytes | str | None) -> dict[str, Any] | None:
    """A JSON object stored as a string (None when absent; other text as ``{"value": text}``)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {"value": as_str(raw)}


def parse_holder(raw: bytes | str | None) -> dict[str, Any] | None:
    """The holder description stored as the lock's value (None when unlocked)."""
    holder = parse_json_object(raw)
    if holder is not None:
        holder.pop("token", None)
    return holder


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``host pid 123 since ... (upgrade to head)`` for messages."""
    if not holder:
        return "unknown holder"
    if "host" not in holder:
        return str(holder.get("value", holder))
    text = f"{holder.get('host')} pid {holder.get('pid')}"
    if holder.get("since"):
        text += f" since {holder['since']}"
    if holder.get("purpose"):
        text += f" ({holder['purpose']})"
    return text


class MigrationLock:
    """One runner at a time per namespace.

    The lock is a key set with NX and an expiry (``ttl`` seconds), holding a JSON description
    of its holder (host, pid, start time, purpose) and a random token. While held, a background
    task renews the expiry every third of the TTL, only if the key still holds our value; release
    deletes it only if it is still ours (compare-and-delete scripts). A holder that dies stops
    renewing, so its lock expires after at most ``ttl`` seconds.

    Args:
        client: The redis.asyncio client.
        key: The lock key, ``{ns}:_migrations:lock``.
        purpose: Shown to whoever finds the lock taken (``upgrade to head``).
        ttl: Seconds the lock lives without renewal.
    """

    def __init__(self, client: Client, key: str, *, purpose: str, ttl: float = 30.0) -> None:
        if ttl <= 0:
            raise MigrationError(f"lock ttl must be positive, got {ttl!r}")
        self._client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.value = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "purpose": purpose,
                "token": uuid.uuid4().hex,
            },
            separators=(",", ":"),
        )
        self._renewer: asyncio.Task[None] | None = None
        self.lost = False
        """True once the lock was found taken by someone else (or unrenewable) while held."""

    async def _try(self) -> bool:
        with translate_errors(f"taking the migration lock {self.key}"):
            return bool(await self._client.set(self.key, self.value, nx=True, px=self.ttl_ms))

    async def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (None when free)."""
        with translate_errors(f"reading the migration lock {self.key}"):
            return parse_holder(await self._client.get(self.key))

    async def acquire(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Take the lock and start renewing it.

        Args:
            wait: Wait for the holder to finish instead of failing at once.
            timeout: With ``wait``, give up after this many seconds (None: no limit).

        Raises:
            MigrationLockedError: Another runner holds it (says who).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.05
        while not await self._try():
            holder = await self.holder()
            if holder is None:
                continue  # released between our SET and GET: try again at once
            if not wait or (deadline is not None and loop.time() >= deadline):
                raise MigrationLockedError(
                    f"another migration runner holds the lock of this namespace: "
                    f"{describe_holder(holder)}. Wait for it to finish (wait=True, or "
                    "`flywheel-state migrate up --wait`); a runner that died releases the "
                    f"lock within {self.ttl_ms / 1000:.0f}s.",
                    holder=describe_holder(holder),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        self.lost = False
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"renew {self.key}")

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl_ms / 3000
        last_ok = loop.time()
        while True:
            await asyncio.sleep(interval)
            try:
                ok = await _RENEW(
                    keys=[self.key], args=[self.value, self.ttl_ms], client=self._client
                )
            except (redis_exc.RedisError, OSError):
                # Transient: keep trying until the lock would have expired anyway.
                if loop.time() - last_ok > self.ttl_ms / 1000:
                    self.lost = True
                    return
                continue
            if not ok:
                self.lost = True
                return
            last_ok = loop.time()

    def check(self) -> None:
        """Raise when the lock was lost while held (checked between batches).

        Raises:
            MigrationError: The lock expired or was taken by another runner.
        """
        if self.lost:
            raise MigrationError(
                f"the migration lock {self.key} was lost (expired or taken over while this "
                "runner was paused); stopped before writing more. Run the migration again."
            )

    async def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        with translate_errors(f"releasing the migration lock {self.key}"):
            await _RELEASE(keys=[self.key], args=[self.value], client=self._client)
