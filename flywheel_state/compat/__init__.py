"""The original API (RedisSessionManager, RedisExecutionCache, RedisConfig) on the new layer.

Existing callers (the MCP server) switch by changing one import line::

    from flywheel_state import RedisConfig, RedisExecutionCache, RedisSessionManager

    manager = RedisSessionManager(**RedisConfig.from_env())
    await manager.save_session(session)          # True / False, never raises
    await manager.load_session("session_123")    # a flywheel_state Session, or None
    await manager.list_sessions("session_*")     # ids, from the index (no SCAN)
    cache = RedisExecutionCache(**RedisConfig.execution_from_env())
    await cache.cache_result("exec_abc", {"result": "...", "metadata": {"duration_ms": 1234}})
    await cache.get_result("exec_abc")           # exactly the dict that was cached

Underneath, sessions and results are RedisJSON documents of the current models, written with
their TTL atomically through a :class:`~flywheel_state.Store`, indexed, and visible to every admin
query and CLI command.

Fail-safe behaviour (the promise of the original code, kept and improved):

- ``enabled=False`` does no I/O at all: every call returns its fail-safe value at once.
- Without the ``redis`` package (or redis-om) a manager disables itself, with one warning.
- When Redis is down or failing, every call returns ``False`` / ``None`` / ``[]`` within the
  command timeout plus a small margin, and logs one WARNING per outage (later failures of the
  same outage are logged at DEBUG). The next call after Redis comes back works again, on the same
  manager, and logs "reconnected" at INFO. The original disabled itself for the life of the
  process after one failed connection; these managers never do. The first failure after a
  quiet period is retried once within the same time budget, after checking the server and the
  schema again: a pooled connection from before a server restart, or a server that came back
  empty (no index), costs no failed call.
- Errors about one record or one call's arguments (an invalid id, a bad filter, a value that
  is not a document, a value JSON can't hold even as text, such as a dict that contains
  itself) make that call return its fail-safe value with a warning of its own; they are not an
  outage.
- A call lists at most what fits in its time budget: ``list_sessions()`` without ``limit`` on
  hundreds of thousands of sessions can exceed it (about 60 ms per 10,000 ids here); page
  with ``limit`` / ``offset``, or use ``store.sessions.iterate`` for bulk work.
- This module is the one place in flywheel-state that swallows errors: it catches
  :class:`~flywheel_state.FlywheelStateError` (and the timeout it sets itself, and the
  ``ValueError`` / ``TypeError`` of mapping or encoding the caller's values), logs it on the
  ``flywheel_state.compat`` logger, and returns the fail-safe value.

Schema: the first call of a manager connects its Store with ``auto_migrate=True``, because the
original code worked on an empty Redis with no migration step: the indexes are created, and
pending migrations (the import of data written by the original code among them) run then. That
first call is not cut off by the call timeout while migrations run (a migration interrupted
half-way would only have to resume later; a runner at work elsewhere is waited for); reaching
the server is. Pass ``auto_migrate=False`` to get the Store's default instead (a pending
migration then counts as an outage until an operator runs ``flywheel-state migrate up``).

No event-loop binding: the Store keeps one client per event loop, so a manager created in one
loop (or outside any) works in any other, e.g. across two ``asyncio.run`` calls.

Modules: ``_config`` (RedisConfig and the managers' Settings, read through
``Settings.from_env``), ``_failsafe`` (the machinery above), ``_sessions`` and ``_executions``
(the two facades); the mapping of the original's values is the legacy codec
(``flywheel_state.migrations.legacy_codec``, through ``flywheel_state._compat_mapping``).
"""

from __future__ import annotations

from flywheel_state.compat._config import RedisConfig
from flywheel_state.compat._executions import RedisExecutionCache
from flywheel_state.compat._failsafe import CALL_MARGIN
from flywheel_state.compat._sessions import RedisSessionManager
from flywheel_state.observability import instrument_compat

__all__ = ["CALL_MARGIN", "RedisConfig", "RedisExecutionCache", "RedisSessionManager"]

instrument_compat(RedisSessionManager, RedisExecutionCache)  # spans, see observability.py
