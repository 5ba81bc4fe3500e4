"""RediSearch index definitions, versioned behind aliases.

Each kind of record has an alias ``{ns}:{kind}:idx`` pointing at a versioned index
``{ns}:{kind}:idx:v{N}``. Queries always go through the alias; a schema change builds the next
version beside the current one and swaps the alias once it is complete (see migrations).

An :class:`IndexSpec` is a frozen description of one version. Migration scripts keep their own
copies of the specs they create, so later model changes never alter an old migration.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from redis import exceptions as redis_exc

from flywheel_state._redis import Client, as_str, translate_errors
from flywheel_state.errors import MigrationError

__all__ = [
    "TAG_SEPARATOR",
    "IndexField",
    "IndexSpec",
    "alias_name",
    "alias_target",
    "create_index",
    "drop_index",
    "index_info",
    "index_name",
    "point_alias",
    "wait_until_indexed",
]

TAG_SEPARATOR = "\x1f"
"""TAG separator: a control character no stored value may hold, so ``|`` or ``,`` in a value
never splits it (models reject control characters in indexed strings)."""


@dataclass(frozen=True)
class IndexField:
    """One indexed attribute of a JSON document.

    ``sortable`` keeps a copy of the value in the index: needed to sort on a NUMERIC field, and
    it makes GROUPBY on a TAG field (``stats()``) read the index instead of the documents.
    """

    name: str
    type: Literal["TAG", "NUMERIC"]
    sortable: bool = False
    path: str | None = None

    def args(self) -> list[str]:
        out = [self.path or f"$.{self.name}", "AS", self.name, self.type]
        if self.type == "TAG":
            out += ["SEPARATOR", TAG_SEPARATOR, "CASESENSITIVE", "INDEXEMPTY", "INDEXMISSING"]
        else:
            out += ["INDEXMISSING"]
        if self.sortable:
            # UNF keeps TAG values as stored (case included) in the sortable copy, which
            # FT.AGGREGATE GROUPBY reads instead of loading each document.
            out += ["SORTABLE", "UNF"] if self.type == "TAG" else ["SORTABLE"]
        return out


@dataclass(frozen=True)
class IndexSpec:
    """One version of the index of one kind of record."""

    kind: str
    version: int
    fields: tuple[IndexField, ...]

    def field(self, name: str) -> IndexField:
        """The field called ``name``."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def create_args(self, namespace: str) -> list[str]:
        """Arguments of FT.CREATE for this spec in ``namespace``."""
        args = [
            index_name(namespace, self.kind, self.version),
            "ON",
            "JSON",
            "PREFIX",
            "1",
            f"{namespace}:{self.kind}:",
            "SCHEMA",
        ]
        for f in self.fields:
            args += f.args()
        return args


def index_name(namespace: str, kind: str, version: int) -> str:
    """The name of version ``version`` of the ``kind`` index: ``{ns}:{kind}:idx:v{N}``."""
    return f"{namespace}:{kind}:idx:v{version}"


def alias_name(namespace: str, kind: str) -> str:
    """The alias queries use: ``{ns}:{kind}:idx``."""
    return f"{namespace}:{kind}:idx"


async def index_info(client: Client, name: str) -> dict[str, Any] | None:
    """FT.INFO of ``name`` (an index or an alias) as a str-keyed dict, or None if absent."""
    with translate_errors(f"reading index {name}"):
        try:
            raw = await client.execute_command("FT.INFO", name)
        except redis_exc.ResponseError as exc:
            text = str(exc).lower()
            if "unknown index" in text or "no such index" in text or "not found" in text:
                return None
            raise
    items = list(raw)
    return {as_str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


async def alias_target(client: Client, namespace: str, kind: str) -> str | None:
    """The versioned index the alias points at, or None when there is no alias."""
    info = await index_info(client, alias_name(namespace, kind))
    return None if info is None else as_str(info["index_name"])


async def create_index(client: Client, namespace: str, spec: IndexSpec) -> str:
    """FT.CREATE the versioned index of ``spec`` unless it exists; returns its name."""
    name = index_name(namespace, spec.kind, spec.version)
    if await index_info(client, name) is not None:
        return name
    with translate_errors(f"creating index {name}"):
        await client.execute_command("FT.CREATE", *spec.create_args(namespace))
    return name


async def wait_until_indexed(client: Client, name: str, *, timeout: float = 600.0) -> int:
    """Wait until ``name`` has finished its background indexing; returns its num_docs.

    Raises:
        MigrationError: Indexing did not finish within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while True:
        info = await index_info(client, name)
        if info is None:
            raise MigrationError(f"index {name} vanished while being built")
        indexing = int(as_str(info.get("indexing", b"0")))
        pct = float(as_str(info.get("percent_indexed", b"1")))
        if not indexing and pct >= 1.0:
            return int(as_str(info.get("num_docs", b"0")))
        if loop.time() > deadline:
            raise MigrationError(f"index {name} still indexing after {timeout:.0f}s ({pct:.0%})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def point_alias(client: Client, namespace: str, kind: str, target: str) -> None:
    """Point the ``kind`` alias at ``target`` (FT.ALIASUPDATE creates or moves it atomically)."""
    with translate_errors(f"pointing alias {alias_name(namespace, kind)} at {target}"):
        await client.execute_command("FT.ALIASUPDATE", alias_name(namespace, kind), target)


async def drop_index(client: Client, name: str) -> bool:
    """FT.DROPINDEX ``name`` (documents are kept); False if it did not exist."""
    with translate_errors(f"dropping index {name}"):
        try:
            await client.execute_command("FT.DROPINDEX", name)
        except redis_exc.ResponseError as exc:
            if "unknown index" in str(exc).lower() or "no such index" in str(exc).lower():
                return False
            raise
    return True
