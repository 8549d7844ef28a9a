"""Which package may import which: evaluation reads a checkpoint and audio, never the training loop;
training never reaches evaluation or the demo that orchestrates both; the model sits below all three.

Every `import` statement of spear_fast counts, also those inside functions (a lazy import is still a
dependency), and so does the chain: a package may not reach a forbidden one through a third.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import spear_fast

ROOT = Path(spear_fast.__file__).parent
PACKAGE = "spear_fast"

# package -> packages it must never reach, directly or through other modules
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "spear_fast.eval": ("spear_fast.train", "spear_fast.demo"),
    "spear_fast.train": ("spear_fast.eval", "spear_fast.demo"),
    "spear_fast.model": ("spear_fast.train", "spear_fast.eval", "spear_fast.demo", "spear_fast.pipeline"),
}


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package (a package is its __init__.py)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that `name` imports anywhere in its file, with the parent packages
    whose __init__ each import runs."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                prefix = ".".join(parts[:end])
                if prefix in known:
                    found.add(prefix)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root, package)
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """Every module reachable from `start`, each mapped to the module it was reached from."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for nxt in graph.get(current, ()):
            if nxt not in parent:
                parent[nxt] = current
                queue.append(nxt)
    return parent


def chain(parent: dict[str, str | None], end: str) -> str:
    path = [end]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return " -> ".join(reversed(path))


def violations(graph: dict[str, set[str]], rules: dict[str, tuple[str, ...]]) -> list[str]:
    problems = []
    for source, banned in rules.items():
        for name in sorted(graph):
            if name != source and not name.startswith(source + "."):
                continue
            parent = reachable(graph, name)
            for target in sorted(parent):
                if any(target == b or target.startswith(b + ".") for b in banned):
                    problems.append(chain(parent, target))
    return problems


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # spear_fast/cli.py imports its sub-command modules by name inside a function; pipeline/collect.py
    # uses relative imports: both must be edges, or the rules below would pass vacuously
    assert "spear_fast.pipeline.clips" in graph["spear_fast.pipeline.collect"]
    assert "spear_fast.train.loop" in reachable(graph, "spear_fast.train.main")
    assert "spear_fast.eval.demo_report" in reachable(graph, "spear_fast.demo.run")


@pytest.mark.parametrize("source", sorted(FORBIDDEN))
def test_package_import_rules(source):
    problems = violations(import_graph(), {source: FORBIDDEN[source]})
    assert not problems, "forbidden import chains:\n" + "\n".join(problems)


def test_a_forbidden_chain_is_found(tmp_path):
    """The checker itself: a lazy import two modules away is reported with its chain."""
    root = tmp_path / "pkg"
    for package in ("eval", "train", "util"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "eval" / "probe.py").write_text("from ..util import helper\n")
    (root / "util" / "helper.py").write_text("def f():\n    from pkg.train.loop import Trainer\n")
    (root / "train" / "loop.py").write_text("class Trainer: ...\n")
    graph = import_graph(root, "pkg")
    assert violations(graph, {"pkg.eval": ("pkg.train",)}) == [
        "pkg.eval.probe -> pkg.util.helper -> pkg.train", "pkg.eval.probe -> pkg.util.helper -> pkg.train.loop"]
    assert violations(graph, {"pkg.train": ("pkg.eval",)}) == []
