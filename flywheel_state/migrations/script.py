"""Migration scripts on disk: loading ``versions/NNNN_slug.py`` and writing new ones.

A script is a small module with module-level ``revision``, ``down_revision`` (None for the
first), ``description`` (one line), and ``async def upgrade(ctx)`` / ``async def downgrade(ctx)``.
The scripts of a directory form one linear chain from the base to the head.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import string
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from flywheel_state.errors import MigrationError

if TYPE_CHECKING:
    from flywheel_state.migrations.context import MigrationContext

__all__ = ["APP_CHAIN", "BASE", "HEAD", "Script", "ScriptDirectory", "default_scripts"]

BASE = "base"
"""Target name of "no revision applied"."""
HEAD = "head"
"""Target name of the newest revision."""

_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.py$")
_CHAIN_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
APP_CHAIN = "app"
"""The chain name of an application's own migrations directory (bookkeeping of its own)."""
_VERSIONS_PACKAGE = "flywheel_state.migrations.versions"

StepFn = Callable[["MigrationContext"], Awaitable[None]]


@dataclass(frozen=True)
class Script:
    """One migration script."""

    revision: str
    """Its revision id (``"0002"``)."""
    down_revision: str | None
    """The revision it follows, or None for the first."""
    description: str
    """One line saying what it does."""
    path: Path
    """The file it was loaded from."""
    upgrade: StepFn
    """``async def upgrade(ctx)``."""
    downgrade: StepFn
    """``async def downgrade(ctx)``."""
    module: ModuleType
    """The loaded module."""

    @property
    def name(self) -> str:
        """The file's stem, ``NNNN_slug``."""
        return self.path.stem

    def __repr__(self) -> str:
        return f"Script({self.name!r}, down_revision={self.down_revision!r})"


def _literal(value: str | None) -> str:
    """A Python literal in the style ruff formats to (double quotes)."""
    return "None" if value is None else json.dumps(value, ensure_ascii=False)


def _slug(message: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")
    return slug[:40].rstrip("_") or "migration"


class ScriptDirectory:
    """The migration scripts of one directory, in order from the base to the head.

    Args:
        path: The directory holding ``NNNN_slug.py`` files.
        package: The dotted package of that directory when it is importable (the built-in
            scripts); otherwise the files are loaded by path under private module names.
        chain: None for flywheel-state's own scripts; a name (``"app"``) for an application's
            directory, whose chain is applied after the library's and recorded apart from it
            (``{ns}:_migrations:app:*``), so a later release's scripts never collide with it.

    Raises:
        MigrationError: (when the scripts are first used) a file lacks a required name, two
            scripts share a revision, or the chain is broken or branched.
    """

    def __init__(
        self, path: str | Path, *, package: str | None = None, chain: str | None = None
    ) -> None:
        if chain is not None and not _CHAIN_RE.match(chain):
            raise MigrationError(f"a migration chain name is lowercase letters/digits: {chain!r}")
        self.path = Path(path)
        self.package = package
        self.chain = chain
        self._scripts: list[Script] | None = None

    def __repr__(self) -> str:
        return f"ScriptDirectory({str(self.path)!r})"

    # ------------------------------------------------------------------ loading

    def _import(self, file: Path) -> ModuleType:
        if self.package is not None:
            return importlib.import_module(f"{self.package}.{file.stem}")
        digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
        name = f"_flywheel_migration_{digest}_{file.stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise MigrationError(f"cannot load migration script {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    def _load(self, file: Path) -> Script:
        try:
            module = self._import(file)
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(f"migration script {file} failed to import: {exc}") from exc

        def need(name: str, kinds: tuple[type, ...]) -> Any:
            value = getattr(module, name, None)
            if not isinstance(value, kinds):
                raise MigrationError(
                    f"migration script {file.name} must define {name} "
                    f"({' or '.join(k.__name__ for k in kinds)}), got {value!r}"
                )
            return value

        revision = need("revision", (str,))
        down = getattr(module, "down_revision", None)
        if down is not None and not isinstance(down, str):
            raise MigrationError(
                f"migration script {file.name}: down_revision must be a str or None"
            )
        description = need("description", (str,))
        if "\n" in description.strip():
            raise MigrationError(f"migration script {file.name}: description must be one line")
        steps = {}
        for name in ("upgrade", "downgrade"):
            fn = getattr(module, name, None)
            if not inspect.iscoroutinefunction(fn):
                raise MigrationError(
                    f"migration script {file.name} must define `async def {name}(ctx)`"
                )
            steps[name] = fn
        if not file.stem.startswith(revision):
            raise MigrationError(
                f"migration script {file.name}: revision {revision!r} must match its file name"
            )
        return Script(
            revision=revision,
            down_revision=down,
            description=description.strip(),
            path=file,
            upgrade=steps["upgrade"],
            downgrade=steps["downgrade"],
            module=module,
        )

    @property
    def scripts(self) -> list[Script]:
        """Every script, ordered from the first to the head.

        Raises:
            MigrationError: The scripts don't form one linear chain.
        """
        if self._scripts is None:
            if not self.path.is_dir():
                raise MigrationError(f"migration script directory {self.path} does not exist")
            self._scripts = self._order(
                [self._load(f) for f in sorted(self.path.iterdir()) if _FILE_RE.match(f.name)]
            )
        return list(self._scripts)

    def _order(self, loaded: list[Script]) -> list[Script]:
        by_rev: dict[str, Script] = {}
        by_down: dict[str | None, Script] = {}
        for script in loaded:
            if script.revision in by_rev:
                raise MigrationError(
                    f"revision {script.revision} is defined twice: "
                    f"{by_rev[script.revision].path.name} and {script.path.name}"
                )
            by_rev[script.revision] = script
            if script.down_revision in by_down:
                other = by_down[script.down_revision]
                raise MigrationError(
                    f"{other.path.name} and {script.path.name} both follow "
                    f"{script.down_revision or 'the base'}: the history must be linear"
                )
            by_down[script.down_revision] = script
        for script in loaded:
            if script.down_revision is not None and script.down_revision not in by_rev:
                raise MigrationError(
                    f"{script.path.name} follows revision {script.down_revision}, which no "
                    "script defines"
                )
        ordered: list[Script] = []
        current = by_down.get(None)
        while current is not None:
            ordered.append(current)
            current = by_down.get(current.revision)
        if len(ordered) != len(loaded):
            raise MigrationError(f"the migration scripts in {self.path} do not form one chain")
        return ordered

    # ------------------------------------------------------------------ lookups

    @property
    def head(self) -> str | None:
        """The newest revision, or None when there are no scripts."""
        scripts = self.scripts
        return scripts[-1].revision if scripts else None

    def get(self, revision: str) -> Script:
        """The script of ``revision`` (its id, or its file stem ``NNNN_slug``).

        Raises:
            MigrationError: No script has that revision.
        """
        for script in self.scripts:
            if revision in (script.revision, script.name):
                return script
        known = ", ".join(s.revision for s in self.scripts) or "none"
        raise MigrationError(f"unknown revision {revision!r} (known: {known})")

    def index(self, revision: str | None) -> int:
        """Position of ``revision`` in the chain: -1 for the base (None or ``"base"``)."""
        if revision is None or revision == BASE:
            return -1
        if revision == HEAD:
            return len(self.scripts) - 1
        target = self.get(revision)
        return self.scripts.index(target)

    def knows(self, revision: str) -> bool:
        """True when ``revision`` is one of these scripts' revisions."""
        return any(s.revision == revision for s in self.scripts)

    # ------------------------------------------------------------------ writing

    def new(self, message: str, *, now: datetime | None = None) -> Path:
        """Write a new script that follows the head, from the package's template.

        Args:
            message: One line saying what the migration does (also gives the file's slug).
            now: Creation time shown in the file (default: now).

        Returns:
            The path of the new file.

        Raises:
            MigrationError: The message is empty or spans lines, or the file exists.
        """
        text = message.strip()
        if not text or "\n" in text or "\r" in text:
            raise MigrationError("a migration message must be one non-empty line")
        self.path.mkdir(parents=True, exist_ok=True)
        scripts = self.scripts
        number = max((int(s.revision) for s in scripts if s.revision.isdigit()), default=0) + 1
        revision = f"{number:04d}"
        down = scripts[-1].revision if scripts else None
        template = string.Template(
            files("flywheel_state.migrations").joinpath("script.py.tmpl").read_text("utf-8")
        )
        source = template.substitute(
            revision=revision,
            revision_literal=_literal(revision),
            down_revision_literal=_literal(down),
            down_revision_text=down or "the base",
            description=text.replace('"""', "'''"),
            description_literal=_literal(text),
            created=(now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        )
        path = self.path / f"{revision}_{_slug(text)}.py"
        if path.exists():
            raise MigrationError(f"{path} exists already")
        path.write_text(source, encoding="utf-8")
        self._scripts = None
        return path


@functools.lru_cache(maxsize=1)
def default_scripts() -> ScriptDirectory:
    """The scripts shipped with flywheel-state (``flywheel_state/migrations/versions``)."""
    module = importlib.import_module(_VERSIONS_PACKAGE)
    return ScriptDirectory(Path(next(iter(module.__path__))), package=_VERSIONS_PACKAGE)
