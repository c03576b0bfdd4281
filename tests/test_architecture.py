"""The layering the README promises: config imports no method, packages form no cycle.

The import graph is read from the source (every ``import visprompt...`` and
``from visprompt... import`` statement, at any depth of a module, so late
imports inside functions count too), by package: ``visprompt.<package>``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import visprompt

SRC = Path(visprompt.__file__).parent


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        module = "visprompt." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        source = package_of(module.removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("visprompt.") and package_of(name) != source:
                    graph[source].add(package_of(name))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's node list, found by depth-first search from each node."""
    found = []

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                found.append(path)
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest node
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_packages():
    graph = import_graph()
    assert "visprompt.methods" in graph  # the graph is real, not empty
    assert cycles(graph) == []


def test_config_imports_no_method_module():
    code = (
        "import sys, visprompt.config; "
        "print(sorted(m for m in sys.modules if m.startswith('visprompt.methods')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "visprompt.methods" not in import_graph()["visprompt.config"]
