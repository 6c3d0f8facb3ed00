"""The package's layers, checked by walking every import (inside functions too, TYPE_CHECKING included).

Layers, highest first: plugin and cli -> stack -> dumps -> postgres -> config -> core -> errors (and _version).
A module may import its own layer and the ones below, never one above; the import graph has no cycle; only
plugin/ imports pytest. See docs/architecture.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_dbsnap"
# errors, _version and the Django settings shim are leaves: they import nothing of the package (the shim runs
# inside the app's own processes, so it imports only the standard library and the project's settings).
RANK = {
    "errors": 0,
    "_version": 0,
    "django_settings": 0,
    "core": 1,
    "config": 2,
    "postgres": 3,
    "dumps": 4,
    "stack": 5,
    "plugin": 6,
    "cli": 6,
}
HEAVY = ("psycopg", "httpx", "playwright", "boto3", "mirakuru", "filelock", "pytest_html", "yaml")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file names in an import statement, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pytest_dbsnap.core import reaper` imports the module pytest_dbsnap.core.reaper.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {
    name: {imported for imported in _imports(path) if imported in MODULES and imported != name}
    for name, path in MODULES.items()
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package's own __init__, which only re-exports


def test_every_module_is_in_a_layer() -> None:
    unplaced = [name for name in MODULES if _layer(name) not in (*RANK, None)]
    assert not unplaced, f"modules outside the layer folders: {unplaced}"


def test_imports_point_down_only() -> None:
    upward = []
    for name, imported in GRAPH.items():
        layer = _layer(name)
        if layer is None:
            continue
        for target in imported:
            target_layer = _layer(target)
            if target_layer is None:
                upward.append(f"{name} imports the package root (import what you need from its module)")
            elif RANK[target_layer] > RANK[layer] or (layer != target_layer and RANK[target_layer] == RANK[layer]):
                upward.append(f"{name} ({layer}) imports {target} ({target_layer})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    # A package's __init__ that re-exports its own modules is not a cycle of behaviour.
    real = [c for c in cycles if not any(m == c[0].rsplit(".", 1)[0] for m in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_only_the_plugin_imports_pytest() -> None:
    offenders = [
        name
        for name, path in MODULES.items()
        if _layer(name) != "plugin"
        and any(m == "pytest" or m.startswith(("pytest.", "_pytest")) for m in _imports(path))
    ]
    assert not offenders, f"pytest imported outside plugin/: {offenders}"


def test_the_layers_below_the_stack_never_take_the_whole_settings() -> None:
    """Lower layers take plain values or small Protocols; Settings is unpacked in stack/, plugin/ and cli/."""
    offenders = [
        name
        for name, imported in GRAPH.items()
        if _layer(name) in ("core", "postgres", "dumps")
        and imported & {"pytest_dbsnap.config.settings", "pytest_dbsnap.config.loading"}
    ]
    assert not offenders, f"modules below the stack that import Settings: {offenders}"


def test_core_imports_only_the_standard_library() -> None:
    offenders = {
        name: sorted(m for m in _imports(path) if m.split(".")[0] in HEAVY)
        for name, path in MODULES.items()
        if _layer(name) in ("core", "config", "errors")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_600_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 600, f"{MODULES[name]} has {lines} lines"


def test_the_entry_point_loads_nothing_heavy() -> None:
    """Registering the plugin's options costs no psycopg, httpx, Playwright, boto3 or session machinery
    (stack.servers, stack.services, stack.session, dumps, postgres)."""
    probe = (
        "import sys, pytest_dbsnap.plugin, pytest_dbsnap.cli\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        "or m.startswith(('pytest_dbsnap.stack.s', 'pytest_dbsnap.dumps', 'pytest_dbsnap.postgres'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"loaded at import: {result.stdout}"


def test_every_public_name_still_resolves() -> None:
    """The package root re-exports lazily; each name in __all__ must load from the module it points at."""
    import pytest_dbsnap

    missing = [name for name in pytest_dbsnap.__all__ if getattr(pytest_dbsnap, name, None) is None]
    assert not missing, f"pytest_dbsnap.__all__ names that do not resolve: {missing}"
