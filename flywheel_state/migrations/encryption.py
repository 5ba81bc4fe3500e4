"""Encryption maintenance of a namespace: encrypt data written in clear, re-key, decrypt.

Each operation rewrites the stored documents of every kind through the migration machinery
(:meth:`~flywheel_state.migrations.ops.Operations.rewrite_keys`): it holds the namespace's
migration lock (one runner at a time, migrations included), works in batches, writes a key
only if it still holds what was read (a concurrent writer's change is read again, never lost),
keeps each key's TTL, and saves a checkpoint after each batch, so a run that is killed resumes
where it stopped. A document already in the wanted state is left alone, so a rerun (or a batch
redone after a crash) never rewrites it twice::

    report = await rekey(store)                 # every value under the active key
    await encrypt(store, dry_run=True)          # how many documents hold fields in clear
    await decrypt(store)                        # store everything in clear (leaving encryption)
    await encryption_status(store)              # {"session": {"k1": 10, "clear": 0}, ...}

Values that can't be opened (a key id missing from the ring, a ciphertext that fails
authentication) are reported as problems and left as they are. Dry runs keep no samples: their
"after" text would show decrypted content.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Literal

from flywheel_state._redis import as_str, translate_errors
from flywheel_state.crypto import RecordCodec
from flywheel_state.errors import (
    ConfigError,
    CorruptRecordError,
    EncryptionKeyError,
    FlywheelStateError,
    MigrationError,
)
from flywheel_state.migrations._lock import MigrationLock
from flywheel_state.migrations._scripts import JSON_TYPE
from flywheel_state.migrations.context import MigrationContext, ProgressCallback, checkpoint_keys
from flywheel_state.migrations.ops import Rewrite
from flywheel_state.migrations.report import StepReport

if TYPE_CHECKING:
    from flywheel_state.store import Store

__all__ = ["CryptoMode", "decrypt", "encrypt", "encryption_status", "rekey"]

CryptoMode = Literal["encrypt", "rekey", "decrypt"]
"""What an encryption maintenance run does."""

_DESCRIPTIONS: dict[str, str] = {
    "encrypt": "encrypt fields stored in clear",
    "rekey": "re-encrypt every value under the active key",
    "decrypt": "decrypt every field (store it in clear)",
}


async def encrypt(
    store: Store,
    *,
    dry_run: bool = False,
    wait: bool = False,
    wait_timeout: float | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int | None = None,
) -> StepReport:
    """Encrypt, with the active key, every content field stored in clear in the namespace.

    For a namespace written before encryption was turned on (or imported from legacy data).
    Values encrypted already, under any key of the ring, are kept as they are.

    Args:
        store: A Store with a cipher (``Store(..., cipher=...)`` or FLYWHEEL_ENCRYPTION_KEYS).
        dry_run: Count what would change; write nothing (not even the lock).
        wait: When another runner holds the namespace's migration lock, wait for it.
        wait_timeout: With ``wait``, give up after this many seconds.
        progress: Called after each batch (see ``MigrationRunner.upgrade``); an exception it
            raises stops the run there, and the next run resumes from the last checkpoint.
        batch_size: Keys per batch (default: the store's migration runner's).

    Returns:
        Documents scanned and changed, problems, and whether this run resumed an earlier one.

    Raises:
        ConfigError: The store has no cipher.
        MigrationLockedError: Another runner holds the lock (and ``wait`` is False).
        MigrationError: The run stopped (run it again to resume).
    """
    return await _run(store, "encrypt", dry_run, wait, wait_timeout, progress, batch_size)


async def rekey(
    store: Store,
    *,
    dry_run: bool = False,
    wait: bool = False,
    wait_timeout: float | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int | None = None,
) -> StepReport:
    """Re-encrypt every value under the cipher's active key (fields in clear are encrypted).

    Run after making a new key active; once done, older keys can leave the ring. Arguments,
    return value and errors as for :func:`encrypt`.
    """
    return await _run(store, "rekey", dry_run, wait, wait_timeout, progress, batch_size)


async def decrypt(
    store: Store,
    *,
    dry_run: bool = False,
    wait: bool = False,
    wait_timeout: float | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int | None = None,
) -> StepReport:
    """Store every encrypted field in clear again (for leaving encryption).

    Writers with a cipher refuse fields in clear: stop them, run this, then restart them
    without the cipher. Arguments, return value and errors as for :func:`encrypt`.
    """
    return await _run(store, "decrypt", dry_run, wait, wait_timeout, progress, batch_size)


async def encryption_status(store: Store, *, batch_size: int = 500) -> dict[str, dict[str, int]]:
    """How the encrypted fields of the namespace are stored: per kind, values per key id.

    Counts every value of an encrypted field (each history entry counts once): under each key
    id, and ``clear``. Needs no key (envelopes name their key id in clear).

    Returns:
        ``{"session": {"k1": 30, "clear": 2}, "execution": {...}}``.
    """
    out: dict[str, dict[str, int]] = {}
    client = store.client
    for repo in (store.sessions, store.executions):
        codec = RecordCodec(None, store.namespace, repo.model)
        counts: dict[str, int] = {}
        cursor = 0
        with translate_errors("reading encryption status"):
            while True:
                cursor, keys = await client.scan(
                    cursor, match=repo.key_prefix + "*", count=batch_size, _type=JSON_TYPE
                )
                if keys:
                    values = await client.execute_command("JSON.MGET", *keys, ".")
                    for key, raw in zip(keys, values, strict=True):
                        if raw is None:
                            continue
                        try:
                            data = json.loads(raw)
                        except ValueError:
                            continue
                        if isinstance(data, dict):
                            for kid, n in codec.status(as_str(key), data).items():
                                counts[kid] = counts.get(kid, 0) + n
                if int(cursor) == 0:
                    break
        out[repo.model.KIND] = counts
    return out


async def _run(
    store: Store,
    mode: CryptoMode,
    dry_run: bool,
    wait: bool,
    wait_timeout: float | None,
    progress: ProgressCallback | None,
    batch_size: int | None,
) -> StepReport:
    cipher = store.settings.cipher
    if cipher is None:
        raise ConfigError(
            f"crypto {mode} needs the key ring: configure FLYWHEEL_ENCRYPTION_KEYS (or pass "
            "Store(..., cipher=FieldCipher(...)))"
        )
    runner = store.migrations
    revision = f"crypto-{mode}"
    step = StepReport(
        revision=revision, description=_DESCRIPTIONS[mode], direction="upgrade", dry_run=dry_run
    )
    client = store.client
    lock: MigrationLock | None = None
    if not dry_run:
        lock = MigrationLock(
            client,
            runner._key("lock"),
            purpose=f"crypto {mode}",
            ttl=runner.lock_ttl,
        )
        await lock.acquire(wait=wait, timeout=wait_timeout)
    t0 = time.perf_counter()
    try:
        if lock is not None:
            await _forget_finished_run(store, revision)
        ctx = MigrationContext(
            client=client,
            namespace=store.namespace,
            settings=store.settings,
            revision=revision,
            direction="upgrade",
            dry_run=dry_run,
            report=step,
            lock=lock,
            progress=progress,
            batch_size=batch_size or runner.batch_size,
        )
        for repo in (store.sessions, store.executions):
            codec = RecordCodec(cipher, store.namespace, repo.model)
            await ctx.ops.rewrite_keys(
                match=repo.key_prefix + "*",
                from_type=JSON_TYPE,
                to_type=JSON_TYPE,
                transform=_transform(ctx, codec, mode),
                label=f"{repo.model.KIND} documents: {mode}",
            )
            step.samples.clear()  # the "after" text of a sample may be decrypted content
        if not dry_run:
            await _finish(store, step, revision)
    except FlywheelStateError:
        raise
    except Exception as exc:
        raise MigrationError(
            f"crypto {mode} of namespace {store.namespace!r} stopped: {type(exc).__name__}: "
            f"{exc}. Its finished batches are kept; running it again resumes it."
        ) from exc
    finally:
        if lock is not None:
            await lock.release()
    step.duration_s = time.perf_counter() - t0
    return step


def _transform(ctx: MigrationContext, codec: RecordCodec, mode: CryptoMode) -> Any:
    def transform(key: str, raw: bytes) -> Rewrite | None:
        try:
            data = json.loads(raw)
        except ValueError:
            return Rewrite(None, (ctx.problem(key, "not valid JSON; left as it is"),))
        if not isinstance(data, dict):
            return None
        try:
            new = codec.reseal(key, data, mode)
        except (EncryptionKeyError, CorruptRecordError) as exc:
            return Rewrite(None, (ctx.problem(key, f"{exc}; left as it is"),))
        if new is None:
            return None
        return Rewrite(json.dumps(new, separators=(",", ":"), ensure_ascii=False))

    return transform


async def _forget_finished_run(store: Store, revision: str) -> None:
    """Delete the checkpoint of a run that finished every kind but was stopped before its
    cleanup: resuming it would skip everything, although the cipher may have changed since."""
    key = checkpoint_keys(store.namespace, revision, "upgrade", cluster=store.is_cluster)[0]
    with translate_errors("reading the checkpoint"):
        state = {as_str(k) for k in await store.client.hkeys(key)}
    if state and all(f"{n}:done" in state for n in range(1, 3)):
        with translate_errors("clearing the checkpoint"):
            await store.client.delete(
                *checkpoint_keys(store.namespace, revision, "upgrade", cluster=store.is_cluster)
            )


async def _finish(store: Store, step: StepReport, revision: str) -> None:
    """Collect the run's problems, then delete its checkpoint (the next run starts afresh)."""
    runner = store.migrations
    count, kept = await runner._gather_problems(revision, "upgrade", step)
    step.problem_count, step.problems = count, kept
    with translate_errors("clearing the checkpoint"):
        await store.client.delete(
            *checkpoint_keys(store.namespace, revision, "upgrade", cluster=store.is_cluster)
        )
