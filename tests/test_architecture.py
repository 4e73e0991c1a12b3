"""The layering the brief sets: services depend on ``nirwatch``, never the other way round
(except imports inside functions, e.g. in the CLI), and module-level imports form no cycle."""

from __future__ import annotations

import ast
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
    assert "nirwatch.errors" in g["nirwatch.bundle"]
    assert "nirwatch.bundle_format" in g["nirwatch.bundle"]
    assert any(dep.startswith("nirwatch") for dep in g["inference.worker"])
