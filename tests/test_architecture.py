"""The layering: the core, the services on it, the applications on top.

- the core is ``nirwatch`` without ``nirwatch.apps``: it imports only itself;
- a service (``ingest``, ``inference``, ``training``, ``monitoring``) imports the core and
  itself, never another service (shared pieces, e.g. the metric sets, live in the core);
- ``nirwatch.apps`` (the command line and the demo) is the composition root: it may import
  anything, and nothing imports it.

These hold for every import: at module level, inside functions, and under ``TYPE_CHECKING``.
Module-level imports also form no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nirwatch", "ingest", "inference", "training", "monitoring")
SERVICES = PACKAGES[1:]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions or classes), ours only."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    out: set[str] = set()
    nodes: list[ast.stmt] = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If | ast.Try):  # e.g. `if TYPE_CHECKING:` is skipped below
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes.extend(node.body)
            nodes.extend(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                nodes.extend(handler.body)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = (package or module_name(path)).split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def all_imports(path: Path, name: str | None = None) -> set[str]:
    """Every module ``path`` (module ``name``) imports, wherever the statement is, ours only."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = name or module_name(path)
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            out.add(base)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def layer(module: str) -> str:
    """``core``, ``apps`` or the service's name."""
    if module == "nirwatch.apps" or module.startswith("nirwatch.apps."):
        return "apps"
    top = module.split(".")[0]
    return "core" if top == "nirwatch" else top


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def layer_violations() -> set[tuple[str, str]]:
    out = set()
    for mod, path in modules().items():
        here = layer(mod)
        for dep in all_imports(path):
            there = layer(dep)
            if there == here or here == "apps":
                continue
            if there == "core":  # everyone may use the core
                continue
            out.add((mod, dep))  # core -> service/apps, service -> other service/apps
    return out


def test_every_import_respects_the_layers() -> None:
    """Core imports only core; a service the core and itself; nothing imports the apps."""
    offenders = layer_violations()
    assert not offenders, sorted(offenders)


def test_the_layer_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    # Guards the check against a parser that sees only module-level statements.
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from monitoring.drift import PageHinkley\n")
    assert "monitoring.drift" in all_imports(src, "nirwatch.models.m")
    assert layer("nirwatch.apps.cli") == "apps" and layer("nirwatch.models.bundle") == "core"
    assert layer("training.fit") == "training"


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {
        name: {m for m in top_level_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_the_core_never_imports_a_service_at_module_level() -> None:
    offenders = {
        (mod, dep)
        for mod, deps in graph().items()
        if mod.split(".")[0] == "nirwatch"
        for dep in deps
        if dep.split(".")[0] in SERVICES
    }
    assert not offenders, sorted(offenders)


def test_module_level_imports_have_no_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep])  # path is the DFS stack
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_graph_sees_real_imports() -> None:
    # Guards the checks above against a parser that finds nothing.
    g = graph()
    assert "nirwatch.errors" in g["nirwatch.models.bundle"]
    assert "nirwatch.models.bundle_format" in g["nirwatch.models.bundle"]
    assert any(dep.startswith("nirwatch") for dep in g["inference.worker"])


#: Longest function (or method) accepted in the core and the services, ``def`` line to last
#: line: longer ones are split into named steps.
MAX_FUNCTION_LINES = 80


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function in ``path`` longer than ``limit`` lines."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}" if prefix else child.name
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                assert child.end_lineno is not None
                lines = child.end_lineno - child.lineno + 1
                if lines > limit:
                    out.append((name, lines))
            visit(child, name)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return out


def test_no_function_is_longer_than_80_lines() -> None:
    offenders = {
        f"{mod}.{name}": lines
        for mod, path in sorted(modules().items())
        for name, lines in long_functions(path)
    }
    assert not offenders, offenders


def test_the_length_check_sees_long_functions(tmp_path: Path) -> None:
    # Guards the check: 80 lines pass, 81 fail, methods and nested functions are seen.
    body = "    x = 1\n"
    src = tmp_path / "m.py"
    src.write_text(
        f"def ok():\n{body * 79}\n"
        f"def too_long():\n{body * 80}\n"
        f"class C:\n    def method(self):\n{('    ' + body) * 80}\n"
        f"def outer():\n    def inner():\n{('    ' + body) * 80}\n    return inner\n"
    )
    found = dict(long_functions(src))
    assert found == {"too_long": 81, "C.method": 81, "outer.inner": 81, "outer": 84}


def test_the_service_package_names_are_ours_alone() -> None:
    """README, Layout: the services install as top-level packages under generic names, which
    is safe only while no other installed distribution provides them and each import of them
    resolves to this repository."""
    import importlib.util
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    for name in PACKAGES:
        others = set(providers.get(name, [])) - {"nirwatch"}
        assert not others, f"{name} is also provided by {sorted(others)}"
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve().is_relative_to(ROOT), f"{name} from {spec.origin}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"^include = \[(.*)\]$", pyproject, re.MULTILINE)
    assert include is not None
    assert sorted(include.group(1).replace('"', "").replace("*", "").split(", ")) == sorted(
        PACKAGES
    )


TESTS = ROOT / "tests"


def local_test_imports(path: Path) -> set[str]:
    """Modules of tests/ that ``path`` imports (``x`` or ``tests.x``), wherever the statement."""
    local = {p.stem for p in TESTS.glob("*.py")}
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tests" and len(parts) > 1:
                parts = parts[1:]
            if parts[0] in local:
                out.add(parts[0])
    return out


def test_no_test_module_imports_another() -> None:
    """Helpers shared by tests live in support modules (support, worker_support, builders,
    bundle_support, promstack, metric_sets) and fixtures in conftest: no module of tests/
    imports a test module (or conftest), so a test's private helper never becomes another's."""
    offenders = {
        (path.name, dep)
        for path in TESTS.glob("*.py")
        for dep in local_test_imports(path)
        if dep.startswith("test_") or dep == "conftest"
    }
    assert not offenders, sorted(offenders)


def test_the_test_import_check_sees_every_spelling(tmp_path: Path) -> None:
    # Guards the check above against a parser that finds nothing.
    src = tmp_path / "test_x.py"
    src.write_text("import tests.test_cnn\n\ndef f():\n    from test_audit import publication\n")
    assert local_test_imports(src) == {"test_audit", "test_cnn"}
    assert "support" in local_test_imports(TESTS / "test_worker.py")
