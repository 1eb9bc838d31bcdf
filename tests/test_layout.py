"""The package's layout as a rule: two wings over a torch-free contract, no circle, no upward import."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPOSITORY

PACKAGE = REPOSITORY / "phases"
FRONT_DOORS = {"phases.run", "phases.sweep", "phases.figures", "phases.fetch", "phases.status", "phases.multirun",
               "phases.points"}
# Subpackage -> the subpackages its modules may import (besides itself).
ALLOWED = {
    "config": set(),
    "store": {"config"},
    "training": {"config", "store"},
    "analysis": {"store"},
    "bench": {"config", "training"},
}
LINE_LIMIT = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The `phases.*` modules a file imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("phases"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("phases")}
    return found


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_each_wing_imports_only_what_lies_below_it():
    for name, path in modules().items():
        parts = name.split(".")
        if len(parts) == 1 or name in FRONT_DOORS:
            continue
        wing = parts[1]
        assert wing in ALLOWED, f"{name} is neither a front door ({sorted(FRONT_DOORS)}) nor inside a wing"
        for imported in imports_of(path):
            imported_parts = imported.split(".")
            if len(imported_parts) < 2 or imported == "phases.__version__":
                continue
            target = imported_parts[1]
            assert target == wing or target in ALLOWED[wing], f"{name} imports {imported}: {wing} may import " \
                f"{sorted(ALLOWED[wing]) or 'nothing'} besides itself"


def test_no_import_circle():
    known = modules()
    graph = {name: {imported for imported in imports_of(path) if imported in known and imported != name}
             for name, path in known.items()}
    visiting, done = set(), set()

    def visit(name: str, trail: list[str]) -> None:
        assert name not in visiting, f"import circle: {' -> '.join([*trail, name])}"
        if name in done:
            return
        visiting.add(name)
        for imported in graph[name]:
            # A package imports its own modules through __init__ facades; that is not a circle back up.
            if not imported.startswith(f"{name}."):
                visit(imported, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in graph:
        visit(name, [])


def test_no_module_over_the_line_limit():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()
            if len(path.read_text().splitlines()) > LINE_LIMIT}
    assert not long, f"modules over {LINE_LIMIT} lines: {long}"


def test_the_analysis_wing_and_the_store_load_neither_torch_nor_hydra():
    script = ("import sys, phases.analysis.runs, phases.analysis.plots, phases.analysis.report, "
              "phases.analysis.tables, phases.figures, phases.store.identity, phases.store.record, "
              "phases.store.metrics, phases.config.validation, phases.config.options; "
              "print(sorted(name for name in ('torch', 'hydra') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_package_carries_the_top_level_configs():
    """phases/conf is a link to conf/, so the wheel ships the configs (pyproject's package-data) while
    conf/ stays where the layout puts it; a copy instead of the link would drift from it."""
    assert (PACKAGE / "conf").is_symlink() and (PACKAGE / "conf").resolve() == REPOSITORY / "conf"
