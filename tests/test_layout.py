"""The package's walls: the serving wing imports no training code, and a Config needs no
TensorFlow. Checked in fresh processes (what a server or `--help` really loads) and in the source
(what any module imports at its top level)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "catdog"
GROUND = {"catdog.contract", "catdog.errors", "catdog.fields", "catdog.image_formats",
          "catdog.images", "catdog.atomic", "catdog.startup", "catdog.version",
          "catdog.terminal", "catdog.versions", "catdog.faults", "catdog.commands"}


def loaded_after(statement: str) -> set[str]:
    """The catdog modules, and whether tensorflow, a fresh process holds after `statement`."""
    code = (f"import sys; {statement}; import json; print(json.dumps(sorted(m for m in "
            "sys.modules if m.startswith('catdog') or m == 'tensorflow')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def catdog_imports(nodes) -> set[str]:
    """The catdog modules these statements import (themselves, not what they hold)."""
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("catdog")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("catdog"):
            found |= {f"{node.module}.{alias.name}" if node.module == "catdog" else node.module
                      for alias in node.names}
    return found


def top_level_imports(path: Path) -> set[str]:
    """The catdog modules a file imports outside any function."""
    return catdog_imports(ast.parse(path.read_text()).body)


def test_importing_the_serving_wing_loads_no_training_module():
    """The server (and the package, which it imports) and the client, in one fresh process:
    what both load is outside the ground only if what one of them loads is."""
    loaded = {m for m in loaded_after("import catdog.serving.server, catdog.serving.client")
              if m.startswith("catdog")}
    outside = {m for m in loaded if not m.startswith("catdog.serving")} - {"catdog"}
    assert outside <= GROUND, outside - GROUND


def test_no_serving_module_imports_training_code_at_its_top():
    for path in sorted((PACKAGE / "serving").glob("*.py")):
        for name in top_level_imports(path):
            assert name.startswith("catdog.serving") or name in GROUND, (path.name, name)


def test_the_savedmodel_writer_does_not_import_the_serving_wing():
    for name in ("signatures.py", "export.py"):
        assert not any(n.startswith("catdog.serving") for n in
                       top_level_imports(PACKAGE / name)), name


def test_building_a_config_loads_no_tensorflow():
    loaded = loaded_after("from catdog.config import Config; Config(data_dir='d')")
    assert "tensorflow" not in loaded


TOOLS = {"catdog.train", "catdog.evaluate", "catdog.predict", "catdog.batch", "catdog.publish",
         "catdog.data_cli", "catdog.serve", "catdog.client"}


def test_tools_import_libraries_never_each_other():
    """The gate decides with the evaluator and the report writer, not with the evaluate command;
    train runs the gate as a library (publish), which imports no other command."""
    for path in sorted(PACKAGE.glob("*.py")):
        module = f"catdog.{path.stem}"
        imported = top_level_imports(path) & TOOLS - {module}
        allowed = {"catdog.publish"} if module == "catdog.train" else set()
        assert imported <= allowed, (path.name, imported - allowed)


def test_the_evaluator_writes_nothing_and_versions_stand_on_the_ground():
    evaluation = top_level_imports(PACKAGE / "evaluation.py")
    assert not {"catdog.atomic", "catdog.report", "catdog.publish"} & evaluation
    assert top_level_imports(PACKAGE / "versions.py") <= GROUND
    assert "catdog.report" not in top_level_imports(PACKAGE / "figures.py")


def test_one_function_lists_version_folders():
    """Only versions.py scans a base path for integer-named folders; the exporter, the gate,
    rollback and the server's core call it."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "versions.py":
            continue
        source = path.read_text()
        assert not ("iterdir()" in source and ".isdigit()" in source), path.name
    assert "catdog.versions" in top_level_imports(PACKAGE / "serving" / "server_core.py")


def test_publish_keeps_only_the_gates_decision():
    assert len((PACKAGE / "publish.py").read_text().splitlines()) <= 250


def module_level_imports(path: Path) -> set[str]:
    """The catdog modules a file imports when it is loaded or run: at its top level and in
    module-level `if`/`try` blocks (an `if __name__ == "__main__":` tail included), not inside
    functions."""
    statements, pending = [], list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        statements.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                        *(n for handler in getattr(node, "handlers", []) for n in handler.body)]
    return catdog_imports(statements)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_in_the_package():
    """Each module is loaded once and in one order: no chain of module-level imports leads
    back to where it started (`python -m catdog.data` once ran data.py's body twice through
    one)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in module_level_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            assert state.get(imported) != "open", " → ".join([*chain, name, imported])
            if imported not in state:
                visit(imported, [*chain, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
