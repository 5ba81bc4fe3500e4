"""The one namespace purge: drop a namespace's indexes and unlink its keys."""

from __future__ import annotations

from typing import Any

from redis import exceptions as redis_exc

from flywheel_state._redis import as_str, translate_errors
from flywheel_state.indexes import alias_target

__all__ = ["drop_namespace"]

_BATCH = 500


async def drop_namespace(client: Any, namespace: str) -> tuple[int, int]:
    """Drop every index of ``namespace`` and unlink every key under ``{namespace}:``.

    Migration bookkeeping (``{namespace}:_migrations:*``) goes too. Used by
    :meth:`flywheel_state.Store.drop_namespace`, the demo, the tests and the benchmarks.

    Returns:
        The number of indexes dropped and of keys unlinked.
    """
    prefix = f"{namespace}:"
    with translate_errors(f"removing namespace {namespace}"):
        try:
            names = [as_str(n) for n in await client.execute_command("FT._LIST")]
        except redis_exc.ResponseError:  # a server without FT._LIST: drop what the aliases name
            names = [
                target
                for kind in ("session", "execution")
                if (target := await alias_target(client, namespace, kind)) is not None
            ]
        dropped = 0
        for name in names:
            if name.startswith(prefix):
                try:
                    await client.execute_command("FT.DROPINDEX", name)
                except redis_exc.ResponseError:  # dropped meanwhile
                    continue
                dropped += 1
        unlinked = 0
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= _BATCH:
                unlinked += int(await client.unlink(*batch))
                batch.clear()
        if batch:
            unlinked += int(await client.unlink(*batch))
    return dropped, unlinked
