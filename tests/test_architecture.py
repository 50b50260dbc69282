"""The engine is Qt-free: nothing under engine/ imports PySide6 or the app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
FORBIDDEN = ("PySide6", "app", "shiboken6")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_engine_module_imports_qt_or_app() -> None:
    offenders = {
        str(path.relative_to(ENGINE.parent)): sorted(_imported_modules(path) & set(FORBIDDEN))
        for path in ENGINE.rglob("*.py")
    }
    offenders = {name: found for name, found in offenders.items() if found}
    assert offenders == {}


def test_using_the_engine_loads_no_qt() -> None:
    code = (
        "import sys, tempfile, pathlib\n"
        "from engine.selftest import run\n"
        "import io\n"
        "assert run(io.StringIO()) == 0\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'app')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _engine_imports(path: Path) -> set[str]:
    """The engine modules ``path`` imports anywhere, function bodies included."""
    modules = {f"engine.{p.stem}" for p in ENGINE.glob("*.py")}
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names & modules


def test_engine_modules_import_each_other_without_cycles() -> None:
    """A cycle (session and tuner had one) means a module cannot be understood alone."""
    graph = {f"engine.{p.stem}": _engine_imports(p) for p in ENGINE.glob("*.py")}
    for name in graph:
        graph[name].discard(name)  # engine.host's __main__ imports its own module copy

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return seen

    cycles = sorted(name for name in graph if name in reachable(name))
    assert cycles == []


# The engine's layers, lowest first: a module imports from its own layer or those below.
LAYERS = (
    {"__init__", "errors", "paths", "units", "throttle", "child", "engine_log"},
    {
        "context_memory",
        "chat_format",
        "placement",
        "gguf_file",
        "store",
        "export",
        "library",
        "catalog",
        "synthetic",
    },
    {
        "native",
        "devices",
        "heat",
        "hardware",
        "downloads",
        "reorder",
        "session",
        "dryrun",
        "rpc",
        "computers",
    },
    {"planner", "tuner"},
    {"host", "server", "selftest"},
)


def test_engine_modules_import_only_from_their_layer_or_below() -> None:
    """Formats never reach into the runtime, the runtime never into planning or services:
    a new upward import fails here, before it becomes a cycle."""
    level = {f"engine.{name}": i for i, layer in enumerate(LAYERS) for name in layer}
    modules = {f"engine.{p.stem}" for p in ENGINE.glob("*.py")}
    assert modules == set(level), f"place these in a layer: {sorted(modules ^ set(level))}"
    upward = sorted(
        f"{module} (layer {level[module]}) imports {used} (layer {level[used]})"
        for module in modules
        for used in _engine_imports(ENGINE / f"{module.split('.')[1]}.py")
        if used in level and level[used] > level[module]
    )
    assert upward == []
