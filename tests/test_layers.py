"""The layering the README's "Who may import whom" states, checked on the source (no server).

Only imports that run count: those under ``if TYPE_CHECKING:`` are for annotations.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import flywheel_state

PACKAGE = Path(flywheel_state.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    """Absolute names of what ``path`` imports at run time (relative imports resolved)."""
    tree = ast.parse(path.read_text("utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


MODULES = {_module(p): _runtime_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _importers(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if module == prefix or module.startswith(prefix + ".")
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        # models: declarations only, no I/O and no upper layer.
        (
            "flywheel_state.models",
            (
                "redis",
                "flywheel_state.store",
                "flywheel_state.repositories",
                "flywheel_state.migrations",
                "flywheel_state.compat",
                "flywheel_state.cli",
            ),
        ),
        # repositories: below the Store, the compat API, the migrations and the CLI.
        (
            "flywheel_state.repositories",
            (
                "flywheel_state.store",
                "flywheel_state.migrations",
                "flywheel_state.compat",
                "flywheel_state.cli",
            ),
        ),
        # the generic query engine knows no kind: schemas are declared beside each repository.
        (
            "flywheel_state.repositories._filters",
            ("flywheel_state.models.session", "flywheel_state.models.execution"),
        ),
        (
            "flywheel_state.repositories._paging",
            ("flywheel_state.models.session", "flywheel_state.models.execution"),
        ),
        # migrations take what they need (client, namespace, settings): no Store, no front end.
        (
            "flywheel_state.migrations",
            ("flywheel_state.store", "flywheel_state.compat", "flywheel_state.cli"),
        ),
        # the CLI is a thin layer over the library: no Redis client of its own.
        ("flywheel_state.cli", ("redis", "flywheel_state._redis")),
        # the compat API sits on the Store like any user; nothing below imports it.
        ("flywheel_state.store", ("flywheel_state.compat", "flywheel_state.cli")),
    ],
)
def test_layer_imports(layer: str, forbidden: tuple[str, ...]) -> None:
    assert _importers(layer, forbidden) == []


def test_nothing_below_the_front_ends_imports_them() -> None:
    outside = [
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if not module.startswith(("flywheel_state.cli", "flywheel_state.compat"))
        and module != "flywheel_state"  # the package's lazy public surface re-exports compat
        for name in names
        if name.startswith(("flywheel_state.cli", "flywheel_state.compat"))
    ]
    assert outside == []
