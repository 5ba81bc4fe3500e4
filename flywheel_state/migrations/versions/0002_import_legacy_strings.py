"""Import the original persistence code's JSON strings as documents (and back on downgrade).

The original code stored plain strings (SETEX of JSON text) at ``{ns}:session:{id}``,
``{ns}:execution:{id}`` and ``{ns}:history:{session_id}:{flow_id}`` (both shapes are described in
the design notes, legacy-data.md). This revision rewrites each such string, in place and with its
remaining TTL, as a RedisJSON document:

- sessions become ``Session`` documents (``schema_version`` 1, ``version`` 1), encoded by the
  model (``model_dump_json``), so they are exactly what the repository writes. Both datetime
  formats (``str(datetime)`` and ISO) are read, a naive one as UTC. Unknown top-level fields go
  into ``metadata`` (under their own name, or ``legacy_<name>`` if taken). A value that can't be
  mapped is never dropped: the field gets a valid value (an alias such as ``done`` its status,
  an unknown status ``idle``, an unknown backend ``custom``), the original is kept in
  ``metadata["_legacy"]["raw"]``, and the step's report lists it.
- executions become ``ExecutionResult`` documents: shape A (the raw result dict) as
  ``result=<the dict>`` (its ``metadata.duration_ms`` copied to the indexed ``duration_ms``);
  shape B (``execution_id``, ``result``, ``cached_at``) field by field.
- flow histories become one ``ExecutionResult`` per execution (``session_id`` / ``flow_id`` set,
  ``result`` the execution record, ids ``history_<hash>_<position>``), exactly what the compat
  layer's ``cache_flow_history`` writes, so ``get_flow_history`` and
  ``store.executions.find(session_id=..., flow_id=...)`` read them
  (:mod:`flywheel_state.migrations.legacy_history`). A history with no executions stays a JSON
  document of its fields at its key. (Before 0003 existed, 0002 stopped at that JSON document
  for every history; 0003 converts those.)

``metadata["_legacy"]`` (a few bytes per document; omitted parts are empty) records what the
downgrade needs to write the original string back: the shape (``A``/``B``), shape B's
``_schema_version``, fields the original lacked (``absent``) or had beyond its shape (``kept``),
datetimes kept inside ``metadata`` (``in_metadata``), original datetime text that ISO output would
not reproduce (``dates``, and ``item_dates`` for history items by position), history items'
explicit nulls (``item_nulls``), unknown fields moved into metadata (``extra``), and unmapped
values (``raw``: original and stored value). The downgrade rebuilds each string from the *current*
document (so changes made after the import are carried back), using the original text of a value
only while the document still holds what the import stored. No copy of the original strings is
kept: memory stays what the documents need.

The mapping itself (field lists, enum values and aliases, the datetime parser, fallbacks) is
frozen in :mod:`flywheel_state.migrations.legacy_codec`, which the compat layer uses too: a
session reads the same whether it was saved through the original API or migrated. It uses the
live models only to encode a version-1 document, through their upgrade chain.
"""

from collections.abc import Callable
from typing import Any

from flywheel_state.migrations import MigrationContext, Rewrite
from flywheel_state.migrations.legacy_codec import (
    _parse_slow,
    export_execution,
    export_history,
    export_session,
    import_execution,
    import_history,
    import_session,
    loads,
    parse_datetime,
    stored_now,
)
from flywheel_state.migrations.legacy_history import join_histories, split_histories

__all__ = ["_parse_slow", "parse_datetime"]  # the frozen parser, for tests and tools

revision = "0002"
down_revision = "0001"
description = "Import the original code's JSON strings as session, execution and history documents"


# ---------------------------------------------------------------------- the steps


Handler = Callable[[str, str, Any], Rewrite]


def _dispatch(
    ctx: MigrationContext, handlers: dict[str, Handler]
) -> Callable[[str, bytes], Rewrite | None]:
    prefixes = [(ctx.key(kind) + ":", handler) for kind, handler in handlers.items()]

    def transform(key: str, raw: bytes) -> Rewrite | None:
        for prefix, handler in prefixes:
            if key.startswith(prefix):
                try:
                    data = loads(raw)  # json.loads, faster
                except ValueError:
                    return Rewrite(None, (ctx.problem(key, "not valid JSON; left as it is"),))
                return handler(key, key[len(prefix) :], data)
        return None  # not ours (bookkeeping, other data): never touched

    return transform


async def upgrade(ctx: MigrationContext) -> None:
    """Rewrite every legacy string of the namespace as a document, keeping its TTL."""
    now = stored_now()

    def session(key: str, key_id: str, data: Any) -> Rewrite:
        if not isinstance(data, dict):
            return Rewrite(
                None, (ctx.problem(key, "a session that is not a JSON object; left as it is"),)
            )
        return import_session(key, key_id, data, now)

    handlers: dict[str, Handler] = {
        "session": session,
        "execution": lambda key, key_id, data: import_execution(key, key_id, data, now),
        "history": lambda key, key_id, data: import_history(key, data),
    }
    await ctx.ops.rewrite_keys(
        match=ctx.key("*"),
        from_type="string",
        to_type="ReJSON-RL",
        transform=_dispatch(ctx, handlers),
        label="legacy strings -> documents",
    )
    # Flow histories, now JSON records: one ExecutionResult per execution, as the compat
    # layer's cache_flow_history writes them (legacy_history.py).
    await split_histories(ctx)


async def downgrade(ctx: MigrationContext) -> None:
    """Write every session, execution and flow history document back as a legacy string."""
    await join_histories(ctx)  # flow-history executions back into one record each

    def exporter(fn: Callable[[dict[str, Any]], str]) -> Handler:
        def handler(key: str, key_id: str, data: Any) -> Rewrite:
            if not isinstance(data, dict):
                return Rewrite(None, (ctx.problem(key, "not a JSON object; left as it is"),))
            return Rewrite(fn(data))

        return handler

    handlers = {
        "session": exporter(export_session),
        "execution": exporter(export_execution),
        "history": exporter(export_history),
    }
    await ctx.ops.rewrite_keys(
        match=ctx.key("*"),
        from_type="ReJSON-RL",
        to_type="string",
        transform=_dispatch(ctx, handlers),
        label="documents -> legacy strings",
    )
