"""The tree holds no unsafe deserialisation: no pickle, no unguarded torch.load, np.load, yaml.load.

The scanner reads every Python file with :mod:`ast` (not grep: strings and comments do not
count, aliases such as ``import torch as T`` do) and is itself tested on planted violations.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("nirwatch", "ingest", "inference", "training", "monitoring", "tests", "benchmarks")

#: Modules whose import alone means arbitrary code on load.
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}
#: Calls refused whatever their arguments.
FORBIDDEN_CALLS = {
    "joblib.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "pandas.read_pickle",
    "numpy.lib.format.read_array",
    "torch.jit.load",
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _const_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}  # local name -> qualified name
        self.found: list[Violation] = []

    def _flag(self, node: ast.AST, what: str) -> None:
        self.found.append(Violation(self.path, getattr(node, "lineno", 0), what))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name.split(".")[0] in FORBIDDEN_MODULES:
                self._flag(node, f"import {a.name}")
            self.aliases[a.asname or a.name.split(".")[0]] = (
                a.name if a.asname else a.name.split(".")[0]
            )
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if mod.split(".")[0] in FORBIDDEN_MODULES:
            self._flag(node, f"from {mod} import ...")
        for a in node.names:
            if a.name in FORBIDDEN_MODULES:
                self._flag(node, f"from {mod} import {a.name}")
            self.aliases[a.asname or a.name] = f"{mod}.{a.name}" if mod else a.name
        self.generic_visit(node)

    def _qualname(self, func: ast.expr) -> str | None:
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        parts.append(self.aliases.get(func.id, func.id))
        return ".".join(reversed(parts))

    def visit_Call(self, node: ast.Call) -> None:
        name = self._qualname(node.func)
        if name is not None:
            self._check_call(node, name)
        self.generic_visit(node)

    def _check_call(self, node: ast.Call, name: str) -> None:
        if name in FORBIDDEN_CALLS:
            self._flag(node, f"{name}()")
        elif name == "torch.load" and not _const_true(_kw(node, "weights_only")):
            self._flag(node, "torch.load() without weights_only=True")
        elif name == "numpy.load" and _kw(node, "allow_pickle") is not None:
            if not (isinstance(v := _kw(node, "allow_pickle"), ast.Constant) and v.value is False):
                self._flag(node, "numpy.load(allow_pickle=...) not literally False")
        elif name == "yaml.load":
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            loader_name = None
            if isinstance(loader, ast.Attribute):
                loader_name = loader.attr
            elif isinstance(loader, ast.Name):
                loader_name = self.aliases.get(loader.id, loader.id).split(".")[-1]
            if loader_name not in SAFE_YAML_LOADERS:
                self._flag(node, "yaml.load() without SafeLoader")
        elif name.split(".")[0] in FORBIDDEN_MODULES:
            self._flag(node, f"{name}()")


def scan_source(source: str, path: str = "<snippet>") -> list[Violation]:
    """Violations in one module's source."""
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.found


def python_files() -> list[Path]:
    files: list[Path] = []
    for top in SCANNED:
        d = ROOT / top
        if d.is_dir():
            files += sorted(p for p in d.rglob("*.py") if ".venv" not in p.parts)
    return files


def test_tree_has_no_unsafe_deserialisation() -> None:
    files = python_files()
    assert len(files) >= 10, f"scanner found only {len(files)} Python files under {ROOT}"
    found: list[Violation] = []
    for path in files:
        found += scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "unsafe deserialisation:\n" + "\n".join(map(str, found))


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import cPickle as p",
        "import dill",
        "from pickle import loads",
        "import _pickle",
        "from cloudpickle import load",
        "import joblib\njoblib.load('m.joblib')",
        "from joblib import load\nload('m')",
        "import torch\ntorch.load('w.pt')",
        "import torch as T\nT.load('w.pt', weights_only=False)",
        "from torch import load\nload(f)",
        "import torch\nopts = {}\ntorch.load(f, **opts)",
        "import numpy as np\nnp.load('a.npz', allow_pickle=True)",
        "import numpy\nnumpy.load('a.npy', allow_pickle=flag)",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import yaml\nyaml.load(text, yaml.FullLoader)",
        "import pandas as pd\npd.read_pickle('x')",
        "def f():\n    import torch\n    return torch.load(p)",
    ],
)
def test_scanner_catches_planted_violation(snippet: str) -> None:
    assert scan_source(snippet), f"scanner missed: {snippet!r}"


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('w.pt', weights_only=True, map_location='cpu')",
        "import numpy as np\nnp.load('a.npz')",
        "import numpy as np\nnp.load('a.npz', allow_pickle=False)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "import yaml\nfrom yaml import CSafeLoader\nyaml.load(text, Loader=CSafeLoader)",
        "import yaml\nyaml.safe_load(text)",
        "import json\njson.load(fh)",
        "from safetensors.torch import load_file\nload_file('w.safetensors')",
        "s = 'import pickle; torch.load(x)'  # a string is not code",
    ],
)
def test_scanner_accepts_safe_code(snippet: str) -> None:
    assert scan_source(snippet) == []
