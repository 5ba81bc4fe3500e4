"""Flow histories of the original code as ExecutionResult documents, and back (0002, 0003).

The original code kept a session's executions on one flow as one string,
``{ns}:history:<session_id>:<flow_id>``. Migration 0002 rewrites that string in place as a JSON
document of the same fields; :func:`split_histories` then turns each such document into one
ExecutionResult per execution, at ``{ns}:execution:history_<hash>_<position>`` (the ids the
compat layer's ``cache_flow_history`` uses), with the history key's remaining TTL, so
``get_flow_history`` and ``store.executions.find(session_id=..., flow_id=...)`` read them.
:func:`join_histories` does the reverse for the downgrades.

One record becomes several keys, so the in-place rewrite of ``ctx.ops`` does not fit; each
step is written to be repeated instead. Splitting writes every document (ids and contents are
a function of the record, so a second write is the same), then deletes the history key only
if it still holds what was read. Joining writes the record only when every document of the
history is there, then deletes the documents; a run interrupted between the two finds the
record written and deletes what is left. A run killed anywhere resumes by running again.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from pydantic import ValidationError

from flywheel_state._redis import as_str, translate_errors
from flywheel_state.errors import FlywheelStateError
from flywheel_state.migrations import MigrationContext
from flywheel_state.migrations.legacy_codec import (
    HISTORY_SOURCE,
    history_documents,
    history_record,
)
from flywheel_state.models import ExecutionResult

__all__ = ["join_histories", "split_histories"]

JSON_TYPE = "ReJSON-RL"

# One key each (cluster-safe). Write a document with a TTL in ms (<= 0: none).
_SET_WITH_TTL = """
redis.call('JSON.SET', KEYS[1], '$', ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return 1
"""
# Delete a document only if it still holds what was read.
_DELETE_IF_SAME = """
if redis.call('TYPE', KEYS[1]).ok ~= 'ReJSON-RL' then return 0 end
if redis.call('JSON.GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


async def _scan(ctx: MigrationContext, match: str) -> list[str]:
    keys: list[str] = []
    with translate_errors(f"scanning {match}"):
        async for raw in ctx.client.scan_iter(match=match, count=1000, _type=JSON_TYPE):
            keys.append(as_str(raw))
    return sorted(set(keys))


async def _read(ctx: MigrationContext, key: str) -> tuple[bytes | None, int]:
    with translate_errors(f"reading {key}"):
        raw = await ctx.client.execute_command("JSON.GET", key)
        pttl = int(await ctx.client.pttl(key))
    return raw, pttl


async def _write(ctx: MigrationContext, key: str, value: str, pttl: int) -> None:
    with translate_errors(f"writing {key}"):
        await ctx.client.execute_command("EVAL", _SET_WITH_TTL, 1, key, value, pttl)


async def _delete_if_same(ctx: MigrationContext, key: str, raw: bytes) -> None:
    with translate_errors(f"deleting {key}"):
        await ctx.client.execute_command("EVAL", _DELETE_IF_SAME, 1, key, raw)


async def split_histories(ctx: MigrationContext) -> None:
    """Each flow history document (0002's shape) as one ExecutionResult per execution.

    A history with no executions stays as it is (there is nothing to read); one that can't be
    mapped is reported and left as it is.
    """
    prefix = ctx.key("history") + ":"
    report = ctx.report
    for key in await _scan(ctx, prefix + "*"):
        raw, pttl = await _read(ctx, key)
        if raw is None:
            continue
        report.documents_scanned += 1
        try:
            data = json.loads(raw)
        except ValueError:
            report.add_problem(ctx.problem(key, "not valid JSON; left as it is"))
            continue
        docs = history_documents(key[len(prefix) :], data) if isinstance(data, dict) else None
        if docs is None:
            if not (isinstance(data, dict) and data.get("executions") == []):
                msg = "a flow history without session, flow or executions list; left as it is"
                report.add_problem(ctx.problem(key, msg))
            continue
        try:
            encoded = [(d["id"], ExecutionResult.model_validate(d).model_dump_json()) for d in docs]
        except (ValidationError, FlywheelStateError) as exc:
            msg = str(exc).replace("\n", " ")
            report.add_problem(ctx.problem(key, f"can't become executions ({msg}); left as it is"))
            continue
        report.documents_changed += len(encoded)
        if ctx.dry_run:
            continue
        for doc_id, value in encoded:
            await _write(ctx, ctx.key("execution", doc_id), value, pttl)
        await _delete_if_same(ctx, key, raw)


async def join_histories(ctx: MigrationContext) -> None:
    """The ExecutionResult documents of each flow history back as one record (0002's shape)."""
    prefix = ctx.key("execution") + ":"
    report = ctx.report
    groups: dict[tuple[Any, Any], list[tuple[str, bytes, int, dict[str, Any]]]] = defaultdict(list)
    for key in await _scan(ctx, prefix + "history_*"):
        raw, pttl = await _read(ctx, key)
        if raw is None:
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
            continue
        if doc["metadata"].get("source") != HISTORY_SOURCE:
            continue
        report.documents_scanned += 1
        groups[(doc.get("session_id"), doc.get("flow_id"))].append((key, raw, pttl, doc))
    for (session_id, flow_id), members in groups.items():
        rebuilt = history_record([doc for _, _, _, doc in members])
        if rebuilt is None:
            # Some documents are gone: a run interrupted after writing the record deleted
            # them; otherwise they were deleted since, and the record can't be rebuilt whole.
            target = None
            for _, _, _, doc in members:
                legacy = doc["metadata"].get("_legacy")
                if isinstance(legacy, dict) and isinstance(legacy.get("key"), str):
                    target = ctx.key("history", legacy["key"])
            if target is None:
                target = ctx.key("history", f"{session_id}:{flow_id}")
            with translate_errors(f"reading {target}"):
                written = await ctx.client.exists(target)
            if not written:
                report.add_problem(
                    ctx.problem(
                        members[0][0],
                        f"the flow history of {session_id!r} on {flow_id!r} is incomplete; "
                        "its documents are left as they are",
                    )
                )
                continue
        else:
            key_id, record = rebuilt
            report.documents_changed += 1
            if ctx.dry_run:
                continue
            ttls = [pttl for _, _, pttl, _ in members if pttl > 0]
            pttl = max(ttls) if len(ttls) == len(members) else -1
            value = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
            await _write(ctx, ctx.key("history", key_id), value, pttl)
        if ctx.dry_run:
            continue
        for key, raw, _, _ in members:
            await _delete_if_same(ctx, key, raw)
