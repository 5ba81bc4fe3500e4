"""In-memory upgrades of stored documents written with an older ``schema_version``.

When a model's shape changes, its ``SCHEMA_VERSION`` is bumped and one function per step is
registered with :func:`register_upgrade` (public as ``flywheel_state.models.register_upgrade``),
turning the raw dict of a version-``n`` document into the raw dict of version ``n + 1``.
:class:`~flywheel_state.models.Document` applies the chain around validation (in
``model_validate`` / ``model_validate_json`` and its constructor, not in a ``mode="before"``
validator, which would cost every read of a current document; see ``models/_base.py``), so
documents of older shapes stay readable while a data migration rewrites them
(``ctx.ops.upgrade_documents(Model)`` in a migration script). A document already at the current
version costs one comparison.

Example (next to the model, when ``Session.SCHEMA_VERSION`` becomes 2)::

    from flywheel_state.models import register_upgrade

    @register_upgrade("session", 1)
    def _session_1_to_2(doc: dict[str, Any]) -> dict[str, Any]:
        doc["labels"] = doc.pop("tags", [])
        return doc

The function receives a shallow copy (replace nested values rather than mutate them) and
returns the new dict; the registry sets ``schema_version`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["UpgradeFn", "register_upgrade", "upgrade_document"]

UpgradeFn = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the raw dict of a version-``n`` document into the raw dict of version ``n + 1``."""

_REGISTRY: dict[tuple[str, int], UpgradeFn] = {}


def register_upgrade(kind: str, from_version: int) -> Callable[[UpgradeFn], UpgradeFn]:
    """Register the upgrade of ``kind`` documents from ``from_version`` to ``from_version + 1``.

    Args:
        kind: The model's ``KIND`` (``"session"``, ``"execution"``).
        from_version: The schema version the function reads.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: An upgrade of this kind from this version is registered already.
    """

    def decorator(fn: UpgradeFn) -> UpgradeFn:
        if (kind, from_version) in _REGISTRY and _REGISTRY[(kind, from_version)] is not fn:
            raise ValueError(f"an upgrade of {kind} documents from v{from_version} exists already")
        _REGISTRY[(kind, from_version)] = fn
        return fn

    return decorator


def upgrade_document(kind: str, data: dict[str, Any], target: int) -> dict[str, Any]:
    """Bring the raw dict of a ``kind`` document up to schema version ``target``.

    Args:
        kind: The model's ``KIND``.
        data: The stored document as a dict (not modified).
        target: The model's current ``SCHEMA_VERSION``.

    Returns:
        A new dict at version ``target`` (``data`` itself when it is there already).

    Raises:
        ValueError: The document is newer than ``target`` (written by newer code), its version
            is not an integer, or a step of the chain is not registered. Inside model
            validation this becomes a ``ValidationError`` (and a ``CorruptRecordError`` in
            repositories), naming the problem.
    """
    version = data.get("schema_version", target)
    if version == target:
        return data
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"schema_version must be an integer, got {version!r}")
    if version > target:
        raise ValueError(
            f"this {kind} document has schema_version {version}, newer than this code reads "
            f"({target}): upgrade flywheel-state"
        )
    doc = dict(data)
    while version < target:
        fn = _REGISTRY.get((kind, version))
        if fn is None:
            raise ValueError(
                f"no upgrade registered for {kind} documents from schema_version {version} "
                f"to {version + 1}"
            )
        doc = fn(doc)
        version += 1
        doc["schema_version"] = version
    return doc
