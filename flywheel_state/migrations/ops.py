"""Operations migration scripts call: index swaps behind aliases and batched key rewrites.

Scripts stay small (``await ctx.ops.swap_index(SPEC)``); the safety lives here:

- :meth:`Operations.swap_index` builds the new index beside the old one, waits until its
  background indexing is done and its document count matches the old index, moves the alias
  (FT.ALIASUPDATE, atomic) and only then drops the old version. Queries through the alias never
  see a partial index.
- :meth:`Operations.rewrite_keys` rewrites keys in resumable, atomic batches through the
  rewrite engine (:mod:`flywheel_state.migrations.engine`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError
from redis import exceptions as redis_exc

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.config import Settings
from flywheel_state.errors import FlywheelStateError, MigrationError, SearchUnavailableError
from flywheel_state.indexes import (
    IndexSpec,
    alias_name,
    alias_target,
    create_index,
    drop_index,
    index_info,
    index_name,
    point_alias,
    wait_until_indexed,
)
from flywheel_state.migrations._scripts import JSON_TYPE
from flywheel_state.migrations.engine import (
    KeyType,
    Rewrite,
    RewriteEngine,
    RewriteResult,
    Transform,
)
from flywheel_state.migrations.report import MigrationProblem, StepReport

if TYPE_CHECKING:
    from flywheel_state.models._base import Document

__all__ = ["KeyType", "Operations", "OperationsContext", "Rewrite", "RewriteResult", "Transform"]


class OperationsContext(Protocol):
    """What :class:`Operations` reads of the migration context (its public attributes only)."""

    client: Client
    namespace: str
    settings: Settings
    revision: str
    dry_run: bool
    report: StepReport
    search: bool
    skip_index_ops: bool

    def action(self, text: str) -> None: ...

    def problem(
        self, key: str, message: str, *, field: str | None = None, value: object = None
    ) -> MigrationProblem: ...


class Operations:
    """The operations available to a migration script as ``ctx.ops``."""

    def __init__(self, ctx: OperationsContext, engine: RewriteEngine) -> None:
        self._ctx = ctx
        self._engine = engine
        self._op_count = 0

    def _need_search(self, what: str) -> None:
        """Refuse an index operation on a Store opened with ``search=False``."""
        if not self._ctx.search:
            raise SearchUnavailableError(
                f"migration {self._ctx.revision} {what}: it needs the query engine, and this "
                "Store was opened with search=False. Run it where search is available."
            )

    def _not_applicable(self, what: str) -> bool:
        """On a cluster without a distributed query engine an index step does not apply."""
        if not self._ctx.skip_index_ops:
            return False
        self._ctx.report.actions.append(
            f"skipped {what}: not applicable on a cluster without a distributed query engine"
        )
        return True

    # ------------------------------------------------------------------ indexes

    async def swap_index(self, spec: IndexSpec, *, timeout: float = 600.0) -> str:
        """Make the ``spec.kind`` alias point at the index of ``spec``, without downtime.

        Creates ``{ns}:{kind}:idx:v{N}`` (unless it exists), waits until its background
        indexing has finished and, when the alias pointed at another version, until both
        indexes hold the same number of documents; then moves the alias (atomic) and drops
        every other version of that kind (documents are kept). Safe to run again.

        Args:
            spec: The index version to serve queries from (a frozen copy in the script).
            timeout: Seconds to wait for indexing.

        Returns:
            The name of the index the alias points at.

        Raises:
            MigrationError: Indexing did not finish in time, or the new index holds a different
                number of documents than the old one (the alias is left where it was).
        """
        ctx = self._ctx
        client = ctx.client
        ns = ctx.namespace
        name = index_name(ns, spec.kind, spec.version)
        if self._not_applicable(f"index {name}"):
            return name
        self._need_search("creates an index")
        alias = alias_name(ns, spec.kind)
        old = await alias_target(client, ns, spec.kind)
        stale = [n for n in await self._versions(spec.kind) if n != name]
        if ctx.dry_run:
            if await index_info(client, name) is None:
                ctx.action(f"create index {name}")
            if old != name:
                ctx.action(f"point alias {alias} at {name}")
            for other in stale:
                ctx.action(f"drop index {other}")
            return name
        if await index_info(client, name) is None:
            await create_index(client, ns, spec)
            ctx.action(f"created index {name}")
        count = await wait_until_indexed(client, name, timeout=timeout)
        if old is not None and old != name:
            count = await self._matching_count(name, old, timeout=timeout)
        if old != name:
            await point_alias(client, ns, spec.kind, name)
            ctx.action(f"pointed alias {alias} at {name} ({count} documents)")
        for other in stale:
            if await drop_index(client, other):
                ctx.action(f"dropped index {other}")
        return name

    async def _versions(self, kind: str) -> list[str]:
        """Every versioned index of ``kind`` in this namespace."""
        pattern = re.compile(re.escape(f"{self._ctx.namespace}:{kind}:idx:v") + r"\d+$")
        with translate_errors("listing indexes"):
            names = await self._ctx.client.execute_command("FT._LIST")
        return sorted(n for n in (as_str(x) for x in names) if pattern.match(n))

    async def _matching_count(self, new: str, old: str, *, timeout: float) -> int:
        # Both indexes follow writes synchronously once the new one has caught up, so their
        # counts, read in one transaction, are equal unless the new schema rejects documents.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, 5.0)
        while True:
            with translate_errors(f"comparing indexes {new} and {old}"):
                async with self._ctx.client.pipeline(transaction=True) as pipe:
                    pipe.execute_command("FT.INFO", new)
                    pipe.execute_command("FT.INFO", old)
                    new_raw, old_raw = await pipe.execute()
            new_info = _info_dict(new_raw)
            old_info = _info_dict(old_raw)
            n_new = int(as_str(new_info.get("num_docs", b"0")))
            n_old = int(as_str(old_info.get("num_docs", b"0")))
            if n_new == n_old:
                return n_new
            if loop.time() > deadline:
                failures = as_str(new_info.get("hash_indexing_failures", b"?"))
                raise MigrationError(
                    f"index {new} holds {n_new} documents but {old} holds {n_old} "
                    f"({failures} indexing failures): the alias still points at {old}. "
                    f"Fix the spec, FT.DROPINDEX {new}, and run the migration again."
                )
            await asyncio.sleep(0.05)

    async def drop_index(self, spec: IndexSpec) -> None:
        """Drop the index of ``spec`` (documents are kept), and its alias if it points there.

        Safe to run again: an absent index or alias is not an error.
        """
        ctx = self._ctx
        name = index_name(ctx.namespace, spec.kind, spec.version)
        if self._not_applicable(f"dropping index {name}"):
            return
        self._need_search("drops an index")
        alias = alias_name(ctx.namespace, spec.kind)
        points_here = await alias_target(ctx.client, ctx.namespace, spec.kind) == name
        exists = await index_info(ctx.client, name) is not None
        if ctx.dry_run:
            if points_here:
                ctx.action(f"delete alias {alias}")
            if exists:
                ctx.action(f"drop index {name}")
            return
        if points_here:
            with translate_errors(f"deleting alias {alias}"):
                try:
                    await ctx.client.execute_command("FT.ALIASDEL", alias)
                    ctx.action(f"deleted alias {alias}")
                except redis_exc.ResponseError as exc:
                    if "not exist" not in str(exc).lower():
                        raise
        if exists and await drop_index(ctx.client, name):
            ctx.action(f"dropped index {name}")

    # ------------------------------------------------------------------ data

    async def upgrade_documents(
        self, model: type[Document], *, label: str | None = None
    ) -> RewriteResult:
        """Rewrite the stored ``model`` documents of an older ``schema_version`` in the current one.

        Each document is read through the model (which applies the registered upgrade
        functions, see ``flywheel_state.models._upgrades``) and written back with the model's
        encoding, keeping its TTL and its ``version``. Documents already current are skipped;
        ones the model can't read are reported and left as they are. Encrypted fields are
        decrypted for the upgrade and sealed again with the store's cipher (without the key,
        such documents are reported and left as they are).
        """
        ctx = self._ctx
        target = model.SCHEMA_VERSION
        opener, sealer = _crypto_hooks(ctx, model)

        def transform(key: str, raw: bytes) -> Rewrite | None:
            try:
                data = json.loads(raw)
            except ValueError:
                return Rewrite(None, (ctx.problem(key, "not valid JSON; left as it is"),))
            if not isinstance(data, dict) or data.get("schema_version") == target:
                return None
            try:
                if opener is not None:
                    data = json.loads(opener(key, raw))
                doc = model.model_validate(data)
                return Rewrite(doc.model_dump_json() if sealer is None else sealer(key, doc))
            except (ValidationError, FlywheelStateError, ValueError) as exc:
                msg = f"can't be read as {model.__name__}: {exc}; left as it is"
                return Rewrite(None, (ctx.problem(key, msg.replace("\n", " ")),))

        return await self.rewrite_keys(
            match=f"{ctx.namespace}:{model.KIND}:*",
            from_type=JSON_TYPE,
            to_type=JSON_TYPE,
            transform=transform,
            label=label or f"{model.KIND} documents -> schema v{target}",
        )

    async def rewrite_keys(
        self,
        *,
        match: str,
        from_type: KeyType,
        to_type: KeyType,
        transform: Transform,
        label: str,
        batch_size: int | None = None,
    ) -> RewriteResult:
        """Rewrite every key matching ``match`` whose type is ``from_type``, in batches.

        For each batch: SCAN (MATCH ``match`` TYPE ``from_type``), one read (MGET or
        JSON.MGET), ``transform(key, value)`` in Python, then one pipelined round of Lua
        script calls that write each new value as ``to_type`` only if the key still holds what
        was read, with the key's remaining TTL, atomically (a key changed by a writer in
        between is read and transformed again). Then the progress callback, the checkpoint
        (cursor and counters), and a check that the lock is still ours. The writes of one batch
        overlap the reading and transforming of the next.

        In a dry run nothing is written: keys are read and transformed, counted, and the first
        few are kept as samples in the report.

        Args:
            match: SCAN pattern (``{ns}:session:*``).
            from_type: The type of the keys to rewrite (``string`` or ``ReJSON-RL``).
            to_type: The type to write them as.
            transform: ``(key, value) -> Rewrite | str | None``; must be a pure function of
                its input (it may run again for a key whose write was not acknowledged).
            label: What this does, for progress and reports.
            batch_size: Keys per batch (default: the runner's).

        Returns:
            The counts, including those of an interrupted earlier run of this step.
        """
        self._op_count += 1
        return await self._engine.rewrite_keys(
            step_field=f"{self._op_count}:",
            match=match,
            from_type=from_type,
            to_type=to_type,
            transform=transform,
            label=label,
            batch_size=batch_size,
        )


def _crypto_hooks(
    ctx: OperationsContext, model: type[Document]
) -> tuple[Callable[[str, bytes], bytes | str] | None, Callable[[str, Document], str] | None]:
    """How :meth:`Operations.upgrade_documents` opens and seals encrypted documents of
    ``model`` (``(None, None)``: the kind has no encrypted fields)."""
    from flywheel_state.crypto import ENCRYPTED_FIELDS, RecordCodec, has_envelope_marker
    from flywheel_state.repositories.base import _MAX_JSON_DEPTH, check_nesting, encode_json

    if model.KIND not in ENCRYPTED_FIELDS:
        return None, None
    cipher = ctx.settings.cipher
    codec = RecordCodec(cipher, ctx.namespace, model)
    if cipher is None:
        # No key: a document holding envelopes is refused (EncryptionKeyError), not rewritten.
        def detect(key: str, raw: bytes) -> bytes | str:
            return codec.open_document(key, raw) if has_envelope_marker(raw) else raw

        return detect, None

    def seal(key: str, doc: Document) -> str:
        return codec.seal_document(
            doc, encode_json, key=key, check=check_nesting, max_depth=_MAX_JSON_DEPTH
        )

    return codec.open_document, seal


def _info_dict(raw: Any) -> dict[str, Any]:
    items = list(raw)
    return {as_str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
